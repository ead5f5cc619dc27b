"""Streamlit views of one run (status, live curves, evaluation report, actions), used by the Runs page.

Everything shown is read from the run directory on each rerun; the figures come from pages/ui/charts.py.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from histo_core import jobs, liveness
from histo_core.fsutil import read_json
from histo_core.launch import start_once
from histo_core.runs import UNREADABLE, RunDir, RunStatus
from pages.ui import charts
from pages.ui.common import WRAP, percent_column, plain, show_table, synthetic_badge, user_errors
from pages.ui.evaluate import evaluate_panel
from pages.ui.live import live
from pages.ui.report import render_report

STATE_ICONS = {
    "queued": "⏳",
    "running": "🏃",
    "completed": "✅",
    "failed": "❌",
    "cancelled": "⏹️",
    liveness.STALE: "❔",
    UNREADABLE: "⚠️",
}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:  # "0 s per epoch" hid a second-long epoch
        return f"{max(0.0, seconds):.1f} s"
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def run_label(summary: dict[str, Any]) -> str:
    name = f"{summary['name']} · " if summary["name"] else ""
    return f"{STATE_ICONS.get(summary['state'], '')} {name}{summary['id']}"


def summary_table(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """The runs table: one row per run, readable column names."""
    rows = []
    for s in summaries:
        rows.append(
            {
                "run": s["name"] or s["id"],
                "state": s["state"],
                "progress": round(100 * s["progress"]),
                "test acc": s["test_accuracy"],
                "test AUC": s["test_auc"],
                "dataset": dataset_label(s),
                "architecture": s["arch"],
                "epoch": f"{s['epoch']}/{s['epochs']}",
                "best val": _metric_text(s["monitor"], s["best_val"]),
                "noise": f"{s['noise']:g} {s['noise_mode']}" if s["noise"] else "0",
                "duration": fmt_duration(s["duration_s"]),
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(s["created_at"])) if s["created_at"] else "",
                "run id": s["id"],
            }
        )
        if any(x.get("started_by") for x in summaries):  # runs started while sign-in was required
            rows[-1]["started by"] = s.get("started_by") or "-"
    return pd.DataFrame(rows)


def dataset_label(summary: dict[str, Any]) -> str:
    """The dataset's title, marked SYNTHETIC once (the synthetic set's own title already says so)."""
    title = summary["dataset"]
    return title if not summary["synthetic"] or "SYNTHETIC" in title else f"{title} (SYNTHETIC)"


def _metric_text(name: str, value: float | None) -> str:
    return f"{name} {value:.4f}" if value is not None else "-"


# The columns the runs table shows (newest run first), each of a set width (px), so that all of them fit beside the
# sidebar in a 1024 px window (a long run name or dataset title is cut inside its cell there, not a whole column
# off the edge); a wider window stretches them in proportion, the run and the dataset most. The progress bar only
# while a run is queued or running (run and dataset narrower then). The other columns of summary_table (AUC,
# epoch, best val, duration, created, run id) are in the run's own view below the table.
SHOWN_COLUMNS = {
    "run": 135,
    "state": 75,
    "progress": 70,
    "test acc": 60,
    "dataset": 150,
    "architecture": 65,
    "noise": 55,
}
NARROWER_WHILE_ACTIVE = {"run": 105, "dataset": 110}


def render_summary_table(summaries: list[dict[str, Any]]) -> None:
    table = summary_table(summaries)
    active = any(s["state"] in liveness.ACTIVE_STATES for s in summaries)
    widths = SHOWN_COLUMNS | (NARROWER_WHILE_ACTIVE if active else {})
    show_table(
        table,
        widths={c: px for c, px in widths.items() if c != "progress" or active} | {"started by": None},
        headers={"architecture": "arch"},
        column_config={
            "progress": st.column_config.ProgressColumn(
                "progress", format="%d%%", min_value=0, max_value=100, width=widths["progress"]
            ),
            "test acc": percent_column(help="accuracy on the test split", width=widths["test acc"]),
        },
    )


def link_to_page(page: str, label: str, icon: str | None = None, query_params: dict[str, str] | None = None) -> None:
    """st.page_link, degrading to a hint when this page runs on its own (`streamlit run pages/X.py`, AppTest),
    where the other pages are not registered."""
    from streamlit.errors import StreamlitPageNotFoundError

    try:
        st.page_link(page, label=label, icon=icon, query_params=query_params)
    except StreamlitPageNotFoundError:
        st.caption(f"{label}: open the {page.rsplit('_', 1)[-1].removesuffix('.py')} page from the sidebar")


# -- one run -----------------------------------------------------------------------------------------


def render_run(run: RunDir) -> None:
    """Header, then a live panel (re-run every LIVE_REFRESH_S by `live`) while the run is active, else the
    finished view; actions at the end."""
    status = liveness.refresh_status(run)
    config, dataset = run.config(), run.dataset()
    title = config.get("name") or run.id
    st.subheader(plain(title))
    st.caption(
        f"`{run.id}` · {plain(dataset.get('title') or config.get('dataset'))} · {config.get('arch')} · "
        f"{config.get('epochs')} epochs · batch {config.get('batch_size')} · {config.get('optimizer')} "
        f"lr {config.get('lr')} · noise {config.get('noise', 0):g}"
        + (f" ({config.get('noise_mode')})" if config.get("noise") else "")
    )
    synthetic_badge(dataset)
    if status.state == UNREADABLE:  # nothing of it can be trusted: the file, the reason, and Delete
        st.error(
            f"This run cannot be read: {plain(status.error)}. Restore the file, or delete the run "
            "(nothing else of it is shown)."
        )
    elif status.state in liveness.ACTIVE_STATES:
        live(lambda: liveness.refresh_status(run).state in liveness.ACTIVE_STATES, lambda: _live_panel(run))
    else:
        _finished_view(run, status)
    _actions(run)


def _live_panel(run: RunDir) -> None:
    render_progress(run, liveness.refresh_status(run))
    rows = run.metrics()
    render_curves(rows)
    val = read_json(run.val_latest_path)
    if val:
        st.markdown(f"**Validation after epoch {len(rows)}** (the test set is evaluated at the end)")
        render_report(val, key=f"live-{run.id}")


def render_progress(run: RunDir, status: RunStatus) -> None:
    if status.state == "queued":
        st.info(
            f"⏳ Queued: waiting for a free {status.device or 'device'} slot. It starts by itself when a "
            "running run ends (limit per device: HISTO_MAX_RUNS_CPU / HISTO_MAX_RUNS_CUDA)."
        )
        return
    if status.state == liveness.STALE:
        st.warning(f"No heartbeat from {plain(status.host)} for a while: the run may have died there.")
    if run.cancel_requested():
        st.warning("Cancel requested: the run stops after the current batch and saves last.pt.")
    phase = f" · {status.phase}" if status.phase else ""
    step = f" · batch {status.step}/{status.steps_per_epoch}" if status.steps_per_epoch else ""
    st.progress(
        min(1.0, status.progress), text=f"epoch {status.epoch}/{status.epochs}{step}{phase} · {status.progress:.0%}"
    )
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("images / s", f"{status.images_per_s:,.0f}" if status.images_per_s else "-")
    c2.metric("ETA", fmt_duration(status.eta_s))
    c3.metric("elapsed", fmt_duration(time.time() - status.started_at if status.started_at else None))
    c4.metric("device", status.device or "-")


def render_curves(rows: list[dict[str, Any]]) -> None:
    """One chart per metric that has values (a run without a validation split has no AUC curve)."""
    if not rows:
        st.caption("Curves appear after the first epoch.")
        return
    present = [
        m
        for m, (train_key, val_key, _) in charts.CURVE_METRICS.items()
        if any(isinstance(r.get(k), (int, float)) for r in rows for k in (train_key, val_key) if k)
    ]
    for col, metric in zip(st.columns(max(1, len(present))), present):
        col.plotly_chart(charts.curve_figure(rows, metric), width="stretch")


def has_validation(run: RunDir, rows: list[dict[str, Any]] | None = None) -> bool:
    rows = run.metrics() if rows is None else rows
    return any(isinstance(r.get("val_loss"), (int, float)) for r in rows) or bool((run.results() or {}).get("val"))


NO_VALIDATION = (
    "No validation split: this run trained on train+val (the default for small sets), so there are "
    "no validation curves and the model kept is the last epoch's; the test set measures it."
)


def _finished_view(run: RunDir, status: RunStatus) -> None:
    icon = STATE_ICONS.get(status.state, "")
    took = fmt_duration((status.finished_at - status.started_at) if status.finished_at and status.started_at else None)
    results = run.results() or {}
    if status.state == "failed":
        st.error(f"Run failed: {plain(status.error or 'no error recorded')}")
    elif status.state == "cancelled":
        st.warning(
            f"{icon} Cancelled after epoch {status.epoch} of {status.epochs}"
            + (" (last.pt saved: resume continues from there)." if run.last_ckpt.exists() else ".")
        )
        if status.error:
            st.caption(plain(status.error))
    else:
        early = " (stopped early)" if results.get("stopped_early") else ""
        rows = run.metrics()
        validated = has_validation(run, rows)
        best = f"; best epoch {results['best_epoch']} by validation" if validated and results.get("best_epoch") else ""
        st.success(
            f"{icon} Completed {results.get('epochs_run', status.epoch)} epochs{early} in {took} on "
            f"{results.get('device') or status.device or '?'}{best}"
        )
        if not validated:
            st.info(NO_VALIDATION, icon="ℹ️")
        for warning in results.get("warnings") or []:  # e.g. a test split too small to measure anything
            st.warning(plain(warning), icon="⚠️")
    render_curves(run.metrics())
    splits = [s for s in ("test", "val") if (results.get(s) or {}).get("n")]
    if status.state == "completed" and splits:
        split = (
            st.radio(
                "Evaluation split",
                splits,
                horizontal=True,
                key=f"split-{run.id}",
                format_func={"test": "test", "val": "validation"}.get,
            )
            if len(splits) > 1
            else splits[0]
        )
        report = results[split]
        which = "best checkpoint by validation" if has_validation(run) else "final model"
        st.markdown(f"**{'validation' if split == 'val' else split} set** ({report['n']:,} tiles, {which})")
        render_report(report, key=f"{split}-{run.id}")
    elif val := read_json(run.val_latest_path):
        st.markdown(f"**Validation after the last finished epoch** ({val.get('n', '?')} tiles)")
        render_report(val, key=f"val-{run.id}")
    if status.state in ("failed", "cancelled"):
        with st.expander("log.txt (last lines)", expanded=status.state == "failed"):
            st.code(liveness.log_tail(run, 40) or "(empty log)", language=None)


def _actions(run: RunDir) -> None:
    """The buttons that apply to the run's state, side by side."""
    status = liveness.refresh_status(run)
    st.divider()
    actions = []
    if status.state in liveness.ACTIVE_STATES:
        actions.append(_cancel_button)
    if status.state in ("failed", "cancelled"):
        actions.append(_resume_button)
    if run.best_ckpt.exists() and status.state != UNREADABLE:
        actions.append(_download_button)
    if status.state not in liveness.ACTIVE_STATES:
        actions.append(_delete_control)
    for col, action in zip(st.columns(4), actions):
        with col:
            action(run)
    if status.state == "completed":
        _export_form(run)
        evaluate_panel(run)


def _cancel_button(run: RunDir) -> None:
    if st.button("Cancel run", key=f"cancel-{run.id}", type="primary"):
        with user_errors():
            jobs.cancel(run)
            st.rerun()


def _resume_button(run: RunDir) -> None:
    current = int(run.config().get("batch_size") or 1)
    batch_size = st.number_input(
        "Batch size",
        min_value=1,
        value=current,
        step=1,
        key=f"resume-batch-{run.id}",
        help="lower it after running out of GPU memory: the epoch that failed restarts at its first batch",
    )
    if st.button(
        "Resume", key=f"resume-{run.id}", type="primary", help="continue from last.pt in a new background process"
    ):

        def resumed_already() -> str | None:  # by the other click of a double click
            state = liveness.refresh_status(run).state
            return f"{run.id} is {state} already" if state in liveness.ACTIVE_STATES else None

        with user_errors():
            st.session_state["runs_notice"] = start_once(
                resumed_already, lambda: jobs.resume(run, batch_size=int(batch_size))
            )[0]
            st.rerun()


def _download_button(run: RunDir) -> None:
    st.download_button(
        "Download best.pt",
        data=lambda p=run.best_ckpt: p.read_bytes(),
        file_name=f"{run.id}-best.pt",
        mime="application/octet-stream",
        key=f"dl-{run.id}",
        on_click="ignore",
    )


def _delete_control(run: RunDir) -> None:
    confirm_key = f"confirm-delete-{run.id}"
    if not st.session_state.get(confirm_key):
        if st.button("Delete run…", key=f"delete-{run.id}"):
            st.session_state[confirm_key] = True
            st.rerun()
        return
    st.warning(f"Delete {plain(run.id)} and all its files?")
    yes, no = st.columns(2)
    if yes.button("Yes, delete", key=f"delete-yes-{run.id}", type="primary"):
        with user_errors():
            jobs.delete(run)
            st.session_state.pop(confirm_key, None)
            st.session_state["runs_notice"] = f"deleted {run.id}"
            st.rerun()
    if no.button("Keep it", key=f"delete-no-{run.id}"):
        st.session_state.pop(confirm_key, None)
        st.rerun()


def _export_form(run: RunDir) -> None:
    from histo_core.export import export_run

    with st.expander("Export to weights/ (for Classify and `predict`)"):
        with st.form(key=f"export-{run.id}"):
            default = (run.config().get("name") or f"{run.config().get('arch')}-{run.id[-4:]}").replace(" ", "-")
            name = st.text_input("Export name", value=default, help="letters, digits, '-', '_', '.'")
            overwrite = st.checkbox("Overwrite an export with this name", **WRAP)
            if st.form_submit_button("Export"):
                with user_errors():
                    path = export_run(run, name, overwrite=overwrite)
                    st.success(plain(f"Exported to {path} (model card {path.with_suffix('.json').name})"))
