"""Background tasks for heavy work started from a page (LR finder, time estimate, label-error search, whole-slide
analysis): never in the Streamlit server process, always through the same machinery as training runs.

    task = submit_task("lr-find", {"config": cfg.to_dict()})   # <runs>/.tasks/<id>/, a detached process
    refresh_task(task)      # status.json: state, progress (0..1), message, pid + start time, heartbeat
    task.result()           # result.json once completed
    cancel_task(task)       # the `cancel` file + SIGTERM, checked against the process start time

A task counts against HISTO_MAX_QUEUED with the runs of its runs directory, waits for the same device slot
(histo_core.slots) as training, and is listed by `python -m histo_core tasks list`. Pages find the latest task
for the same kind and parameters, so its progress and result are shown again after navigating away or reloading.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from histo_core import paths
from histo_core.errors import HistoError
from histo_core.fsutil import read_json, write_json_atomic
from histo_core.procs import histo_command, proc_start_time, spawn_detached
from histo_core.runs import UNREADABLE, RunDir, RunStatus, status_problem

TASKS_FOLDER = ".tasks"
KINDS = ("lr-find", "estimate", "label-errors", "slide", "study")
NO_SLOT_KINDS = ("study",)  # drivers that start runs of their own: holding a device slot would block them


class TaskDir(RunDir):
    """A task folder: task.json (kind, params, key), status.json, result.json, log.txt, cancel."""

    task_path = property(lambda self: self.path / "task.json")
    result_path = property(lambda self: self.path / "result.json")

    def exists(self) -> bool:
        return self.task_path.exists()

    def schema(self):
        return [
            (self.task_path, True, _task_problem),
            (self.status_path, False, status_problem),
            (self.result_path, False, None),
        ]

    def task(self) -> dict[str, Any]:
        return read_json(self.task_path, {}) or {}

    def result(self) -> dict[str, Any] | None:
        return read_json(self.result_path)


def _task_problem(task: dict[str, Any]) -> str | None:
    if not isinstance(task.get("kind"), str) or not isinstance(task.get("params", {}), dict):
        return "no task kind and parameters"
    return None


def tasks_root(runs_root: str | os.PathLike | None = None) -> Path:
    return paths.runs_dir(runs_root) / TASKS_FOLDER


def params_key(kind: str, params: dict[str, Any]) -> str:
    """Identifies "the same request": the page shows the latest task with this key."""
    text = json.dumps({"kind": kind, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def list_tasks(runs_root: str | os.PathLike | None = None, kind: str | None = None) -> list[TaskDir]:
    """Task folders, newest first."""
    root = tasks_root(runs_root)
    if not root.is_dir():
        return []
    found = [TaskDir(p) for p in root.iterdir() if (p / "task.json").exists()]
    if kind:
        found = [t for t in found if t.task().get("kind") == kind]
    return sorted(found, key=lambda t: t.id, reverse=True)


def latest_task(kind: str, params: dict[str, Any], runs_root: str | os.PathLike | None = None) -> TaskDir | None:
    key = params_key(kind, params)
    return next((t for t in list_tasks(runs_root, kind) if t.task().get("key") == key), None)


def task_by_id(task_id: str, runs_root: str | os.PathLike | None = None) -> TaskDir:
    from histo_core.runs import check_run_id

    task = TaskDir(tasks_root(runs_root) / check_run_id(task_id))
    if not task.exists():
        raise HistoError(f"{task_id}: no such task (see `python -m histo_core tasks list`)")
    return task


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
    from histo_core import jobs

    if kind not in KINDS:
        raise HistoError(f"unknown task {kind!r}; one of {', '.join(KINDS)}")
    from histo_core.runtime import resolve_device

    device = resolve_device(device or "auto")  # the slot name the trainer uses ("auto" -> cpu/cuda)
    with jobs.queue_room(runs_root):
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
    from histo_core import jobs
    from histo_core.procs import one_start

    with one_start(task.path / ".start.lock"):
        status = refresh_task(task)
        if status.state in jobs.ACTIVE_STATES:
            raise HistoError(f"{task.id}: the task is {status.state}; cancel it before resuming")
        if status.state == "completed":
            raise HistoError(f"{task.id}: the task has completed; there is nothing to resume")
        if status.state == UNREADABLE:
            raise HistoError(f"{task.id}: unreadable ({status.error}); it cannot be resumed, delete it")
        with jobs.queue_room(task.path.parent.parent):
            task.cancel_path.unlink(missing_ok=True)
            _spawn(task, task.task().get("device") or "cpu")


def refresh_task(task: TaskDir) -> RunStatus:
    """The task's status; a queued/running task whose process is gone is marked failed (or cancelled)."""
    from histo_core import jobs

    status = task.status()
    if status.state not in jobs.ACTIVE_STATES or status.pid is None:
        if status.state in jobs.ACTIVE_STATES and time.time() - (status.created_at or 0) > 60:
            return _end(task, status, "failed", "the task process was never started")
        return status
    if jobs.process_alive(task, status):
        return status
    fresh = task.status()
    if fresh.state not in jobs.ACTIVE_STATES:
        return fresh
    if task.cancel_requested():
        return _end(task, fresh, "cancelled", None)
    last = jobs.last_log_line(task)
    return _end(task, fresh, "failed", "the task process ended unexpectedly" + (f". Log: {last}" if last else ""))


def _end(task: TaskDir, status: RunStatus, state: str, error: str | None) -> RunStatus:
    status.state, status.error, status.finished_at = state, error, time.time()
    try:
        task.write_status(status)
    except OSError:
        pass
    return status


def cancel_task(task: TaskDir) -> RunStatus:
    from histo_core import jobs

    status = refresh_task(task)
    if status.state not in jobs.ACTIVE_STATES:
        raise HistoError(f"{task.id}: the task is {status.state}; only a queued or running task can be cancelled")
    task.cancel_path.touch()
    if status.pid and jobs.process_alive(task, status):
        try:
            os.kill(int(status.pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
    return status


def active_tasks(runs_root: str | os.PathLike | None = None) -> list[TaskDir]:
    from histo_core import jobs

    return [t for t in list_tasks(runs_root) if refresh_task(t).state in jobs.ACTIVE_STATES]


# -- the task process ---------------------------------------------------------------------------------------


class TaskCancelled(Exception):
    pass


def run_task(task: TaskDir) -> int:
    """Body of `python -m histo_core tasks run DIR`: wait for a device slot, run, write result.json."""
    from histo_core import jobs
    from histo_core.estimate import process_age_s
    from histo_core.slots import device_slot

    spec = task.task()
    kind, params = spec.get("kind"), dict(spec.get("params") or {})
    params["_startup_s"] = process_age_s()  # before any wait for a slot: what a trainer's start-up costs
    params["_task_path"] = str(task.path)
    stop = {"signalled": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(signalled=True))
    pid_start = jobs.proc_start_time(os.getpid())

    def check() -> None:
        if not task.path.is_dir():
            raise TaskCancelled("the task folder was deleted")
        if stop["signalled"] or task.cancel_requested():
            raise TaskCancelled("cancelled")

    def progress(fraction: float, message: str) -> None:
        check()
        task.update_status(
            state="running",
            step=int(round(1000 * max(0.0, min(1.0, fraction)))),
            steps_per_epoch=1000,
            phase=message[:200],
            heartbeat=time.time(),
        )

    try:
        task.update_status(state="queued", pid=os.getpid(), pid_start=pid_start, heartbeat=time.time())
        runner = KIND_RUNNERS.get(kind) if isinstance(kind, str) else None
        if runner is None:  # start_task writes only known kinds; this is a hand-edited or foreign task.json
            raise HistoError(f"{task.task_path}: unknown task kind {kind!r}; one of {', '.join(KIND_RUNNERS)}")

        def waiting() -> None:
            check()
            task.update_status(heartbeat=time.time())

        kind_of_device = spec.get("device") or "cpu"
        slot_held = (
            contextlib.nullcontext(None)
            if kind in NO_SLOT_KINDS
            else device_slot(kind_of_device, runs_root=task.path.parent.parent, on_wait=waiting)
        )
        with slot_held as slot:
            if slot is not None and kind_of_device == "cuda":  # the slot's GPU is this process's current device
                import torch

                from histo_core.slots import gpu_of_slot

                torch.cuda.set_device(gpu_of_slot(slot))
            task.update_status(state="running", started_at=time.time(), heartbeat=time.time(), epochs=1)
            result = runner(params, progress)
            check()
        write_json_atomic(task.result_path, result)
        task.update_status(
            state="completed",
            finished_at=time.time(),
            step=1000,
            steps_per_epoch=1000,
            phase="done",
            heartbeat=time.time(),
        )
        return 0
    except TaskCancelled:
        if task.path.is_dir():
            task.update_status(state="cancelled", finished_at=time.time(), phase="")
        return 0
    except HistoError as exc:
        if task.path.is_dir():
            task.update_status(state="failed", error=str(exc), finished_at=time.time())
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:  # noqa: BLE001 - the page must see "failed" with a line, not a dead process
        from histo_core.training import error_line

        if task.path.is_dir():
            try:
                task.update_status(state="failed", error=error_line(exc), finished_at=time.time())
            except OSError:
                pass
        raise


def _lr_find(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    from histo_core.config import TrainConfig
    from histo_core.lr_find import lr_find

    steps = int(params.get("steps", 100))
    progress(0.0, "opening the dataset")
    return lr_find(
        TrainConfig.from_dict(params["config"]),
        num_steps=steps,
        on_step=lambda step, lr, loss: progress((step + 1) / steps, f"lr {lr:.2g}, loss {loss:.3f}"),
    )


def _estimate(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    from histo_core.config import TrainConfig
    from histo_core.estimate import estimate_run_time

    return estimate_run_time(
        TrainConfig.from_dict(params["config"]), progress=progress, startup_s=params.get("_startup_s")
    )


def _label_errors(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    from histo_core.label_errors import find_label_errors
    from histo_core.runs import run_by_id

    run = run_by_id(params["run"], params.get("runs_root"))
    report = find_label_errors(run, folds=int(params["folds"]), epochs=int(params["epochs"]), progress=progress)
    return {"run": run.id, "summary": report.summary()}


def _slide(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    """A whole-slide analysis (histo_core.slides): resumes from the analysis folder's partial results."""
    from histo_core.inference import load_model
    from histo_core.slides import analyse_slide, open_slide

    progress(0.0, "opening the model and the slide")
    loaded = load_model(params["model"], device=params.get("device") or "cpu")

    def report(p: dict[str, Any]) -> None:
        eta = f" · ETA {p['eta_s']:.0f} s" if p.get("eta_s") is not None else ""
        progress(
            p["done"] / max(1, p["total"]), f"{p['done']}/{p['total']} tiles · {p['tiles_per_s']:.0f} tiles/s{eta}"
        )

    with open_slide(params["slide"], mpp=params.get("mpp")) as slide:
        progress(0.0, "finding the tissue")
        return analyse_slide(
            loaded,
            slide,
            runs_root=params.get("runs_root"),
            tissue_threshold=float(params.get("tissue_threshold", 0.5)),
            batch_size=int(params.get("batch_size", 256)),
            tta=bool(params.get("tta", False)),
            force=bool(params.get("force", False)),
            amp=bool(params.get("amp", True)),
            progress=report,
        )


def _study(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    from histo_core.study import drive

    return drive(params["_task_path"], params, progress)


KIND_RUNNERS: dict[str, Callable[[dict[str, Any], Callable[[float, str], None]], dict[str, Any]]] = {
    "lr-find": _lr_find,
    "estimate": _estimate,
    "label-errors": _label_errors,
    "slide": _slide,
    "study": _study,
}


def task_summary(task: TaskDir, status: RunStatus | None = None) -> dict[str, Any]:
    status = status or refresh_task(task)
    spec = task.task()
    return {
        "id": task.id,
        "kind": spec.get("kind", ""),
        "state": status.state,
        "progress": status.step / status.steps_per_epoch if status.steps_per_epoch else 0.0,
        "message": status.phase,
        "error": status.error,
        "started_by": spec.get("started_by", ""),
        "created_at": spec.get("created_at"),
    }
