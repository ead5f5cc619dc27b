"""Compare: overlay the curves of several runs and tabulate their settings and final metrics."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from histo_core import jobs, paths
from histo_core.runs import RunDir, list_runs
from pages.ui.charts import overlay_figure
from pages.ui.common import page_setup
from pages.ui.runs import link_to_page, run_label

page_setup("Compare runs", "⚖️")

CURVES = {
    "val_acc": "validation accuracy", "val_loss": "validation loss", "val_auc": "validation AUC",
    "train_acc": "training accuracy", "train_loss": "training loss", "lr": "learning rate",
    "images_per_s": "training images / s",
}

runs = {r.id: r for r in list_runs()}
if len(runs) < 2:
    st.info("Comparing needs at least two runs; start them on the Train page.")
    link_to_page("pages/2_Train.py", "Train a model", "🏋️")
    st.stop()

summaries = {rid: jobs.run_summary(r) for rid, r in runs.items()}
# default: the latest runs that have curves, at most four
with_curves = [rid for rid, r in runs.items() if summaries[rid]["epoch"]][:4]
chosen = st.multiselect("Runs", list(runs), default=with_curves[:4] or list(runs)[:2],
                        format_func=lambda rid: run_label(summaries[rid]), key="compare_runs")
if not chosen:
    st.info("Pick runs to compare.")
    st.stop()

metric = st.selectbox("Curve", list(CURVES), format_func=CURVES.get, key="compare_metric")
legend = {rid: (summaries[rid]["name"] or rid) for rid in chosen}
series = {legend[rid]: RunDir(paths.runs_dir() / rid).metrics() for rid in chosen}
st.plotly_chart(overlay_figure(series, metric, title=f"{CURVES[metric]} per epoch"), width="stretch")

table = pd.DataFrame([jobs.comparison_row(runs[rid]) for rid in chosen])
st.subheader("Settings and results")
st.dataframe(table, hide_index=True, width="stretch",
             column_config={k: st.column_config.NumberColumn(format="%.4f") for k in ("test acc", "test AUC", "test ECE")})
synthetic = [rid for rid in chosen if summaries[rid]["synthetic"]]
if synthetic:
    st.warning(f"{len(synthetic)} of these runs trained on the SYNTHETIC demo data.", icon="🧪")
st.download_button("Download the table as CSV", data=table.to_csv(index=False).encode("utf-8"),
                   file_name="histo-runs-comparison.csv", mime="text/csv", on_click="ignore")
