"""Slides: open a whole slide, analyse it in the background with a model, and explore the class map down to a
single tile at full resolution (with its Grad-CAM and most similar training tiles)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from histo_core import launch, liveness, task_folders
from histo_core.errors import HistoError
from histo_core.explain import compute_cams
from histo_core.launch import start_once
from histo_core.slides import analysis as sa
from histo_core.slides import open_slide, outputs
from histo_core.slides import view as slide_view
from histo_core.slides.tissue import DEFAULT_TISSUE_THRESHOLD
from pages.ui.classify import cam_options, pick_model, probability_figure, show_cam, target_select
from pages.ui.common import WRAP, page_setup, plain, show_table, signed_in_user, user_errors
from pages.ui.feature_map import similar_tiles
from pages.ui.live import live, task_active, task_progress
from pages.ui.slides import clicked_tile, legend_table, metadata_rows, overview_figure, pick_slide


@dataclass(frozen=True)
class Analysed:
    """The slide on the page, the model it is analysed with, and the analysis' folder and request."""

    slide: Any
    info: dict
    thumb: np.ndarray
    entry: Any
    loaded: Any
    folder: Any  # histo_core.slides.analysis' folder of this slide and model
    params: dict

    @property
    def meta(self) -> Any:
        return self.loaded.meta


def open_chosen_slide() -> tuple[Any, Any, dict, np.ndarray, float | None] | None:
    """(path, slide, info, thumbnail, µm/px given) of the picked slide, its metadata and thumbnail shown; None when
    none is picked or it cannot open."""
    path = pick_slide()
    if path is None:
        return None
    mpp_given = st.number_input(
        "µm per pixel (0: from the slide's metadata)",
        min_value=0.0,
        max_value=20.0,
        value=0.0,
        step=0.05,
        format="%.3f",
        key="slides_mpp",
        help="Needed only when the slide records none: about 0.25 at 40x, 0.5 at 20x.",
    )
    try:
        slide = open_slide(path, mpp=mpp_given or None)
    except HistoError as exc:
        st.error(plain(str(exc)))
        return None
    info = slide.info()
    left, right = st.columns([1, 2])
    thumb = slide.thumbnail()
    left.image(thumb, caption=info["name"], width="stretch")
    with right:
        show_table(metadata_rows(info))
    return path, slide, info, thumb, mpp_given or None


def choose_analysis(path: Any, slide: Any, info: dict, thumb: np.ndarray, mpp: float | None) -> Analysed | None:
    """The model, tissue threshold and TTA; the analysis they name and its tile grid (a caption)."""
    picked = pick_model("slides_model")
    if picked is None:
        return None
    entry, loaded = picked
    a, b = st.columns(2)
    threshold = a.slider(
        "Tissue threshold (share of a tile that must be tissue)",
        0.05,
        1.0,
        DEFAULT_TISSUE_THRESHOLD,
        0.05,
        key="slides_thr",
    )
    tta = b.toggle("Test-time augmentation (8 views: 8x the model's time)", key="slides_tta", **WRAP)
    try:
        folder = sa.analysis_dir(slide, loaded)
        from histo_core.slides.grid import plan_slide_grid

        grid_plan = plan_slide_grid(slide, loaded.meta)
    except HistoError as exc:
        st.error(plain(str(exc)))
        return None
    st.caption(
        f"Tiles of {grid_plan.field_um:g} µm = {grid_plan.tile_l0} px at level 0, read from level {grid_plan.level} "
        f"({grid_plan.read_px} px) and resized to the model's {loaded.meta.input_size} px; a {grid_plan.cols} x "
        f"{grid_plan.rows} grid."
    )
    params = {"model": entry.ref, "slide": str(path), "mpp": mpp, "tissue_threshold": threshold, "tta": tta}
    return Analysed(slide, info, thumb, entry, loaded, folder, params)


def latest_task(params: dict) -> task_folders.TaskDir | None:
    """The newest task of this request, started by Analyse/Resume (force False) or Analyse again (force True)."""
    found = [t for t in (task_folders.latest_task("slide", {**params, "force": f}) for f in (False, True)) if t]
    return max(found, key=lambda t: t.id, default=None)


def start(params: dict, force: bool = False) -> None:
    def already() -> task_folders.TaskDir | None:
        latest = latest_task(params)
        return (
            latest if latest is not None and task_folders.refresh_task(latest).state in liveness.ACTIVE_STATES else None
        )

    with user_errors("Not started: "):
        start_once(
            already, lambda: launch.submit_task("slide", {**params, "force": force}, started_by=signed_in_user())
        )
        st.rerun()


def analysis_controls(a: Analysed) -> None:
    """Analyse / Resume / Analyse again / Cancel / Delete, and the progress with the map so far while it runs."""
    task = latest_task(a.params)
    status = task_folders.refresh_task(task) if task else None
    active = status is not None and status.state in liveness.ACTIVE_STATES
    state = a.folder.state()
    c1, c2, c3 = st.columns(3)
    if active:
        if c1.button("Cancel", key="slides_cancel"):
            with user_errors():
                task_folders.cancel_task(task)  # type: ignore[arg-type]
                st.rerun()
    elif (
        state == "completed"
        and a.folder.record().get("options", {}).get("tissue_threshold") == a.params["tissue_threshold"]
    ):
        if c1.button("Analyse again", key="slides_again"):
            start(a.params, force=True)
    elif state == "stopped":
        if c1.button("Resume", key="slides_resume", help="continues from the tiles already analysed"):
            start(a.params)
    else:
        if c1.button("Analyse the slide", key="slides_start", type="primary"):
            start(a.params)
    if a.folder.path.exists() and not active and c3.button("Delete this analysis", key="slides_delete"):
        with user_errors():
            sa.delete_analysis(a.folder)
            st.rerun()
    if status is not None and status.state == "failed":
        st.error(plain(f"The analysis failed: {status.error}"))

    def progress_and_map_so_far() -> None:
        task_progress(task)  # type: ignore[arg-type]
        so_far = slide_view.current_results(a.folder)  # partial results, saved every few seconds
        if so_far is not None:
            done_now = int((so_far["pred"] >= 0).sum())
            live_map = outputs.render_overlay(
                a.thumb,
                so_far["grid"],
                a.thumb.shape[1] / a.info["width"],
                so_far["pred"],
                num_classes=a.meta.num_classes,
            )
            st.image(live_map, caption=f"class map so far: {done_now} tiles", width=480)

    if active:
        live(lambda: task_active(task), progress_and_map_so_far)  # type: ignore[arg-type]


def class_map_section(a: Analysed, results: dict) -> tuple[int, int]:
    """The class map (or one class's probability) over the thumbnail, clickable; its legend, the tissue mask and
    the downloads. Returns the selected tile (row, column)."""
    meta, thumb, folder = a.meta, a.thumb, a.folder
    grid = results["grid"]
    rec = results["record"]
    pred, prob_grid, ood_grid = results["pred"], results["probs"], results["ood"]
    scale = thumb.shape[1] / a.info["width"]
    done = pred >= 0
    st.subheader("Class map" + ("" if rec.get("state") == "completed" else f" (so far: {int(done.sum())} tiles)"))
    m1, m2, m3 = st.columns(3)
    mode = m1.radio("Show", ("Classes", "Probability of a class"), horizontal=True, key="slides_mode")
    alpha = m2.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="slides_alpha")
    grey = m3.toggle("Grey out tiles unlike the training tiles", value=True, key="slides_grey", **WRAP)
    if mode == "Classes":
        image = outputs.render_overlay(
            thumb, grid, scale, pred, alpha=alpha, ood=ood_grid, grey_ood=grey, num_classes=meta.num_classes
        )
    else:
        k = st.selectbox("Class", range(meta.num_classes), format_func=lambda i: meta.classes[i], key="slides_heat")
        image = outputs.render_overlay(
            thumb, grid, scale, prob_grid[..., k], alpha=alpha, heat=True, ood=ood_grid, grey_ood=grey
        )
    selected = st.session_state.get(SELECTED)
    if selected is None or not (0 <= selected[0] < grid.rows and 0 <= selected[1] < grid.cols):
        # chosen before the figure is drawn: Streamlit tells a chart by its figure, so a click is lost when the
        # run it causes draws another figure (the outline moved) than the one clicked
        selected = st.session_state[SELECTED] = (grid.rows // 2, grid.cols // 2)
    event = st.plotly_chart(
        overview_figure(image, grid.to_dict(), scale, selected),
        on_select="rerun",
        selection_mode="points",
        key="slides_overview",
        width="stretch",
    )
    clicked = clicked_tile(event, grid.cols)
    if clicked is not None and clicked != selected:
        st.session_state[SELECTED] = clicked
        st.session_state["slides_row"], st.session_state["slides_col"] = clicked  # the boxes below follow the click
        st.rerun()
    legend = outputs.legend(meta.classes, pred[done], grid.tile_mm2)
    ood_share = float(ood_grid[done].mean()) if meta.ood and done.any() else None
    show_table(
        legend_table(legend, ood_share),
        column_config={
            "colour": st.column_config.TextColumn("colour", help="the class colour on the map"),
            "share": st.column_config.ProgressColumn("share of tissue", min_value=0.0, max_value=1.0, format="percent"),
        },
    )
    if ood_share is not None:
        st.caption(f"{ood_share:.0%} of the analysed tiles look unlike the model's training tiles (grey on the map).")
    with st.expander("Tissue mask (what was analysed)"):
        st.image(str(folder.file("tissue.png")), caption="white: tissue found on the thumbnail", width="stretch")
    if rec.get("state") == "completed":
        d1, d2, d3 = st.columns(3)
        for col, name, mime in (
            (d1, "tiles.csv", "text/csv"),
            (d2, "tiles.geojson", "application/geo+json"),
            (d3, "classmap.png", "image/png"),
        ):
            col.download_button(
                f"Download {name}", folder.file(name).read_bytes(), file_name=name, mime=mime, key=f"dl_{name}"
            )
    return selected


def tile_section(a: Analysed, results: dict, selected: tuple[int, int]) -> None:
    """The selected tile: the region around it at full resolution, its prediction, Grad-CAM and similar tiles."""
    from PIL import Image, ImageDraw

    meta, slide, grid = a.meta, a.slide, results["grid"]
    prob_grid, ood_grid = results["probs"], results["ood"]
    st.subheader("Tile")
    r0, c0 = selected
    for box_key, start_at, top in (("slides_row", r0, grid.rows - 1), ("slides_col", c0, grid.cols - 1)):
        if not 0 <= st.session_state.get(box_key, -1) <= top:  # first visit, or another slide's grid
            st.session_state[box_key] = int(min(start_at, top))
    t1, t2 = st.columns(2)
    row = int(t1.number_input("Row", 0, grid.rows - 1, key="slides_row"))
    col = int(t2.number_input("Column", 0, grid.cols - 1, key="slides_col"))
    if (row, col) != selected:
        st.session_state[SELECTED] = (row, col)
    region, box = slide_view.read_region(slide, grid, row, col)
    view = Image.fromarray(region)
    ImageDraw.Draw(view).rectangle(box, outline=(0, 255, 0), width=2)
    st.image(
        view,
        caption=f"Region around the tile at full resolution ({grid.field_um * 5:g} µm wide); click the map to move it",
    )
    if not results["pred"][row, col] >= 0:
        st.info("This tile was not analysed (not enough tissue, or not yet).")
        return
    shown, tile = slide_view.read_tile(slide, grid, row, col, meta)
    probs = prob_grid[row, col]
    k = int(probs.argmax())
    x, y, side, _ = grid.box(row, col)
    st.markdown(f"**{meta.classes[k]}** ({probs[k]:.1%}) · level-0 box x {x}, y {y}, {side} px ({grid.field_um:g} µm)")
    score = results.get("ood_score")
    score_text = (
        "" if score is None or np.isnan(score[row, col]) else f" (score {score[row, col]:.2f}; flagged at 1.00)"
    )
    if ood_grid[row, col]:
        st.warning(f"This tile looks unlike the model's training tiles{score_text}: treat its prediction with care.")
    elif score_text:
        st.caption(f"Unlike-the-training-tiles score {score[row, col]:.2f} (flagged at 1.00)")
    p1, p2 = st.columns(2)
    p1.image(shown, caption=f"the tile, {shown.shape[1]} px", width="stretch")
    p2.plotly_chart(probability_figure(probs, meta.classes, top=meta.num_classes, highlight=k), width="stretch")
    options = cam_options("slides_cam")
    target = target_select(meta.classes, k, f"slides_target_{row}_{col}")  # a new tile: its own prediction
    with user_errors():
        cam = compute_cams(a.loaded.model, meta, tile[None], options["method"], targets=[target])
        show_cam(tile, cam[0], options, meta.classes[target], predicted=target == k, original=shown, width=384)
    similar_tiles(a.loaded, a.entry, tile, probs, key="slides_similar")


SELECTED = "slides_selected"  # session key of the selected tile (row, column)


def main() -> None:
    page_setup(__file__)
    st.caption(
        "A scanned slide (Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, Leica .scn, tiled TIFF…) cut into tiles at the "
        "model's field of view in µm; only tissue tiles are classified."
    )
    opened = open_chosen_slide()
    if opened is None:
        return
    analysed = choose_analysis(*opened)
    if analysed is None:
        return
    analysis_controls(analysed)
    results = slide_view.current_results(analysed.folder)
    if results is None:
        return
    selected = class_map_section(analysed, results)
    tile_section(analysed, results, selected)


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (the warm-up) runs nothing
    main()
