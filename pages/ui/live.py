"""The one poller of the pages: a part of a page that follows a background process (a training run or a task of
any other kind, histo_core.kinds) is re-run every LIVE_REFRESH_S by a Streamlit fragment while the process is
active; when it is not any more, the whole page is redrawn once in its settled form (the result, the error).

    live(lambda: liveness.refresh_status(run).state in liveness.ACTIVE_STATES, lambda: render_progress(run))
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from histo_core import liveness, task_folders
from histo_core.runs import RunStatus

LIVE_REFRESH_S = 2.0
WAITING_FOR_SLOT = "waiting for a free device slot (a training run or another task holds it)"


def _poll(active: Callable[[], bool], body: Callable[[], None]) -> None:
    if not active():
        st.rerun(scope="app")  # it just ended: redraw the whole page with the result
    body()


def live(active: Callable[[], bool], body: Callable[[], None]) -> None:
    """Draw `body` now and again every LIVE_REFRESH_S while `active()` holds; then redraw the page once."""
    st.fragment(_poll, run_every=LIVE_REFRESH_S)(active, body)


def task_active(task: task_folders.TaskDir) -> bool:
    return task_folders.refresh_task(task).state in liveness.ACTIVE_STATES


def task_progress(task: task_folders.TaskDir, status: RunStatus | None = None) -> None:
    """A page task's progress bar (its message, or why it waits) and where it runs."""
    status = status or task_folders.refresh_task(task)
    fraction = status.step / status.steps_per_epoch if status.steps_per_epoch else 0.0
    text = status.phase or (WAITING_FOR_SLOT if status.state == "queued" else "starting…")
    st.progress(min(1.0, fraction), text=text)
    st.caption(f"Running in the background as task `{task.id}`: you can leave this page and come back.")
