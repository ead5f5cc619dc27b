"""Classify: drop tiles (or one large image) on a trained model; predictions, probabilities and CAMs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from histo_core.errors import HistoError
from histo_core.image_decode import UPLOAD_TYPES, decode_image, square_side
from histo_core.tables import classify_table
from histo_core.tiling import classify_large_image, default_tile_px, legend, render_class_map
from histo_core.uploads import classify_uploads
from pages.ui.classify import (
    PAGE_SIZES,
    CamCache,
    cam_options,
    fingerprint,
    legend_html,
    pick_model,
    probability_figure,
    show_cam,
    table_columns,
    target_select,
)
from pages.ui.common import page_setup, plain, show_table
from pages.ui.evaluate import evaluate_panel
from pages.ui.feature_map import faithfulness_note, faithfulness_scores, similar_tiles


@dataclass(frozen=True)
class Chosen:
    """The model this page classifies with (pick_model's entry and loaded model) and the options above the tabs."""

    entry: Any
    loaded: Any
    tta: bool
    mpp: float | None

    @property
    def meta(self) -> Any:
        return self.loaded.meta

    @property
    def key(self) -> str:
        """Names this model in the session's result caches."""
        return f"{self.loaded.source}:{id(self.loaded.model)}"


def resolution_input(meta) -> float | None:
    """The µm/px of the user's images when the model knows its field of view; None: as the training images."""
    if not meta.field_um:
        return None
    return (
        st.number_input(
            "Resolution of your images (µm per pixel)",
            min_value=0.0,
            max_value=50.0,
            value=0.0,
            step=0.05,
            format="%.3f",
            key="classify_mpp",
            help=f"The model's tiles cover {meta.field_um:.0f} µm ({meta.native_tile_px} px at {meta.source_mpp} µm/px). "
            "Leave 0 when your images have the same resolution as the training images; otherwise each image's "
            "centre field of view is found at this resolution.",
        )
        or None
    )


def tiles_mode(c: Chosen) -> None:
    loaded, meta, tta, mpp = c.loaded, c.meta, c.tta, c.mpp
    uploads = st.file_uploader(
        "Tiles (drag and drop; PNG, JPEG, TIFF, BMP, GIF)",
        type=list(UPLOAD_TYPES),
        accept_multiple_files=True,
        key="classify_files",
    )
    if not uploads:
        st.info(
            f"Drop one or more tiles. The model sees {meta.input_size} px tiles"
            + (f" covering {meta.native_tile_px} source pixels" if meta.native_tile_px else "")
            + "; larger tiles are resized, oblong ones centre-cropped."
        )
        return
    files = [(u.name, u.getvalue()) for u in uploads]
    scope = f"{c.key}:{fingerprint(files)}:{tta}:{mpp}"
    cached = st.session_state.get("classify_results")
    if not cached or cached["scope"] != scope:
        with st.spinner(f"Classifying {len(files)} file(s)…"):
            cached = {"scope": scope, "results": classify_uploads(loaded, files, tta=tta, mpp=mpp)}
        st.session_state["classify_results"] = cached
    results = cached["results"]
    good = [i for i, r in enumerate(results) if r.ok]
    bad = [r for r in results if not r.ok]
    for r in bad:
        st.error(plain(r.error), icon="🚫")
    st.caption(
        f"{len(good)} of {len(results)} file(s) classified"
        + (f", {len(bad)} could not be read" if bad else "")
        + (" · TTA on" if tta else "")
    )
    table = classify_table(results, meta.classes, [u.name for u in uploads])
    show_table(table, column_config=table_columns(table, meta.classes))
    st.download_button(
        "Download the table (CSV: one column per class probability; the true class where the "
        "folder is named after one)",
        table.to_csv(index=False).encode("utf-8"),
        file_name="predictions.csv",
        mime="text/csv",
        key="classify_csv",
    )
    if not good:
        return

    st.subheader("Tiles")
    options = cam_options("classify_cam")
    size_col, page_col = st.columns([1, 3])
    page_size = size_col.selectbox("Tiles per page", PAGE_SIZES, index=1, key="classify_page_size")
    pages = max(1, -(-len(good) // page_size))
    with page_col:
        page = st.pagination(pages, key="classify_page") if pages > 1 else 1
    shown = good[(page - 1) * page_size : page * page_size]
    cams = CamCache("classify_cams", scope)
    targets = [target_for(meta, i, results[i].pred) for i in shown]
    tiles = [results[i].tile for i in shown]
    maps = cams.get_many(loaded, shown, tiles, options["method"], targets)
    slots = [tile_card(c, i, results[i], target, cam, options) for i, target, cam in zip(shown, targets, maps)]
    # The maps' faithfulness (ROAD: 8 forward passes of the page's tiles, most of an upload's time) is scored
    # after the cards are drawn, in one batch, so the results show at once and the line under each map follows.
    faithfulness_scores(loaded, tiles, maps, targets, options["method"], c.key)
    for slot, tile, target, cam in zip(slots, tiles, targets, maps):
        faithfulness_note(loaded, tile, cam, target, options["method"], c.key, container=slot)


def target_for(meta, i: int, predicted: int) -> int:
    value = st.session_state.get(f"classify_target_{i}")
    return int(value) if isinstance(value, int) and 0 <= value < meta.num_classes else predicted


def tile_card(c: Chosen, i: int, r, target: int, cam: np.ndarray, options: dict) -> Any:
    """One tile's card; returns the slot under its map where the faithfulness line goes (filled by the caller,
    once the page's maps are scored together; "being checked" until then)."""
    meta = c.meta
    with st.container(border=True):
        st.markdown(f"**{plain(r.name)}** → **{plain(meta.classes[r.pred])}** ({r.confidence:.1%})")
        if r.unlike_training:
            st.warning(
                f"Unlike the training tiles (score {r.ood_score:.2f}; flagged at 1.00): treat with care "
                f"({plain(r.unlike_training)}).",
                icon="⚠️",
            )
        elif r.ood_score is not None:
            st.caption(f"Unlike-the-training-tiles score {r.ood_score:.2f} (flagged at 1.00)")
        left, middle, right = st.columns([1, 1, 1.3])
        left.image(r.preview, caption=f"as uploaded: {r.width}x{r.height}, {r.mode_note}", width=224)
        if stain_changed(r):
            left.image(
                r.model_view,
                caption=f"as the model sees it: {meta.stain['method'].capitalize()} "
                f"stain-normalised, {meta.input_size} px",
                width=224,
            )
        show_cam(
            r.tile,
            cam,
            options,
            meta.classes[target],
            container=middle,
            predicted=target == r.pred,
            original=r.field_view,
            width=224,
        )
        slot = middle.empty()
        faithfulness_note(c.loaded, r.tile, cam, target, options["method"], c.key, container=slot, compute=False)
        with right:
            st.plotly_chart(
                probability_figure(r.probs, meta.classes, highlight=r.pred),
                key=f"classify_probs_{i}",
                config={"displayModeBar": False},
            )
            target_select(meta.classes, r.pred, key=f"classify_target_{i}")
        for note in r.notes:
            st.caption(f"ℹ️ {plain(note)}")
        similar_tiles(c.loaded, c.entry, r.tile, r.probs, key=f"classify_similar_{i}")
    return slot


def stain_changed(r) -> bool:
    """Whether stain normalisation visibly changed the tile (more than 2 grey levels on average)."""
    return r.model_view is not None and float(np.abs(r.model_view.astype(np.int16) - r.tile).mean()) > 2.0


def large_image_mode(c: Chosen) -> None:
    loaded, meta, tta, mpp = c.loaded, c.meta, c.tta, c.mpp
    upload = st.file_uploader(
        "One large image (a field or a region; PNG, JPEG, TIFF, BMP)",
        type=list(UPLOAD_TYPES),
        accept_multiple_files=False,
        key="classify_large",
    )
    if upload is None:
        st.info(
            "Drop one image larger than a tile (e.g. a 700x460 BreaKHis field or a 5000x5000 region). It is cut "
            f"into tiles of {default_tile_px(meta)} source pixels by default, each classified."
        )
        return
    try:
        decoded = decode_image(upload.getvalue(), upload.name)
        square_side(decoded.height, decoded.width, decoded.name)  # refuses images under 8 px across
    except HistoError as exc:
        st.error(plain(exc), icon="🚫")
        return
    h, w = decoded.height, decoded.width
    default = min(default_tile_px(meta, mpp), h, w)
    a, b = st.columns(2)
    tile_px = int(
        a.number_input(
            "Tile size (source pixels)",
            min_value=8,
            max_value=max(8, min(h, w)),
            value=default,
            step=8,
            key="classify_tile_px",
            help="The field of view of one tile. Default: the training tiles' native size when "
            "known (PathMNIST: 224 px at 0.5 µm/px), else 224.",
        )
    )
    alpha = b.slider("Map opacity", 0.0, 1.0, 0.45, 0.05, key="classify_map_alpha")
    scope = f"{c.key}:{fingerprint([(upload.name, upload.getvalue())])}:{tile_px}:{tta}"
    cached = st.session_state.get("classify_map")
    if not cached or cached["scope"] != scope:
        bar = st.progress(0.0, text="Classifying tiles…")
        try:
            cmap = classify_large_image(
                loaded,
                decoded.array,
                tile_px,
                tta=tta,
                mpp=mpp,
                progress=lambda d, t: bar.progress(d / t, text=f"{d} of {t} tiles"),
            )
        except HistoError as exc:
            bar.empty()
            st.error(plain(exc))
            return
        bar.empty()
        cached = {"scope": scope, "map": cmap}
        st.session_state["classify_map"] = cached
    cmap = cached["map"]
    for note in decoded.notes + cmap.notes:
        st.caption(f"ℹ️ {plain(note)}")
    st.image(
        render_class_map(decoded.array, cmap, alpha=alpha),
        caption=f"{decoded.name}: {w}x{h} px, {cmap.cols}x{cmap.rows} tiles of {cmap.tile_px} px",
    )
    rows = legend(cmap)
    st.markdown(legend_html([r for r in rows if r["tiles"]]), unsafe_allow_html=True)
    show_table(
        pd.DataFrame(rows)
        .drop(columns="colour")
        .rename(columns={"mean_confidence": "mean confidence", "share": "share of the image"}),
        column_config={
            "share of the image": st.column_config.NumberColumn(format="percent"),
            "mean confidence": st.column_config.NumberColumn(format="%.3f"),
        },
    )
    tiles_table = pd.DataFrame(cmap.table())
    st.download_button(
        "Download per-tile predictions (CSV)",
        tiles_table.to_csv(index=False).encode("utf-8"),
        file_name="class_map.csv",
        mime="text/csv",
        key="classify_map_csv",
    )


def main() -> None:
    page_setup(__file__)
    picked = pick_model("classify_model")
    if picked is None:
        return
    entry, loaded = picked
    if entry.kind != "run":  # a run's evaluations are started from the Runs page
        evaluate_panel(entry)
    tta = st.toggle("Test-time augmentation (average over 8 flips/rotations)", key="classify_tta")
    chosen = Chosen(entry, loaded, tta, resolution_input(loaded.meta))
    # Both tabs stay rendered, so switching between them keeps what was uploaded in each.
    tiles_tab, large_tab = st.tabs(["Tiles", "Large image"])
    with tiles_tab:
        st.caption("Each file is one tile.")
        tiles_mode(chosen)
    with large_tab:
        st.caption("One image cut into tiles of the model's field of view and shown as a class map.")
        large_image_mode(chosen)


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (the warm-up) runs nothing
    main()
