"""Background tasks for heavy work started from a page (LR finder, time estimate, label-error search, whole-slide
analysis): never in the Streamlit server process, always through the same machinery as training runs.

    task = submit_task("lr-find", {"config": cfg.to_dict()})   # <runs>/.tasks/<id>/, a detached process
    refresh_task(task)      # status.json: state, progress (0..1), message, pid + start time, heartbeat
    task.result()           # result.json once completed
    cancel_task(task)       # the `cancel` file + SIGTERM, checked against the process start time

A task counts against HISTO_MAX_QUEUED with the runs of its runs directory, waits for the same device slot
(histo_core.slots) as training, and is listed by `python -m histo_core tasks list`. Pages find the latest task
for the same kind and parameters, so its progress and result are shown again after navigating away or reloading.

This module is the task process (`run_task`) and the kinds it runs (KIND_RUNNERS); the task folder, its liveness
and cancelling are `task_folders.py`, starting one is `launch.py` (re-exported here for the pages).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from histo_core.errors import HistoError
from histo_core.fsutil import write_json_atomic
from histo_core.launch import restart_task, submit_task
from histo_core.procs import proc_start_time
from histo_core.runs import run_by_id
from histo_core.slots import device_slot, gpu_of_slot
from histo_core.task_folders import (
    KINDS,
    NO_SLOT_KINDS,
    TASKS_FOLDER,
    TaskDir,
    active_tasks,
    cancel_task,
    latest_task,
    list_tasks,
    params_key,
    refresh_task,
    task_by_id,
    task_summary,
    tasks_root,
)

# -- the task process ---------------------------------------------------------------------------------------


class TaskCancelled(Exception):
    pass


def run_task(task: TaskDir) -> int:
    """Body of `python -m histo_core tasks run DIR`: wait for a device slot, run, write result.json."""
    from histo_core.estimate import process_age_s

    spec = task.task()
    kind, params = spec.get("kind"), dict(spec.get("params") or {})
    params["_startup_s"] = process_age_s()  # before any wait for a slot: what a trainer's start-up costs
    params["_task_path"] = str(task.path)
    stop = {"signalled": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(signalled=True))
    pid_start = proc_start_time(os.getpid())

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

    run = run_by_id(params["run"], params.get("runs_root"))
    report = find_label_errors(run, folds=int(params["folds"]), epochs=int(params["epochs"]), progress=progress)
    return {"run": run.id, "summary": report.summary()}


def _slide(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    """A whole-slide analysis (histo_core.slides): resumes from the analysis folder's partial results."""
    from histo_core.model_cache import load_model
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


__all__ = [
    "KINDS",
    "KIND_RUNNERS",
    "NO_SLOT_KINDS",
    "TASKS_FOLDER",
    "TaskCancelled",
    "TaskDir",
    "active_tasks",
    "cancel_task",
    "latest_task",
    "list_tasks",
    "params_key",
    "refresh_task",
    "restart_task",
    "run_task",
    "submit_task",
    "task_by_id",
    "task_summary",
    "tasks_root",
]
