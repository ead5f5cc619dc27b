"""The dataset picker every page reuses, the cached dataset opener, and the Datasets page's figures.

choice = dataset_picker("train_ds")          # None until something usable is chosen
if choice:
    ds = open_cached(*choice)                # choice is (spec, size, as_rgb)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from histo_core import paths
from pages.ui.common import WRAP, keep_in_url, url_news

OTHER_PATH = "__path__"
CHANNEL_COLOURS = {1: ["#555555"], 3: ["#d62728", "#2ca02c", "#1f77b4"]}


class DatasetChoice(NamedTuple):
    """What the picker returns: pass it to `open_cached(*choice)` or unpack `spec, size, as_rgb = choice`."""

    spec: str
    size: int | None  # None: the dataset's native size (folders/CSV: min(64, native))
    as_rgb: bool


# -- opening, cached ------------------------------------------------------------------------------------


def source_stamp(spec: str) -> tuple:
    """Changes when a path dataset changes (the folder or its class folders gain/lose files), so the
    cached open is refreshed; cheap (no walk over the files). The decode cache itself checks every file."""
    from histo_core.datasets import parse_spec

    base = Path(parse_spec(spec)[0]).expanduser()
    try:
        if base.is_dir():
            subfolders = sorted(p for p in base.iterdir() if p.is_dir())
            return (base.stat().st_mtime_ns,) + tuple(p.stat().st_mtime_ns for p in subfolders)
        return (base.stat().st_mtime_ns, base.stat().st_size)
    except OSError:
        return ()


@st.cache_resource(show_spinner="Opening the dataset…", max_entries=8)
def _open(spec: str, size: int | None, as_rgb: bool, data_dir: str, stamp: tuple):
    from histo_core.datasets import open_dataset

    return open_dataset(spec, size=size, as_rgb=as_rgb, data_dir=data_dir)


def open_cached(spec: str, size: int | None = None, as_rgb: bool = False, data_dir: str | None = None):
    """open_dataset(), kept open across reruns and pages (memory maps, HDF5 handles stay valid), for paths
    inside the allowed data roots only (`check_web_spec`). Raises DatasetError like open_dataset: wrap the
    call in `user_errors()`."""
    from histo_core.datasets.catalog import check_web_spec

    check_web_spec(spec, data_dir)
    return _open(spec, size, as_rgb, str(paths.data_dir(data_dir)), source_stamp(spec))


# -- the picker -----------------------------------------------------------------------------------------


class _Option(NamedTuple):
    spec: str
    label: str
    sizes: tuple  # choosable sizes; () = native only
    channels: int | None
    present: bool


def _options(include_missing: bool, data_dir) -> list[_Option]:
    from histo_core.datasets import dataset_statuses
    from histo_core.datasets.catalog import available_datasets

    out, seen = [], set()
    for d in available_datasets(data_dir):
        label = d.title + (f" · {d.tag}" if d.tag else "") + (f" — {d.spec}" if d.user_added else "")
        out.append(_Option(d.spec, label, d.sizes, d.channels, True))
        seen.add(d.spec)
    if include_missing:
        for e in dataset_statuses(data_dir):
            if e.spec not in seen and e.supported:
                sizes = e.all_sizes if e.downloadable else ()
                out.append(_Option(e.spec, f"{e.title} ({e.availability})", sizes, e.channels, False))
    return out


def _typed_path_option(spec: str) -> _Option:
    """Size and channel widgets only where they mean something for the kind of path typed (its source says)."""
    from histo_core.datasets import source_for
    from histo_core.datasets.sources import DECODE_SIZES

    source = source_for(spec)[0] if spec else None
    if source is None:
        return _Option(spec, spec, DECODE_SIZES, None, True)
    return _Option(spec, spec, source.path_sizes, source.path_channels, True)


_QUERY_KEY = "dataset"


def _allowed(spec: str, data_dir) -> bool:
    from histo_core.datasets.catalog import check_web_spec
    from histo_core.errors import DatasetError

    try:
        check_web_spec(spec, data_dir)
    except DatasetError:
        return False
    return True


def _size_label(size: int | None) -> str:
    return "auto (≤ 64 px)" if size is None else f"{size} px"


def dataset_picker(
    key: str,
    *,
    include_missing: bool = False,
    default: str | None = None,
    url: Literal["read", "sync"] | None = None,
    data_dir: str | None = None,
) -> DatasetChoice | None:
    """Dataset, tile size and (for grayscale sets) grayscale→RGB widgets. Returns None until a usable
    choice is made. `include_missing` also lists MedMNIST sets not downloaded yet (the Datasets page
    offers their download). `default`: a spec to select now (a dataset just added). `url="read"`: a
    `?dataset=` link selects its dataset (when it is news, see `url_news`); `"sync"`: also writes the choice
    back into the URL, so a reload or a shared link shows the same dataset."""
    options = _options(include_missing, data_dir)
    specs = [o.spec for o in options]
    choice_key, path_key = f"{key}_choice", f"{key}_path"
    wanted = default or (url_news(_QUERY_KEY, choice_key) if url else None)
    refused = False
    if wanted:
        from histo_core.datasets.catalog import canonical_spec

        if canonical_spec(wanted) in specs:  # the catalog lists paths resolved; a link may name them another way
            st.session_state[choice_key] = canonical_spec(wanted)
        elif _allowed(wanted, data_dir):
            st.session_state[choice_key], st.session_state[path_key] = OTHER_PATH, wanted
        else:  # a link naming a path outside the roots: neither opened nor echoed into the path box
            refused = True
            if url:
                st.query_params.pop(_QUERY_KEY, None)
    if refused:
        from histo_core.paths import OUTSIDE_ROOTS_MESSAGE

        st.error(OUTSIDE_ROOTS_MESSAGE)
    if st.session_state.get(choice_key) not in specs + [OTHER_PATH]:
        # First visit (or the chosen set vanished): a real dataset when one is here, else the synthetic demo.
        from histo_core.datasets.catalog import default_dataset_spec

        st.session_state[choice_key] = default_dataset_spec(data_dir)
    labels = {o.spec: o.label for o in options} | {OTHER_PATH: "Another file or folder (type its path)…"}
    cols = st.columns([2, 1])  # the tile size column fits "auto (≤ 64 px)" in a 1024 px window
    spec = cols[0].selectbox("Dataset", specs + [OTHER_PATH], format_func=labels.get, key=choice_key)
    if spec == OTHER_PATH:
        roots = paths.data_roots(data_dir)
        spec = st.text_input(
            "Path: MedMNIST-layout .npz, folder of class folders, CSV manifest or PCam .h5 folder",
            key=path_key,
            placeholder=str(roots[0]) if roots else "",
        ).strip()
        st.caption("Allowed folders: " + ", ".join(f"`{r}`" for r in roots))
        if spec and not _allowed(spec, data_dir):
            from histo_core.paths import OUTSIDE_ROOTS_MESSAGE

            st.error(OUTSIDE_ROOTS_MESSAGE)
            return None
        option = _typed_path_option(spec)
    else:
        option = options[specs.index(spec)]
    size = None
    if option.sizes:
        size = cols[1].selectbox(
            "Tile size",
            list(option.sizes),
            format_func=_size_label,
            key=f"{key}_size_{spec}",
            help="MedMNIST: which file (28/64/128/224); folders and CSV: the size images are decoded to (auto: "
            "their native size, at most 64 px)",
        )
    else:
        cols[1].caption("Tile size: native")
    as_rgb = False
    if option.channels in (1, None):
        as_rgb = cols[1].checkbox(
            "Grayscale → RGB",
            **WRAP,
            key=f"{key}_rgb",
            help="serve 1-channel sets as 3 identical channels (for ImageNet-pretrained models)",
        )
    if not spec:
        return None
    if url == "sync":
        keep_in_url(_QUERY_KEY, choice_key, spec)
    return DatasetChoice(spec, size, bool(as_rgb))


# -- figures --------------------------------------------------------------------------------------------


def class_count_columns(counts: dict[str, Sequence[int]]) -> dict[str, Any]:
    """The class table's column per split: tiles per class as a bar in the cell (scaled to the split's largest
    class) beside the count, headed with the split's total."""
    return {
        split: st.column_config.ProgressColumn(
            f"{split} ({sum(values):,})", format="%d", min_value=0, max_value=max(max(values, default=0), 1)
        )
        for split, values in counts.items()
    }


def histogram_figure(histograms: Sequence[Sequence[int]]) -> go.Figure:
    """Per-channel intensity histograms (fraction of pixels per value 0..255)."""
    fig = go.Figure()
    names = ["gray"] if len(histograms) == 1 else ["red", "green", "blue"]
    colours = CHANNEL_COLOURS.get(len(histograms), CHANNEL_COLOURS[3])
    for name, colour, hist in zip(names, colours, histograms):
        h = np.asarray(hist, np.float64)
        fig.add_scatter(x=np.arange(256), y=h / max(h.sum(), 1), name=name, mode="lines", line=dict(color=colour))
    fig.update_layout(
        height=320,
        xaxis_title="pixel value",
        yaxis_title="fraction of pixels",
        margin=dict(l=50, r=20, t=30, b=45),
        legend=dict(orientation="h", y=1.12),
    )
    return fig


def upscale_nearest(tiles: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """Tiles (..., H, W, C) enlarged by a whole factor with nearest neighbour (pixels stay crisp, nothing is
    invented), so that they are at least `min_size` px; returns (tiles, factor)."""
    factor = max(1, math.ceil(min_size / tiles.shape[-2]))
    if factor == 1:
        return tiles, 1
    return tiles.repeat(factor, axis=-3).repeat(factor, axis=-2), factor


def for_display(tile: np.ndarray) -> np.ndarray:
    """(H, W, 1) grayscale -> (H, W) for st.image."""
    return tile[..., 0] if tile.shape[-1] == 1 else tile


def data_dir_caption(data_dir: str | os.PathLike | None = None) -> str:
    return (
        f"Data dir `{paths.data_dir(data_dir)}` (set HISTO_DATA_DIR to change it): downloads, the decode "
        "cache and the list of added datasets live there."
    )
