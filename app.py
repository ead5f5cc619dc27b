"""Histo Explorer: home page. `streamlit run app.py`."""

from __future__ import annotations

import time

from histo_core.runtime import configure_process

configure_process()  # threads and OpenMP wait policy before the pages load torch (histo_core/runtime.py)

import streamlit as st  # noqa: E402

from histo_core import __version__, paths  # noqa: E402
from histo_core.runs import list_runs  # noqa: E402
from pages.ui.common import page_setup  # noqa: E402

page_setup("Histo Explorer")
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

cols = st.columns(7)
for col, (page, label, icon) in zip(
    cols,
    [
        ("pages/1_Datasets.py", "Datasets", "🗂️"),
        ("pages/2_Train.py", "Train", "🏋️"),
        ("pages/3_Runs.py", "Runs", "📈"),
        ("pages/4_Compare.py", "Compare", "⚖️"),
        ("pages/5_Classify.py", "Classify", "🔎"),
        ("pages/6_Review.py", "Review", "🧐"),
        ("pages/7_Feature_map.py", "Feature map", "🗺️"),
    ],
):
    with col:
        st.page_link(page, label=label, icon=icon)

st.subheader("Latest runs")
runs = list_runs()[:8]
if not runs:
    st.info("No runs yet: start one on the Train page (the synthetic demo needs no download).")
else:
    table = []
    for run in runs:
        cfg, status, results = run.config(), run.status(), run.results() or {}
        test = results.get("test") or {}
        table.append(
            {
                "run": cfg.get("name") or run.id,
                "state": status.state,
                "test accuracy": f"{test['accuracy']:.1%}" if test.get("accuracy") is not None else "-",
                "test AUC": f"{test['auc']:.3f}" if test.get("auc") is not None else "-",
                "progress": f"{status.progress:.0%}",
                "architecture": cfg.get("arch"),
                "dataset": run.dataset().get("title", cfg.get("dataset")),
                "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(status.created_at))
                if status.created_at
                else "",
                "run id": run.id,
            }
        )
    st.dataframe(table, hide_index=True, width="stretch")
st.caption(f"Runs directory: `{paths.runs_dir()}` (set HISTO_RUNS_DIR to change).")

st.subheader("Datasets available here")
from histo_core.datasets.catalog import available_datasets  # noqa: E402

st.dataframe(
    [{"dataset": r.title, "spec": r.spec, "source": r.source} for r in available_datasets()],
    hide_index=True,
    width="stretch",
)
st.caption(
    f"Dataset cache: `{paths.data_dir()}` (set HISTO_DATA_DIR to change). "
    "Download MedMNIST sets or add local files on the Datasets page."
)
