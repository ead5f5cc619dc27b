"""The one start of a background process of any kind (histo_core.kinds): `start_process` inside `queue_room`.

`queue_room` holds one OS file lock of the runs directory while it checks that the process is not already
running (the double-start guard: two clicks, two browser tabs, two app servers), counts what is queued or
running there against HISTO_MAX_QUEUED, and starts the new process; `start_process` spawns the kind's command
on its folder and records it queued with its pid and start time. Training runs start through `jobs.submit`
and `jobs.resume`, every other kind as a task (`submit_task`, `restart_task`).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from histo_core import paths
from histo_core.errors import HistoError
from histo_core.fsutil import write_json_atomic
from histo_core.kinds import ProcessKind, get_kind
from histo_core.limits import max_queued
from histo_core.liveness import ACTIVE_STATES, refresh_status
from histo_core.procs import (
    histo_command,
    live_registered,
    log_banner,
    proc_start_time,
    queue_lock,
    spawn_detached,
    start_lock,
)
from histo_core.runs import UNREADABLE, RunDir, RunStatus, list_runs
from histo_core.runtime import resolve_device
from histo_core.slots import max_concurrent
from histo_core.task_folders import TaskDir, active_tasks, list_tasks, params_key, refresh_task, tasks_root

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
    and tasks of every other kind (each registered when started, procs.live_registered), and runs
    or tasks marked active whose process is not registered (started by hand, or about to start)."""
    statuses = [refresh_status(r) for r in active_runs(runs_root)] + [refresh_task(t) for t in active_tasks(runs_root)]
    theirs = {int(s.pid) for s in statuses if s.pid}
    return len(statuses) + len(live_registered(runs_root) - theirs)


@contextmanager
def queue_room(runs_root: str | os.PathLike | None = None, check: Callable[[], None] | None = None) -> Iterator[None]:
    """Start a background process inside this block: refused when HISTO_MAX_QUEUED (default 8) processes of any
    kind are already queued or running in this runs directory (each waiting process holds its memory, about
    900 MB for a trainer). `check` (the double-start guard: is this process already running?) raises a
    HistoError to refuse. The check, the count and the start happen under one OS file lock, so simultaneous
    starts (two clicks, two browser tabs, two app servers) never start one process twice nor pass the limit."""
    for name in sorted(k for k in os.environ if k.startswith("HISTO_MAX_RUNS_")):
        max_concurrent(name[len("HISTO_MAX_RUNS_") :])  # a bad value is refused here, before a process starts
    limit = max_queued()
    try:
        lock = queue_lock(runs_root)
    except OSError as exc:
        raise HistoError(f"{paths.runs_dir(runs_root)}: cannot start anything there ({exc.strerror or exc})") from None
    with lock:
        if check is not None:
            check()
        active = active_processes(runs_root)
        if active >= limit:
            raise HistoError(
                f"{active} background processes (runs, evaluations, page tasks) are already queued or running in "
                f"{paths.runs_dir(runs_root)}, the limit (HISTO_MAX_QUEUED={limit}): wait for one to finish or "
                "cancel one, then start again"
            )
        yield


def start_process(folder: RunDir, kind: ProcessKind, *args: str) -> int:
    """Start `python -m histo_core *kind.command FOLDER *args` detached, its output appended to the folder's
    log.txt, and record it queued with its pid and start time at once, so that a process that dies before it
    writes its own status is still noticed (liveness.refresh_status). Call it inside `queue_room`."""
    cmd = histo_command(*kind.command, str(folder.path.resolve()), *args)
    try:
        with open(folder.log_path, "ab") as log:
            log_banner(log, cmd)
            pid = spawn_detached(cmd, log, runs_root=_runs_root(folder))
    except OSError as exc:
        folder.update_status(state="failed", error=f"could not start the {kind.label} process: {exc}")
        raise HistoError(f"{folder.id}: could not start the {kind.label} process ({exc})") from None
    # The process needs a second or more to import torch before it writes its own status, so this write does not
    # race with it in practice; it records its own pid too.
    folder.update_status(
        pid=pid,
        pid_start=proc_start_time(pid),
        host=socket.gethostname(),
        state="queued",
        error=None,
        finished_at=None,
    )
    return pid


def _runs_root(folder: RunDir) -> Path:
    """The runs directory a run or task folder belongs to (a task sits in <runs>/.tasks/)."""
    return folder.path.parent.parent if isinstance(folder, TaskDir) else folder.path.parent


def submit_task(
    kind: str,
    params: dict[str, Any],
    runs_root: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    started_by: str | None = None,
) -> TaskDir:
    """Start a task of `kind` (histo_core.kinds) with `params` in a detached process; refused while the same task
    (its kind's identity: the same parameters) is queued or running, or when HISTO_MAX_QUEUED processes are."""
    declared = get_kind(kind)
    device = resolve_device(device or "auto")  # the slot name the trainer uses ("auto" -> cpu/cuda)
    key = params_key(kind, params)

    def not_running() -> None:
        for task in list_tasks(runs_root, kind):
            if task.task().get("key") == key and (state := refresh_task(task).state) in ACTIVE_STATES:
                raise HistoError(f"this {declared.label} is already {state} (task {task.id}); wait for it or cancel it")

    with queue_room(runs_root, check=not_running):
        task = _new_task(kind, params, runs_root, device, started_by)
        task.write_status(RunStatus(state="queued", device=device))
        start_process(task, declared)
        return task


def _new_task(kind: str, params: dict[str, Any], runs_root, device: str, started_by: str | None) -> TaskDir:
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
    return task


def restart_task(task: TaskDir) -> None:
    """Start a cancelled or failed task's process again on the same folder (a study's driver resumes this way).
    Two callers at once start one process: the second finds the task queued."""

    def restartable() -> None:
        status = refresh_task(task)
        if status.state in ACTIVE_STATES:
            raise HistoError(f"{task.id}: the task is {status.state}; cancel it before resuming")
        if status.state == "completed":
            raise HistoError(f"{task.id}: the task has completed; there is nothing to resume")
        if status.state == UNREADABLE:
            raise HistoError(f"{task.id}: unreadable ({status.error}); it cannot be resumed, delete it")

    with queue_room(_runs_root(task), check=restartable):
        declared = get_kind(task.task().get("kind"))  # after the check: an unreadable task.json says so first
        task.cancel_path.unlink(missing_ok=True)
        task.write_status(RunStatus(state="queued", device=task.task().get("device") or "cpu"))
        start_process(task, declared)
