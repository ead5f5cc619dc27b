"""A page's heavy work as a background task (histo_core.tasks): a start button, the task's live progress with a
Cancel button, then its result. The task is found again by its kind and parameters, so leaving the page (or
reloading it) and coming back shows the same task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from histo_core import launch, liveness, task_folders
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
    render_result: Callable[[dict[str, Any]], None] | None = None,
    device: str = "auto",
) -> None:
    """`render_result` draws a completed task's result.json (None: the page shows what the task wrote itself)."""
    task = task_folders.latest_task(kind, params)
    status = task_folders.refresh_task(task) if task else None
    active = status is not None and status.state in liveness.ACTIVE_STATES
    again = render_result is not None and status is not None and status.state == "completed"
    label = f"{start_label} again" if again else start_label
    if st.button(label, key=f"{key}_start", disabled=active, help=help):

        def already_started() -> task_folders.TaskDir | None:
            latest = task_folders.latest_task(kind, params)
            if latest is not None and task_folders.refresh_task(latest).state in liveness.ACTIVE_STATES:
                return latest  # started by the other click of a double click, or in another tab
            return None

        with user_errors("Not started: "):
            start_once(
                already_started, lambda: launch.submit_task(kind, params, device=device, started_by=signed_in_user())
            )
            st.rerun()
    if task is None:
        return
    if active:
        live(lambda: task_active(task), lambda: _progress_and_cancel(task, key))
    elif status.state == "completed":
        result = task.result()
        if result is not None and render_result is not None:
            render_result(result)
    elif status.state == "failed":
        st.error(f"Failed: {plain(status.error)}")
    else:
        st.info(f"The last {kind} task was {status.state}.")


def _progress_and_cancel(task: task_folders.TaskDir, key: str) -> None:
    task_progress(task)
    if st.button("Cancel", key=f"{key}_cancel"):
        with user_errors():
            task_folders.cancel_task(task)
