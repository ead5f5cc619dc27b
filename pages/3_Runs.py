"""Runs: every training run, and for the selected one live curves, evaluation and actions."""

from __future__ import annotations

import streamlit as st

from histo_core import liveness, paths
from histo_core.runs import RunDir, list_runs, read_only_note
from histo_core.summaries import run_summary
from pages.ui.common import page_setup, plain, url_selectbox, user_errors
from pages.ui.live import live
from pages.ui.runs import link_to_page, render_run, render_summary_table, run_label


def runs_table(rows: list[dict]) -> None:
    render_summary_table(rows)
    active = sum(s["state"] in liveness.ACTIVE_STATES for s in rows)
    st.caption(
        f"{len(rows)} {'run' if len(rows) == 1 else 'runs'} in `{paths.runs_dir()}` · {active} queued or running · "
        "runs train in their own processes: closing the browser or restarting the app does not stop them"
    )


def live_runs_table() -> None:
    """The table while a run is queued or running, re-read every LIVE_REFRESH_S (it went stale: 0%, epoch 0/60
    while the run's panel said 4/60; a queued run stayed "queued" after the run ahead finished). When none is
    active any more, the whole page is redrawn once in its settled form."""
    runs_table([run_summary(r) for r in list_runs()])


def any_active() -> bool:
    return any(liveness.refresh_status(r).state in liveness.ACTIVE_STATES for r in list_runs())


def main() -> None:
    page_setup(__file__)
    notice = st.session_state.pop("runs_notice", None)
    if notice:
        st.success(plain(notice))

    runs = None
    with user_errors():
        runs = list_runs()
    if runs is None:
        return
    read_only = read_only_note()
    if read_only:
        st.warning(plain(read_only))
    if not runs:
        st.info(
            f"No runs in `{paths.runs_dir()}` yet. Start one on the Train page (the synthetic demo needs no download)."
        )
        link_to_page("pages/2_Train.py", "Train a model", "🏋️")
        return

    summaries = [run_summary(r) for r in runs]
    if any(s["state"] in liveness.ACTIVE_STATES for s in summaries):
        live(any_active, live_runs_table)
    else:
        runs_table(summaries)

    ids = [s["id"] for s in summaries]
    labels = {s["id"]: run_label(s) for s in summaries}
    # ?run=<id> (the Train page links here so; a deleted run is dropped); a reload or a shared link keeps the choice
    selected = url_selectbox("Run", "run", "runs_select", ids, format_func=labels.get)

    render_run(RunDir(paths.runs_dir() / selected))


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (the warm-up) runs nothing
    main()
