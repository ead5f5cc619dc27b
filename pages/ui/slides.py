"""Widgets of the Slides page: pick a slide (under the data roots, or an upload), the overview with the class map
or a probability heat map (clicking a tile selects it), the full-resolution region view and the tile panel."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from histo_core import paths
from histo_core.errors import HistoError
from histo_core.slides.reader import SLIDE_SUFFIXES, UPLOAD_SUFFIXES
from pages.ui.common import plain

UPLOAD_LIMIT_MB = 200  # Streamlit's server.maxUploadSize (.streamlit/config.toml): larger slides go in a data root
LIST_LIMIT = 500  # slide files listed from the data roots
SMALL_TIFF_BYTES = 1 << 20


def find_slides(roots: list[Path]) -> list[Path]:
    """Slide files under the data roots (first LIST_LIMIT, sorted), MIRAX .mrxs included (its folder beside it)."""
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            if root.suffix.lower() in SLIDE_SUFFIXES:
                found.append(root)
            continue
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                if Path(f).suffix.lower() in SLIDE_SUFFIXES and not _small_tiff(Path(dirpath) / f):
                    found.append(Path(dirpath) / f)
            if len(found) >= LIST_LIMIT:
                break
    return sorted(set(found))[:LIST_LIMIT]


def _small_tiff(path: Path) -> bool:
    """A .tif under SMALL_TIFF_BYTES is a tile or a picture, not a slide: not listed (it can still be typed)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    try:
        return path.stat().st_size < SMALL_TIFF_BYTES
    except OSError:
        return True


def pick_slide() -> str | None:
    """A slide path inside the data roots, chosen from a list, typed, or uploaded (saved in the data dir)."""
    roots = paths.data_roots()
    source = st.radio("Slide", ("From the data folders", "Upload"), horizontal=True, key="slides_source")
    if source == "Upload":
        up = st.file_uploader(
            f"A single-file slide ({', '.join(UPLOAD_SUFFIXES)}), up to {UPLOAD_LIMIT_MB} MB; larger slides and "
            "multi-file formats (MIRAX .mrxs) are opened from the data folders",
            type=[s.lstrip(".") for s in UPLOAD_SUFFIXES],
            key="slides_upload",
        )
        if up is None:
            return None
        refused = upload_refusal(up.name, up.size)
        if refused:
            st.error(plain(refused))
            return None
        return str(save_upload(up.name, up.getvalue()))
    found = find_slides(roots)
    typed = st.text_input(
        "Slide path (inside the data folders)",
        key="slides_path",
        help="Or pick one below. Allowed folders: " + ", ".join(str(r) for r in roots),
    )
    if typed.strip():
        if not paths.inside_roots(typed.strip(), roots):
            st.error(plain(f"{typed.strip()}: outside the allowed folders. {paths.OUTSIDE_ROOTS_MESSAGE}"))
            return None
        return typed.strip()
    if not found:
        st.info("No slide files in the data folders: " + ", ".join(str(r) for r in roots))
        return None
    picked = st.selectbox("Slides found in the data folders", [str(p) for p in found], key="slides_pick")
    return picked


def upload_refusal(name: str, size: int) -> str | None:
    """Why an upload of `size` bytes is refused (over UPLOAD_LIMIT_MB), else None. Streamlit's maxUploadSize
    stops larger files in the browser; this says what to do instead."""
    if size <= UPLOAD_LIMIT_MB * 2**20:
        return None
    return (
        f"{name}: {size / 2**20:.0f} MB, over the {UPLOAD_LIMIT_MB} MB upload limit; put the slide in a data folder "
        "and pick it from the list"
    )


def save_upload(name: str, data: bytes) -> Path:
    """Store an uploaded slide in <data dir>/slide-uploads/ under its content hash (the same upload twice is one
    file), keeping its suffix (OpenSlide tells formats apart by it)."""
    from histo_core.fsutil import write_bytes_atomic

    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise HistoError(f"{name}: not a single-file slide ({', '.join(UPLOAD_SUFFIXES)})")
    folder = paths.data_dir() / "slide-uploads"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(name).stem)[:60] or "slide"
    path = folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}{suffix}"
    if not path.exists():
        write_bytes_atomic(path, data)
    return path


def metadata_rows(info: dict[str, Any]) -> list[dict[str, str]]:
    levels = ", ".join(f"{lv['width']}x{lv['height']} (/{lv['downsample']:g})" for lv in info["levels"])
    return [
        {
            "": "size",
            "value": f"{info['width']:,} x {info['height']:,} px ({info['size_mm'][0]} x {info['size_mm'][1]} mm)",
        },
        {"": "levels", "value": levels},
        {"": "µm per pixel", "value": f"{info['mpp']:g} ({info['mpp_source']})"},
        {"": "objective", "value": f"{info['objective']:g}x" if info["objective"] else "not recorded"},
        {"": "vendor", "value": str(info["vendor"])},
    ]


def overview_figure(
    image: np.ndarray, grid: dict[str, Any], scale: float, selected: tuple[int, int] | None
) -> go.Figure:
    """The overview (class map or heat map over the thumbnail) with one invisible marker per tile centre, so a
    click selects a tile; the selected tile is outlined."""
    fig = go.Figure(go.Image(z=image, hoverinfo="skip"))
    t = grid["tile_l0"] * scale
    rows, cols = np.mgrid[0 : grid["rows"], 0 : grid["cols"]]
    xs = (grid["x0"] + (cols + 0.5) * grid["tile_l0"]) * scale
    ys = (grid["y0"] + (rows + 0.5) * grid["tile_l0"]) * scale
    fig.add_trace(
        go.Scatter(
            x=xs.ravel(),
            y=ys.ravel(),
            mode="markers",
            marker={"size": max(4, t * 0.9), "opacity": 0.01, "symbol": "square"},
            customdata=np.stack([rows.ravel(), cols.ravel()], 1),
            hovertemplate="tile row %{customdata[0]}, col %{customdata[1]}<extra></extra>",
        )
    )
    if selected is not None:
        r, c = selected
        x0, y0 = (grid["x0"] + c * grid["tile_l0"]) * scale, (grid["y0"] + r * grid["tile_l0"]) * scale
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x0 + t, y1=y0 + t, line={"color": "#00ff00", "width": 2})
    h, w = image.shape[:2]
    fig.update_layout(
        height=min(900, max(400, int(700 * h / max(w, 1)))),
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        xaxis={"visible": False, "range": [0, w]},
        yaxis={"visible": False, "range": [h, 0], "scaleanchor": "x"},
        dragmode="pan",
        showlegend=False,
    )
    return fig


def clicked_tile(event: Any, cols: int) -> tuple[int, int] | None:
    """The tile (row, column) of a click on `overview_figure`'s tile markers (trace 1, one marker per tile, row
    by row), from the point's index: its customdata comes back as a list or as an index-keyed object."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points:
        index = p.get("point_index", p.get("point_number"))
        if p.get("curve_number") == 1 and isinstance(index, int) and index >= 0:
            return index // cols, index % cols
    return None


def legend_table(legend: list[dict[str, Any]], ood_share: float | None) -> list[dict[str, Any]]:
    rows = [
        {
            "colour": r["colour"],
            "class": r["class"],
            "tiles": r["tiles"],
            "area mm²": r["area_mm2"],
            "share": r["share"],
        }
        for r in legend
        if r["tiles"]
    ]
    if ood_share is not None:
        rows.append(
            {
                "colour": "#808080",
                "class": "(unlike the training tiles)",
                "tiles": None,
                "area mm²": None,
                "share": ood_share,
            }
        )
    return rows
