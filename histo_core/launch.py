"""Starting a background process under the queue limit: every kind (training runs, page tasks, evaluations,
inspection jobs) starts inside `queue_room`, which counts what is queued or running in the runs directory and
starts the new one under one OS file lock, so simultaneous starts (two browser tabs, two app servers) never pass
HISTO_MAX_QUEUED together. Page tasks are started here too (`submit_task`, `restart_task`).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from histo_core import paths
from histo_core.errors import HistoError
from histo_core.fsutil import write_json_atomic
from histo_core.limits import max_queued
from histo_core.liveness import ACTIVE_STATES, refresh_status
from histo_core.procs import (
    histo_command,
    live_registered,
    one_start,
    proc_start_time,
    queue_lock,
    spawn_detached,
    start_lock,
)
from histo_core.runs import UNREADABLE, RunDir, RunStatus, list_runs
from histo_core.runtime import resolve_device
from histo_core.slots import max_concurrent
from histo_core.task_folders import KINDS, TaskDir, active_tasks, params_key, refresh_task, tasks_root

T = TypeVar("T")


def start_once(
    already_started: Callable[[], T | None], start: Callable[[], T], runs_root: str | os.PathLike | None = None
) -> tuple[T, bool]:
    """Start something at most once for a double click: returns (what runs, whether this call started it).

    With Streamlit's fast reruns the second click of a double click runs the page again while the first click's
    run is still inside `start` (a training process takes a second to launch), so a check made outside a lock
    sees nothing started yet and starts a second one. The check and the start are made under one OS file lock of
    the runs directory: the second click (or a second tab, or a second app server) waits, then finds what the
    first one started. The page keeps no lock of its own."""
    try:
        lock = start_lock(runs_root)
    except OSError as exc:
        raise HistoError(f"{paths.runs_dir(runs_root)}: cannot start anything there ({exc.strerror or exc})") from None
    with lock:
        found = already_started()
        if found is not None:
            return found, False
        return start(), True


def active_runs(runs_root: str | os.PathLike | None = None) -> list[RunDir]:
    """Runs under the runs root whose process is queued or running (liveness refreshed)."""
    return [r for r in list_runs(runs_root) if refresh_status(r).state in ACTIVE_STATES]


def active_processes(runs_root: str | os.PathLike | None = None) -> int:
    """How many background processes of every kind are queued or running in this runs directory: training runs,
    page tasks, evaluations and inspection jobs (each registered when started, procs.live_registered), and runs
    or tasks marked active whose process is not registered (started by hand, or about to start)."""
    statuses = [refresh_status(r) for r in active_runs(runs_root)] + [refresh_task(t) for t in active_tasks(runs_root)]
    theirs = {int(s.pid) for s in statuses if s.pid}
    return len(statuses) + len(live_registered(runs_root) - theirs)


@contextmanager
def queue_room(runs_root: str | os.PathLike | None = None) -> Iterator[None]:
    """Start a background process inside this block: refused when HISTO_MAX_QUEUED (default 8) processes of any
    kind are already queued or running in this runs directory (each waiting process holds its memory, about
    900 MB for a trainer). The count and the start happen under one OS file lock, so simultaneous starts (two
    browser tabs, two app servers) never pass the limit together."""
    for name in sorted(k for k in os.environ if k.startswith("HISTO_MAX_RUNS_")):
        max_concurrent(name[len("HISTO_MAX_RUNS_") :])  # a bad value is refused here, before a process starts
    limit = max_queued()
    try:
        lock = queue_lock(runs_root)
    except OSError as exc:
        raise HistoError(f"{paths.runs_dir(runs_root)}: cannot start anything there ({exc.strerror or exc})") from None
    with lock:
        active = active_processes(runs_root)
        if active >= limit:
            raise HistoError(
                f"{active} background processes (runs, evaluations, page tasks) are already queued or running in "
                f"{paths.runs_dir(runs_root)}, the limit (HISTO_MAX_QUEUED={limit}): wait for one to finish or "
                "cancel one, then start again"
            )
        yield


def submit_task(
    kind: str,
    params: dict[str, Any],
    runs_root: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    started_by: str | None = None,
) -> TaskDir:
    """Start `kind` with `params` in a detached process; refused when HISTO_MAX_QUEUED processes are already
    queued or running in this runs directory."""
    if kind not in KINDS:
        raise HistoError(f"unknown task {kind!r}; one of {', '.join(KINDS)}")
    device = resolve_device(device or "auto")  # the slot name the trainer uses ("auto" -> cpu/cuda)
    with queue_room(runs_root):
        return _start_task(kind, params, runs_root, device, started_by)


def _start_task(kind: str, params: dict[str, Any], runs_root, device: str, started_by: str | None) -> TaskDir:
    root = tasks_root(runs_root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        task = TaskDir(root / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(3)}")
        task.path.mkdir()
    except OSError as exc:
        raise HistoError(f"cannot create a task folder in {root}: {exc.strerror or exc}") from None
    write_json_atomic(
        task.task_path,
        {
            "kind": kind,
            "params": params,
            "key": params_key(kind, params),
            "device": device,
            "started_by": started_by or "",
            "created_at": time.time(),
        },
    )
    _spawn(task, device)
    return task


def _spawn(task: TaskDir, device: str) -> None:
    """Mark the task queued and start its detached process (`tasks run DIR`), recording its pid."""
    task.write_status(RunStatus(state="queued", device=device))
    cmd = histo_command("tasks", "run", str(task.path.resolve()))
    try:
        with open(task.log_path, "ab") as log:
            pid = spawn_detached(cmd, log, runs_root=task.path.parent.parent)
    except OSError as exc:
        task.update_status(state="failed", error=f"could not start the task process: {exc}")
        raise HistoError(f"{task.id}: could not start the task process ({exc})") from None
    task.update_status(pid=pid, pid_start=proc_start_time(pid), host=socket.gethostname())


def restart_task(task: TaskDir) -> None:
    """Start a cancelled or failed task's process again on the same folder (a study's driver resumes this way).
    Two callers at once start one process: the second finds the task queued."""
    with one_start(task.start_lock_path):
        status = refresh_task(task)
        if status.state in ACTIVE_STATES:
            raise HistoError(f"{task.id}: the task is {status.state}; cancel it before resuming")
        if status.state == "completed":
            raise HistoError(f"{task.id}: the task has completed; there is nothing to resume")
        if status.state == UNREADABLE:
            raise HistoError(f"{task.id}: unreadable ({status.error}); it cannot be resumed, delete it")
        with queue_room(task.path.parent.parent):
            task.cancel_path.unlink(missing_ok=True)
            _spawn(task, task.task().get("device") or "cpu")
