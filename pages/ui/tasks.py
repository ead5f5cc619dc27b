"""A page's heavy work as a background task (histo_core.tasks): a start button, the task's live progress with a
Cancel button, then its result. The task is found again by its kind and parameters, so leaving the page (or
reloading it) and coming back shows the same task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from histo_core import jobs, tasks
from histo_core.launch import start_once
from pages.ui.common import plain, signed_in_user, user_errors
from pages.ui.live import live, task_active, task_progress


def task_panel(
    kind: str,
    params: dict[str, Any],
    *,
    start_label: str,
    help: str,
    key: str,
    render_result: Callable[[dict[str, Any]], None],
    device: str = "auto",
) -> None:
    task = tasks.latest_task(kind, params)
    status = tasks.refresh_task(task) if task else None
    active = status is not None and status.state in jobs.ACTIVE_STATES
    label = start_label if status is None or status.state != "completed" else f"{start_label} again"
    if st.button(label, key=f"{key}_start", disabled=active, help=help):

        def already_started() -> tasks.TaskDir | None:
            latest = tasks.latest_task(kind, params)
            if latest is not None and tasks.refresh_task(latest).state in jobs.ACTIVE_STATES:
                return latest  # started by the other click of a double click, or in another tab
            return None

        with user_errors("Not started: "):
            start_once(
                already_started, lambda: tasks.submit_task(kind, params, device=device, started_by=signed_in_user())
            )
            st.rerun()
    if task is None:
        return
    if active:
        live(lambda: task_active(task), lambda: _progress_and_cancel(task, key))
    elif status.state == "completed":
        result = task.result()
        if result is not None:
            render_result(result)
    elif status.state == "failed":
        st.error(f"Failed: {plain(status.error)}")
    else:
        st.info(f"The last {kind} task was {status.state}.")


def _progress_and_cancel(task: tasks.TaskDir, key: str) -> None:
    task_progress(task)
    if st.button("Cancel", key=f"{key}_cancel"):
        with user_errors():
            tasks.cancel_task(task)
