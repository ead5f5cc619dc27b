"""Slides: open a whole slide, analyse it in the background with a model, and explore the class map down to a
single tile at full resolution (with its Grad-CAM and most similar training tiles)."""

from __future__ import annotations

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
from pages.ui.common import page_setup, plain, signed_in_user, user_errors
from pages.ui.feature_map import similar_tiles
from pages.ui.live import live, task_active, task_progress
from pages.ui.slides import clicked_tile, legend_table, metadata_rows, overview_figure, pick_slide

page_setup(__file__)
st.caption(
    "A scanned slide (Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, Leica .scn, tiled TIFF…) cut into tiles at the "
    "model's field of view in µm; only tissue tiles are classified."
)
path = pick_slide()
if path is None:
    st.stop()
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
    st.stop()
info = slide.info()
left, right = st.columns([1, 2])
thumb = slide.thumbnail()
left.image(thumb, caption=info["name"], width="stretch")
right.dataframe(metadata_rows(info), hide_index=True, width="stretch")

picked = pick_model("slides_model")
if picked is None:
    st.stop()
entry, loaded = picked
meta = loaded.meta
a, b = st.columns(2)
threshold = a.slider(
    "Tissue threshold (share of a tile that must be tissue)",
    0.05,
    1.0,
    DEFAULT_TISSUE_THRESHOLD,
    0.05,
    key="slides_thr",
)
tta = b.toggle("Test-time augmentation (8 views: 8x the model's time)", key="slides_tta")
try:
    folder = sa.analysis_dir(slide, loaded)
    from histo_core.slides.grid import plan_slide_grid

    grid_plan = plan_slide_grid(slide, meta)
except HistoError as exc:
    st.error(plain(str(exc)))
    st.stop()
st.caption(
    f"Tiles of {grid_plan.field_um:g} µm = {grid_plan.tile_l0} px at level 0, read from level {grid_plan.level} "
    f"({grid_plan.read_px} px) and resized to the model's {meta.input_size} px; a {grid_plan.cols} x "
    f"{grid_plan.rows} grid."
)

params = {"model": entry.ref, "slide": str(path), "mpp": mpp_given or None, "tissue_threshold": threshold, "tta": tta}


def latest_task() -> task_folders.TaskDir | None:
    """The newest task of this request, started by Analyse/Resume (force False) or Analyse again (force True)."""
    found = [t for t in (task_folders.latest_task("slide", {**params, "force": f}) for f in (False, True)) if t]
    return max(found, key=lambda t: t.id, default=None)


task = latest_task()
status = task_folders.refresh_task(task) if task else None
active = status is not None and status.state in liveness.ACTIVE_STATES
state = folder.state()


def start(force: bool = False) -> None:
    def already() -> task_folders.TaskDir | None:
        latest = latest_task()
        return (
            latest if latest is not None and task_folders.refresh_task(latest).state in liveness.ACTIVE_STATES else None
        )

    with user_errors("Not started: "):
        start_once(
            already, lambda: launch.submit_task("slide", {**params, "force": force}, started_by=signed_in_user())
        )
        st.rerun()


c1, c2, c3 = st.columns(3)
if active:
    if c1.button("Cancel", key="slides_cancel"):
        with user_errors():
            task_folders.cancel_task(task)  # type: ignore[arg-type]
            st.rerun()
elif state == "completed" and folder.record().get("options", {}).get("tissue_threshold") == threshold:
    if c1.button("Analyse again", key="slides_again"):
        start(force=True)
elif state == "stopped":
    if c1.button("Resume", key="slides_resume", help="continues from the tiles already analysed"):
        start()
else:
    if c1.button("Analyse the slide", key="slides_start", type="primary"):
        start()
if folder.path.exists() and not active and c3.button("Delete this analysis", key="slides_delete"):
    with user_errors():
        sa.delete_analysis(folder)
        st.rerun()
if status is not None and status.state == "failed":
    st.error(plain(f"The analysis failed: {status.error}"))


def progress_and_map_so_far() -> None:
    task_progress(task)  # type: ignore[arg-type]
    so_far = slide_view.current_results(folder)  # partial results, saved every few seconds
    if so_far is not None:
        done_now = int((so_far["pred"] >= 0).sum())
        live_map = outputs.render_overlay(
            thumb, so_far["grid"], thumb.shape[1] / info["width"], so_far["pred"], num_classes=meta.num_classes
        )
        st.image(live_map, caption=f"class map so far: {done_now} tiles", width=480)


if active:
    live(lambda: task_active(task), progress_and_map_so_far)  # type: ignore[arg-type]

results = slide_view.current_results(folder)
if results is None:
    st.stop()
grid = results["grid"]
rec = results["record"]
pred, prob_grid, ood_grid = results["pred"], results["probs"], results["ood"]
scale = thumb.shape[1] / info["width"]
done = pred >= 0
st.subheader("Class map" + ("" if rec.get("state") == "completed" else f" (so far: {int(done.sum())} tiles)"))
m1, m2, m3 = st.columns(3)
mode = m1.radio("Show", ("Classes", "Probability of a class"), horizontal=True, key="slides_mode")
alpha = m2.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="slides_alpha")
grey = m3.toggle("Grey out tiles unlike the training tiles", value=True, key="slides_grey")
if mode == "Classes":
    image = outputs.render_overlay(
        thumb, grid, scale, pred, alpha=alpha, ood=ood_grid, grey_ood=grey, num_classes=meta.num_classes
    )
else:
    k = st.selectbox("Class", range(meta.num_classes), format_func=lambda i: meta.classes[i], key="slides_heat")
    image = outputs.render_overlay(
        thumb, grid, scale, prob_grid[..., k], alpha=alpha, heat=True, ood=ood_grid, grey_ood=grey
    )
sel_key = "slides_selected"
selected = st.session_state.get(sel_key)
if selected is None or not (0 <= selected[0] < grid.rows and 0 <= selected[1] < grid.cols):
    # chosen before the figure is drawn: Streamlit tells a chart by its figure, so a click is lost when the
    # run it causes draws another figure (the outline moved) than the one clicked
    selected = st.session_state[sel_key] = (grid.rows // 2, grid.cols // 2)
event = st.plotly_chart(
    overview_figure(image, grid.to_dict(), scale, selected),
    on_select="rerun",
    selection_mode="points",
    key="slides_overview",
    width="stretch",
)
clicked = clicked_tile(event, grid.cols)
if clicked is not None and clicked != selected:
    st.session_state[sel_key] = clicked
    st.session_state["slides_row"], st.session_state["slides_col"] = clicked  # the boxes below follow the click
    st.rerun()
legend = outputs.legend(meta.classes, pred[done], grid.tile_mm2)
ood_share = float(ood_grid[done].mean()) if meta.ood and done.any() else None
st.dataframe(
    legend_table(legend, ood_share),
    hide_index=True,
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

# -- the selected tile ------------------------------------------------------------------------------------
st.subheader("Tile")
r0, c0 = selected
for box_key, start_at, top in (("slides_row", r0, grid.rows - 1), ("slides_col", c0, grid.cols - 1)):
    if not 0 <= st.session_state.get(box_key, -1) <= top:  # first visit, or another slide's grid
        st.session_state[box_key] = int(min(start_at, top))
t1, t2 = st.columns(2)
row = int(t1.number_input("Row", 0, grid.rows - 1, key="slides_row"))
col = int(t2.number_input("Column", 0, grid.cols - 1, key="slides_col"))
if (row, col) != selected:
    st.session_state[sel_key] = (row, col)
region, box = slide_view.read_region(slide, grid, row, col)
from PIL import Image, ImageDraw  # noqa: E402

view = Image.fromarray(region)
ImageDraw.Draw(view).rectangle(box, outline=(0, 255, 0), width=2)
st.image(
    view, caption=f"Region around the tile at full resolution ({grid.field_um * 5:g} µm wide); click the map to move it"
)
if not done[row, col]:
    st.info("This tile was not analysed (not enough tissue, or not yet).")
    st.stop()
shown, tile = slide_view.read_tile(slide, grid, row, col, meta)
probs = prob_grid[row, col]
k = int(probs.argmax())
x, y, side, _ = grid.box(row, col)
st.markdown(f"**{meta.classes[k]}** ({probs[k]:.1%}) · level-0 box x {x}, y {y}, {side} px ({grid.field_um:g} µm)")
score = results.get("ood_score")
score_text = "" if score is None or np.isnan(score[row, col]) else f" (score {score[row, col]:.2f}; flagged at 1.00)"
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
    cam = compute_cams(loaded.model, meta, tile[None], options["method"], targets=[target])
    show_cam(tile, cam[0], options, meta.classes[target], predicted=target == k, original=shown, width=384)
similar_tiles(loaded, entry, tile, probs, key="slides_similar")
