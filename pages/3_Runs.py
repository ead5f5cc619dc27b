"""Runs: every training run, and for the selected one live curves, evaluation and actions."""

from __future__ import annotations

import streamlit as st

from histo_core import jobs, paths
from histo_core.runs import RunDir, list_runs, read_only_note
from pages.ui.common import page_setup, user_errors
from pages.ui.runs import link_to_page, render_run, render_summary_table, run_label

page_setup("Runs", "📈")

notice = st.session_state.pop("runs_notice", None)
if notice:
    st.success(notice)

runs = None
with user_errors():
    runs = list_runs()
if runs is None:
    st.stop()
read_only = read_only_note()
if read_only:
    st.warning(read_only)
if not runs:
    st.info(f"No runs in `{paths.runs_dir()}` yet. Start one on the Train page (the synthetic demo needs no download).")
    link_to_page("pages/2_Train.py", "Train a model", "🏋️")
    st.stop()

summaries = [jobs.run_summary(r) for r in runs]
render_summary_table(summaries)
active = sum(s["state"] in jobs.ACTIVE_STATES for s in summaries)
st.caption(f"{len(runs)} runs in `{paths.runs_dir()}` · {active} queued or running · "
           "runs train in their own processes: closing the browser or restarting the app does not stop them")

ids = [s["id"] for s in summaries]
labels = {s["id"]: run_label(s) for s in summaries}
wanted = st.query_params.get("run")  # the Train page links here with ?run=<id>
if wanted in ids and st.session_state.get("runs_applied_param") != wanted:
    st.session_state["runs_select"] = wanted
if st.session_state.get("runs_select") not in ids:
    st.session_state.pop("runs_select", None)
selected = st.selectbox("Run", ids, format_func=labels.get, key="runs_select")
st.query_params["run"] = selected  # a browser reload keeps the selection
st.session_state["runs_applied_param"] = selected

render_run(RunDir(paths.runs_dir() / selected))
