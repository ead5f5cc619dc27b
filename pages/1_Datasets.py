"""Datasets: what is available here, and for one dataset its splits, classes, sample tiles, pixel statistics,
a full-resolution tile viewer and its citation. MedMNIST sets can be downloaded and local paths added."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from histo_core.datasets import dataset_status, dataset_statuses, download_dataset, registered_names
from histo_core.datasets.catalog import add_local_dataset, check_web_spec, local_datasets, remove_local_dataset
from histo_core.datasets.decoded_tiles import read_original
from histo_core.datasets.sources import original_file
from histo_core.datasets.stats import class_sample_indices, pixel_stats, samples_per_class
from histo_core.errors import HistoError
from histo_core.paths import data_roots
from pages.ui.common import lazy_expander, lazy_tabs, page_setup, plain, show_table, synthetic_badge, user_errors
from pages.ui.datasets import (
    class_count_columns,
    data_dir_caption,
    dataset_picker,
    for_display,
    histogram_figure,
    open_cached,
    upscale_nearest,
)

KEY = "datasets_page"
TABS = ("Class distribution", "Sample tiles", "Pixel statistics", "Tile viewer", "Citation & licence")
# the widgets of each tab, by key prefix: their values are kept while the tab is closed
KEPT = {"Sample tiles": f"{KEY}_grid_", "Pixel statistics": f"{KEY}_stats_", "Tile viewer": f"{KEY}_view_"}


@st.cache_data(show_spinner="Computing pixel statistics on a sample…", max_entries=32)
def cached_stats(spec: str, size: int | None, as_rgb: bool, split: str, max_tiles: int) -> dict:
    ds = open_cached(spec, size, as_rgb)
    return pixel_stats(ds.split(split), max_tiles=max_tiles).to_dict()


def progress_callback(bar, text: str):
    def update(done: int, total: int) -> None:
        if total:
            bar.progress(min(done / total, 1.0), text=f"{text}: {done / total:.0%}")

    return update


def render_download(flag: str, size: int, where: str) -> None:
    """Download button with a progress bar; the offline message names where to put the file by hand."""
    entry = dataset_status(flag, size)
    target = Path(entry.location)
    st.info(f"**{entry.title} ({size} px)** is not downloaded. It will be saved as `{target}`.")
    if st.button(f"Download {flag} ({size} px)", key=f"{KEY}_download_{where}", type="primary"):
        bar = st.progress(0.0, text="connecting…")
        try:
            download_dataset(flag, size, progress=progress_callback(bar, f"downloading {target.name}"))
        except HistoError as exc:
            bar.empty()
            st.error(plain(exc))
            return
        bar.empty()
        st.session_state[f"{KEY}_notice"] = f"Downloaded {target.name}."
        st.rerun()


def render_not_downloaded(entry, size: int) -> None:
    """What the registry says about a set that is not here yet, and its download."""
    render_download(entry.spec, size, "selected")
    st.markdown(entry.description)
    official = entry.split_sizes
    cols = st.columns(4)
    for col, split in zip(cols, ("train", "val", "test")):
        col.metric(f"{split} (official)", f"{official[split]:,}")
    cols[3].metric("classes", len(entry.classes))
    st.caption("Classes: " + plain(", ".join(entry.classes)))
    st.caption(f"Licence: {entry.license or 'see its source'}")


def render_overview(ds) -> None:
    info = ds.info
    synthetic_badge(info)
    st.subheader(plain(info.title))
    if info.description:
        st.markdown(plain(info.description))
    sizes = ds.split_sizes()
    cols = st.columns(len(sizes) + 3)
    for col, (split, n) in zip(cols, sizes.items()):
        col.metric(split, f"{n:,}")
    cols[len(sizes)].metric("classes", info.num_classes)
    cols[len(sizes) + 1].metric("tile size", f"{info.size} px")
    channels = f"{info.channels}" + (f" (from {info.native_channels})" if info.native_channels != info.channels else "")
    cols[len(sizes) + 2].metric("channels", channels)
    st.caption(plain(f"Task: {info.task} · source: {info.source} · location: {info.location}"))
    for note in info.extra.get("notes", []):
        st.caption(f"Note: {plain(note)}")
    skipped = info.extra.get("skipped") or []
    if skipped:
        with st.expander(f"{len(skipped)} file(s) skipped"):
            more = [f"… and {len(skipped) - 500:,} more"] if len(skipped) > 500 else []
            st.markdown("\n".join(f"- {plain(line)}" for line in [*skipped[:500], *more]))  # words, not code


def render_classes(ds) -> None:
    counts = ds.class_counts()
    table = pd.DataFrame({split: c for split, c in counts.items()}, index=ds.info.classes)
    table.index.name = "class"
    # the counts drawn as bars in their cells: the table's own code, no chart library to load before the page answers
    show_table(table, hide_index=False, column_config=class_count_columns(counts))


def render_samples(ds) -> None:
    info = ds.info
    cols = st.columns([1, 2, 1, 1])
    split = cols[0].selectbox("Split", list(ds.splits), key=f"{KEY}_grid_split")
    shown = cols[1].selectbox("Class", ["every class"] + info.classes, key=f"{KEY}_grid_class")
    count = cols[2].slider("Tiles per class", 1, 48, 8, key=f"{KEY}_grid_count")
    seed_key = f"{KEY}_grid_seed"
    if cols[3].button("Reshuffle", key=f"{KEY}_reshuffle"):
        st.session_state[seed_key] = st.session_state.get(seed_key, 0) + 1
    seed = st.session_state.get(seed_key, 0)
    s = ds.split(split)
    if shown == "every class":
        picked = samples_per_class(s, count, seed)
    else:
        label = info.classes.index(shown)
        picked = {label: class_sample_indices(s.labels, label, count, seed)}
    for label, idx in picked.items():
        st.markdown(f"**{plain(info.classes[label])}** · {int((s.labels == label).sum()):,} tiles in {split}")
        if len(idx) == 0:
            st.caption("no tiles of this class in this split")
            continue
        tiles, factor = upscale_nearest(s.get(idx), 96)
        captions = [f"#{i}" for i in idx]
        st.image([for_display(t) for t in tiles], caption=captions, width=tiles.shape[2], output_format="PNG")
    if info.size < 96:
        st.caption(f"Tiles are {info.size} px, shown enlarged with nearest-neighbour upscaling (pixels not smoothed).")


def render_stats(ds, choice) -> None:
    cols = st.columns(2)
    split = cols[0].selectbox("Split", list(ds.splits), key=f"{KEY}_stats_split")
    max_tiles = cols[1].selectbox("Tiles sampled (at most)", [1000, 5000, 20000], index=1, key=f"{KEY}_stats_n")
    stats = cached_stats(choice.spec, choice.size, choice.as_rgb, split, max_tiles)
    if stats["n_tiles"] == 0:
        st.info(f"The {split} split is empty.")
        return
    names = ["gray"] if len(stats["mean"]) == 1 else ["red", "green", "blue"]
    table = pd.DataFrame(
        {
            "channel": names,
            "mean (0-1)": np.round(stats["mean"], 4),
            "std (0-1)": np.round(stats["std"], 4),
            "mean (0-255)": np.round(np.array(stats["mean"]) * 255, 1),
            "std (0-255)": np.round(np.array(stats["std"]) * 255, 1),
        }
    )
    show_table(table)
    sampled = (
        f"a seeded sample of {stats['n_tiles']:,} of {stats['n_total']:,} tiles"
        if stats["sampled"]
        else f"all {stats['n_total']:,} tiles"
    )
    st.caption(
        f"Computed on {sampled} of the {split} split. For torchvision: "
        f"`Normalize(mean={[round(m, 4) for m in stats['mean']]}, std={[round(v, 4) for v in stats['std']]})`"
    )
    st.plotly_chart(histogram_figure(stats["histograms"]), key="intensity_histograms")


def render_viewer(ds) -> None:
    cols = st.columns([1, 1, 2])
    split = cols[0].selectbox("Split", list(ds.splits), key=f"{KEY}_view_split")
    s = ds.split(split)
    if len(s) == 0:
        st.info(f"The {split} split is empty.")
        return
    index = int(cols[1].number_input(f"Index (0–{len(s) - 1})", 0, len(s) - 1, 0, key=f"{KEY}_view_index_{split}"))
    tile = s.get([index])[0]
    big, factor = upscale_nearest(tile, 256)
    label = int(s.labels[index])
    name = f" · file {plain(s.tile_names[index])}" if s.tile_names else ""
    cols[2].markdown(f"**Label:** {plain(ds.info.classes[label])} (class {label}){name}")
    scale = (
        f"shown {factor}× with nearest-neighbour upscaling so single pixels are visible"
        if factor > 1
        else "shown at full resolution"
    )
    tile_col, original_col = st.columns(2)
    tile_col.image(
        for_display(big),
        caption=f"{split} #{index} · {tile.shape[1]}×{tile.shape[0]} px as the model sees it, {scale}",
        width=big.shape[1],
        output_format="PNG",
    )
    original = original_file(ds.info, s.tile_names[index]) if s.tile_names else None
    if original is not None:
        with original_col, user_errors():
            pixels = read_original(original)
            original_col.image(
                pixels,
                caption=f"original file: {pixels.shape[1]}×{pixels.shape[0]} px (before cropping and resizing)",
                width="stretch" if pixels.shape[1] > 450 else pixels.shape[1],
                output_format="PNG",
            )


def render_about(info) -> None:
    if info.license:
        st.markdown(f"**Licence:** {info.license}")
    if info.citation:
        st.markdown("**Cite:**")
        st.markdown(plain(info.citation))
    about = info.extra.get("about_file")
    if about:
        with st.expander(plain(about)):
            try:
                # plain text: a dataset's README is not trusted markup (links, images, HTML)
                st.text(open(about, encoding="utf-8", errors="replace").read(20000))
            except OSError as exc:
                st.caption(plain(f"cannot read it: {exc}"))
    if not (info.license or info.citation or about):
        st.caption(
            "No licence or citation is known for these files: check where they came from before sharing results."
        )


def render_add_path() -> None:
    # built only while open (lazy_expander: closed sections cost a new tab's first view nothing)
    opened, box = lazy_expander("Add your own dataset (a path on this machine)", f"{KEY}_add_open", [f"{KEY}_add_path"])
    if not opened:
        return
    with box:
        st.caption(
            "A MedMNIST-layout .npz, a folder of class folders (optionally inside train/val/test), a CSV "
            "manifest (image path + label columns; `manifest.csv?image=col&label=col` to name them) or a "
            "folder of PatchCamelyon .h5 files. It is opened once to check it, then listed for every page. "
            "Only paths inside the allowed folders: " + ", ".join(f"`{r}`" for r in data_roots())
        )
        path = st.text_input("Path", key=f"{KEY}_add_path")
        if st.button("Add dataset", key=f"{KEY}_add"):
            bar = st.progress(0.0, text="opening…")
            try:
                check_web_spec(path)  # the web app adds only paths inside the allowed data roots
                ds = add_local_dataset(path, progress=progress_callback(bar, "decoding images"))
            except HistoError as exc:
                bar.empty()
                st.error(plain(exc))
                return
            bar.empty()
            st.session_state[f"{KEY}_notice"] = f"Added {ds.info.title}."
            st.session_state[f"{KEY}_pending"] = local_datasets()[-1]
            st.rerun()


def render_download_any() -> None:
    # keyed: it stays open across the rerun a click starts, so the download's message (offline: where to put the
    # file by hand) is seen; unkeyed, a notice above it vanishing moved it and it reopened collapsed (issue 14)
    opened, box = lazy_expander("Download a MedMNIST set", f"{KEY}_dl_open", [f"{KEY}_dl_flag", f"{KEY}_dl_size"])
    if not opened:
        return
    with box:
        entries = {e.spec: e for e in dataset_statuses() if e.downloadable and e.supported}
        cols = st.columns(2)
        flag = cols[0].selectbox("MedMNIST set", list(entries), key=f"{KEY}_dl_flag")
        sizes = entries[flag].all_sizes
        size = cols[1].selectbox("Size", sizes, format_func=lambda s: f"{s} px", key=f"{KEY}_dl_size")
        entry = dataset_status(flag, size)
        if entry.present:
            st.success(f"{flag} ({size} px) is already here: `{entry.location}`")
        else:
            render_download(flag, size, "any")


def main() -> None:
    page_setup(__file__)
    notice = st.session_state.pop(f"{KEY}_notice", None)
    with st.empty():  # always one slot, so the page below keeps its place whether or not a notice shows
        if notice:
            st.success(plain(notice))
    pending = st.session_state.pop(f"{KEY}_pending", None)  # a just-added dataset becomes the selection
    # ?dataset= selects a dataset (the picker writes the choice back: reloads and shared links keep it)
    choice = dataset_picker(KEY, include_missing=True, default=pending, url="sync")
    st.caption(data_dir_caption())
    render_add_path()
    render_download_any()

    if choice is None:
        st.info("Choose a dataset above, or type the path of your own files.")
        return

    status = dataset_status(choice.spec, choice.size) if choice.spec in registered_names() else None
    if status is not None and status.downloadable and not status.present:
        render_not_downloaded(status, choice.size or status.all_sizes[0])
        return

    ds = None
    with user_errors():
        ds = open_cached(*choice)
    if ds is None:
        return

    if choice.spec in local_datasets() and st.button(
        "Remove from the list", key=f"{KEY}_remove", help="forget this path (the files are not touched)"
    ):
        remove_local_dataset(choice.spec)
        st.query_params.pop("dataset", None)
        st.session_state.pop(f"{KEY}_choice", None)
        st.rerun()

    render_overview(ds)
    # only the open tab is built: the browser drew all five (charts, tile grids, the viewer) on every load
    opened, tab = lazy_tabs(TABS, "datasets_tab", keep=KEPT)  # ?datasets_tab= opens one (a link, a reload)
    with tab:
        if opened == "Class distribution":
            render_classes(ds)
        elif opened == "Sample tiles":
            render_samples(ds)
        elif opened == "Pixel statistics":
            with user_errors():
                render_stats(ds, choice)
        elif opened == "Tile viewer":
            render_viewer(ds)
        else:
            render_about(ds.info)


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (the warm-up) runs nothing
    main()
