"""Streamlit pieces shared by the Classify and Review pages: model picker, cached model loading, CAM cards,
probability charts. Logic lives in histo_core (inference, explain, tiling, review)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from histo_core.errors import HistoError
from histo_core.explain import (
    CAM_METHODS,
    CAM_VIEWS,
    cam_on_original,
    compute_cams,
    heatmap,
    model_field,
    overlay,
    uniform_maps,
    upscale_tile,
)
from histo_core.model_cache import load_model
from histo_core.model_catalog import ModelEntry, list_models
from histo_core.model_meta import LoadedModel
from pages.ui.common import WRAP, keep_in_url, plain, url_selection

CARD_PX = 224
PAGE_SIZES = (6, 12, 24, 48)


# -- models ----------------------------------------------------------------------------------------------
def cached_model(ref: str) -> LoadedModel:
    """The model for `ref` (run dir, file, export name) from histo_core.model_cache, the one model cache, the only one:
    it is shared by every session and CLI call in this process and reloads a file whose mtime or size changed
    (a Streamlit cache on top would hold a second copy of each model and miss a rewritten file)."""
    with st.spinner("Loading the model…"):
        return load_model(ref)


def pick_model(key: str) -> tuple[ModelEntry, LoadedModel] | None:
    """The model selectbox (completed runs and exports). Shows why when there is nothing to pick or the file is bad."""
    notes: list[str] = []
    entries = list_models(notes)
    for note in notes:
        st.caption(f"⚠️ {plain(note)}")
    if not entries:
        st.info(
            "No trained model yet. Train one on the Train page (the synthetic demo needs no download), wait "
            "for it to complete, or put an exported model in weights/."
        )
        return None
    by_ref = {e.ref: e for e in entries}
    # ?run=<id> (or ?model=<export name>) selects a model; the choice goes back in the URL
    by_name = {e.name: e.ref for e in entries}
    url_selection("run", key, by_name)
    url_selection("model", key, by_name)
    ref = st.selectbox(
        "Model",
        list(by_ref),
        format_func=lambda r: model_label(by_ref[r]),
        key=key,
        help="Completed runs (newest first) and exported models in weights/. Test accuracy is on the "
        "run's own test split; ready-made models in weights/ report cross-validated accuracy.",
    )
    entry = by_ref[ref]
    param, other = ("run", "model") if entry.kind == "run" else ("model", "run")
    keep_in_url(param, key, entry.name, drop=[other])
    try:
        loaded = cached_model(ref)
    except HistoError as exc:
        st.error(plain(exc))
        return None
    m = loaded.meta
    st.caption(
        f"{m.arch} · input {m.input_size} px, {m.in_channels} channel(s) · {m.num_classes} classes: "
        f"{plain(', '.join(m.classes))} · trained on {plain(entry.dataset)}"
        + (
            f" (tiles covering {m.field_um:.0f} µm: {m.native_tile_px} px at {m.source_mpp} µm/px)"
            if m.field_um
            else f" (tiles covering {m.native_tile_px} source px)"
            if m.native_tile_px
            else ""
        )
        + (f" · {m.stain['method'].capitalize()} stain normalisation" if m.stain else "")
    )
    if entry.kind == "shipped":
        st.info(
            f"Ready-made model shipped with Histo Explorer ({Path(entry.ref).name} in weights/), trained on "
            f"{entry.dataset}; how it was made and measured is in its card, {Path(entry.ref).stem}.json.",
            icon="📦",
        )
    if entry.synthetic or m.synthetic:
        st.warning(
            "SYNTHETIC DEMO MODEL: trained on procedurally generated tiles, not real tissue. Its predictions "
            "on real images mean nothing.",
            icon="🧪",
        )
    return entry, loaded


def model_label(entry: ModelEntry) -> str:
    """A run's name first (its id after), else the export name; then what it is and how good. Short enough to
    show whole beside the sidebar at 1024 px: the architecture and the dataset are in the caption under it."""
    name = entry.name
    if entry.kind == "run":
        from histo_core.runs import RunDir

        given = RunDir(entry.ref).config().get("name")
        name = f"{given} ({entry.name})" if given else entry.name
    acc = entry.accuracy_text
    tag = "SYNTHETIC · " if entry.synthetic else ""
    kind = {"run": "run", "shipped": "ready-made"}.get(entry.kind, "exported")
    return f"{tag}{name} · {kind} · {acc}"


def fingerprint(files: Sequence[tuple[str, bytes]]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for name, data in files:
        h.update(name.encode("utf-8", "replace"))
        h.update(len(data).to_bytes(8, "little"))
        h.update(hashlib.blake2b(data, digest_size=12).digest())
    return h.hexdigest()


# -- tables and charts ----------------------------------------------------------------------------------
def table_columns(table: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """Column settings for the Classify table: confidence as a bar, probabilities as numbers with the full class
    name on hover."""
    config: dict[str, Any] = {
        "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=1.0, format="%.3f"),
        "correct": st.column_config.CheckboxColumn("correct", help="predicted = true class"),
    }
    from histo_core.classnames import short_names

    full = dict(zip(short_names(list(classes)), classes))
    for col in table.columns:
        if col.startswith("p("):
            config[col] = st.column_config.NumberColumn(
                col, format="%.3f", help=f"probability of {full.get(col[2:-1], col[2:-1])}"
            )
    return config


def probability_figure(
    probs: np.ndarray, classes: Sequence[str], top: int = 5, highlight: int | None = None
) -> go.Figure:
    """Horizontal bars of the `top` most probable classes, most probable on top."""
    order = np.argsort(-probs, kind="stable")[:top][::-1]
    colours = ["#d62728" if highlight is not None and int(i) == highlight else "#1f77b4" for i in order]
    fig = go.Figure(
        go.Bar(
            x=[float(probs[i]) for i in order],
            y=[str(classes[i]) for i in order],
            orientation="h",
            marker_color=colours,
            text=[f"{probs[i]:.2f}" for i in order],
            textposition="auto",
            hovertemplate="%{y}: %{x:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        height=40 + 28 * len(order),
        margin=dict(l=0, r=0, t=24, b=0),
        xaxis=dict(range=[0, 1]),
        title=dict(text="probability", font=dict(size=12)),
        showlegend=False,
    )
    return fig


# -- CAMs ----------------------------------------------------------------------------------------------------
def cam_options(key_prefix: str) -> dict[str, Any]:
    """Method, view (overlay or contour) with its opacity or threshold, and the raw-map toggle, side by side."""
    a, v, b, c = st.columns([2, 1, 2, 1])
    method = a.selectbox(
        "Explanation method",
        list(CAM_METHODS),
        key=f"{key_prefix}_method",
        help="\n".join(f"**{m.name}**: {m.description}" for m in CAM_METHODS.values()),
    )
    view = v.radio(
        "View",
        CAM_VIEWS,
        key=f"{key_prefix}_view",
        horizontal=True,
        help="overlay: the map coloured over the tissue · contour: the tissue untouched, the region "
        "above a threshold outlined in green",
    )
    alpha, threshold = 0.35, 0.5
    if view == "overlay":
        alpha = b.slider("Overlay opacity", 0.0, 1.0, 0.35, 0.05, key=f"{key_prefix}_alpha")
    else:
        threshold = b.slider(
            "Contour threshold (share of the map's maximum)", 0.05, 0.95, 0.5, 0.05, key=f"{key_prefix}_threshold"
        )
    raw = c.toggle("Raw heat map", key=f"{key_prefix}_raw", **WRAP, help="Show the map alone instead of over the tile")
    if method == "ScoreCAM":
        st.caption("⏱️ ScoreCAM runs one forward pass per feature channel: seconds per tile on CPU (ResNets: more).")
    if not CAM_METHODS[method].uses_target:
        st.caption(f"{method} is class-agnostic: the class chosen to explain does not change its map.")
    return {"method": method, "alpha": alpha, "raw": raw, "view": view, "threshold": threshold}


class CamCache:
    """Maps computed for (item, method, target), kept in session state for one model and one input set, so
    moving a slider or turning a page does not recompute them."""

    def __init__(self, state_key: str, scope: str):
        store = st.session_state.get(state_key)
        if not store or store.get("scope") != scope:
            store = {"scope": scope, "maps": {}}
            st.session_state[state_key] = store
        self.maps: dict[tuple, np.ndarray] = store["maps"]

    def get_many(
        self,
        loaded: LoadedModel,
        items: Sequence[Any],
        tiles: Sequence[np.ndarray],
        method: str,
        targets: Sequence[int],
    ) -> list[np.ndarray]:
        """Maps for each (item, target), computing the missing ones in one batched call."""
        keys = [(item, method, int(t)) for item, t in zip(items, targets)]
        missing = [i for i, k in enumerate(keys) if k not in self.maps]
        if missing:
            with st.spinner(f"Computing {method} for {len(missing)} tile(s)…"):
                maps = compute_cams(
                    loaded.model,
                    loaded.meta,
                    np.stack([tiles[i] for i in missing]),
                    method,
                    targets=[int(targets[i]) for i in missing],
                )
            for i, cam in zip(missing, maps):
                self.maps[keys[i]] = cam
        return [self.maps[k] for k in keys]


def flat_map_message(method: str, class_name: str, predicted: bool) -> str:
    """Why a flat map shows nothing; for the predicted class it must not claim the tile lacks that class."""
    if predicted:
        return (
            f"Flat {method} map for the predicted class '{class_name}': no region stands out, the evidence is "
            "spread over the whole tile (or this method's gradients vanish for this model). Nothing is drawn; "
            "another method may show more."
        )
    return (
        f"Flat {method} map for '{class_name}': the method found nothing to highlight (usual when explaining a "
        "class the tile shows no evidence for). Nothing is drawn."
    )


def show_cam(
    tile: np.ndarray,
    cam: np.ndarray,
    options: dict[str, Any],
    class_name: str,
    container=None,
    *,
    predicted: bool = False,
    original: np.ndarray | None = None,
    width: int | None = None,
) -> None:
    """The map (overlay, contour or raw), or a warning instead when the map is flat.

    With `original` (the uploaded image) the map is upsampled to the image's own resolution and drawn on it, so
    it sits next to the upload at the same size; without, it is drawn on the model input upscaled to CARD_PX."""
    box = container or st
    method = options["method"]
    size = {"width": width} if width else {}
    if uniform_maps(cam)[0]:
        box.image(
            original if original is not None else upscale_tile(tile, CARD_PX),
            caption="as uploaded (no map)" if original is not None else "model input (no overlay)",
            **size,
        )
        box.warning(plain(flat_map_message(method, class_name, predicted)))
        return
    what = f"{method} for '{class_name}'"
    if options["raw"]:
        px = max(model_field(original).shape[:2]) if original is not None else CARD_PX
        box.image(heatmap(cam, px), caption=f"{what} (red = most evidence)", **size)
    elif original is not None:
        view = options.get("view", "overlay")
        img = cam_on_original(original, cam, view, options["alpha"], options.get("threshold", 0.5))
        note = (
            f"outline: map ≥ {options.get('threshold', 0.5):.0%} of its maximum"
            if view == "contour"
            else "red = most evidence"
        )
        box.image(img, caption=f"{what} at {img.shape[1]}x{img.shape[0]} px ({note})", **size)
    else:
        box.image(overlay(tile, cam, options["alpha"], CARD_PX), caption=f"{what} (red = most evidence)", **size)


def target_select(classes: Sequence[str], predicted: int, key: str) -> int:
    options = list(range(len(classes)))
    if st.session_state.get(key) not in options:
        st.session_state[key] = predicted
    return int(
        st.selectbox(
            "Explain class",
            options,
            format_func=lambda i: classes[i] + (" (predicted)" if i == predicted else ""),
            key=key,
        )
    )


def legend_html(rows: Sequence[dict[str, Any]]) -> str:
    parts = []
    for r in rows:
        share = f"{r['tiles']} tiles ({r['share']:.0%})"
        parts.append(
            f"<span style='display:inline-block;width:0.9em;height:0.9em;background:{r['colour']};"
            f"border:1px solid #444;margin-right:0.3em'></span>{_escape(r['class'])}: {share}"
        )
    return " &nbsp; ".join(parts)


def _escape(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def tile_grid(images: Sequence[np.ndarray], captions: Sequence[str], columns: int = 6, px: int = 128) -> None:
    """Images in rows of `columns`, each upscaled to `px` (nearest-neighbour for small tiles) and drawn at the width
    of its column, so that every tile of the grid has the same size whatever its caption (at its own width, a tile
    whose caption ran to two lines was drawn larger than its neighbours)."""
    for start in range(0, len(images), columns):
        cols = st.columns(columns)
        for col, img, cap in zip(cols, images[start : start + columns], captions[start : start + columns]):
            col.image(upscale_tile(img, px), caption=cap, width="stretch")
