"""Home: what the app does, the latest runs and the datasets available here."""

from __future__ import annotations

import streamlit as st

from histo_core import __version__, paths
from histo_core.datasets.catalog import available_datasets
from histo_core.summaries import run_summary
from pages.ui.common import listed_runs, page_setup, plain
from pages.ui.navigation import PAGES
from pages.ui.runs import link_to_page, render_summary_table


def main() -> None:
    page_setup(__file__)
    st.caption(f"v{__version__} · train, evaluate and inspect histopathology tile classifiers")

    st.markdown(
        """
    Histo Explorer puts the whole tile-classifier workflow in one place, with a CLI
    (`python -m histo_core ...`) that does the same work headless:

    1. **Datasets**: browse PathMNIST, TissueMNIST and the other MedMNIST sets, PatchCamelyon HDF5 files, folders
       of class folders (Kather 2016, NCT-CRC-HE-100K), CSV manifests, or the built-in **synthetic** demo.
    2. **Train**: launch background training (CPU, or GPU when present) of a small CNN, ResNet-18/50 or DenseNet-121,
       with label noise, augmentation, schedules, an LR finder and early stopping.
    3. **Runs** and **Compare**: live curves, confusion matrices, ROC/AUC, calibration, per-class metrics.
    4. **Classify**: drop tiles to see predictions and Grad-CAM overlays.
    5. **Review**: walk through every mistake of a run, and the training labels it suspects are wrong.
    6. **Feature map**: every tile placed by what the model sees in it; select a cluster to see its tiles, and
       check which explanation method is most faithful.
    """
    )

    others = [spec for spec in PAGES if spec.url_path]
    for col, spec in zip(st.columns(len(others)), others):
        with col:
            link_to_page(spec.file, spec.title, spec.icon)

    st.subheader("Latest runs")
    runs = listed_runs()[:8]
    if not runs:
        st.info("No runs yet: start one on the Train page (the synthetic demo needs no download).")
    else:
        render_summary_table([run_summary(run) for run in runs])  # the Runs page's table
    st.caption(f"Runs directory: `{paths.runs_dir()}` (set HISTO_RUNS_DIR to change).")

    st.subheader("Datasets available here")
    # a list, not a table: a new tab fetches and starts the table's code (about half a second on 2 cores, issue 24)
    # for what is a few lines; each one's spec is what the CLI's --dataset takes
    st.markdown(
        "\n".join(
            f"- **{plain(r.title)}** · {plain(', '.join(dict.fromkeys((r.spec, r.source))))}"
            for r in available_datasets()
        )
    )
    st.caption(
        f"Dataset cache: `{paths.data_dir()}` (set HISTO_DATA_DIR to change). "
        "Download MedMNIST sets or add local files on the Datasets page."
    )


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (the warm-up) runs nothing
    main()
