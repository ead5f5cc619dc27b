"""The task process: `python -m histo_core tasks run DIR`, the body of every background process kind but the
training run (histo_core.kinds). It waits for a device slot (histo_core.slots) when its kind says so, runs the
function its kind declares with the task's params and a progress callback, and writes result.json.

    task = launch.submit_task("lr-find", {"config": cfg.to_dict()})   # <runs>/.tasks/<id>/, a detached process
    liveness.refresh_status(task)      # status.json: state, progress, message, pid + start time, heartbeat
    task.result()                      # result.json once completed
    liveness.cancel(task)              # the `cancel` file + SIGTERM, checked against the process start time

The task folder is `task_folders.TaskDir`; starting one is `launch.submit_task`. Pages find the latest task for
the same kind and parameters, so its progress and result are shown again after navigating away or reloading.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

from histo_core.errors import HistoError
from histo_core.fsutil import write_json_atomic
from histo_core.kinds import get_kind
from histo_core.liveness import error_line
from histo_core.procs import proc_start_time, process_age_s
from histo_core.slots import device_slot, gpu_of_slot
from histo_core.task_folders import TaskDir

# -- the task process ---------------------------------------------------------------------------------------


class TaskCancelled(Exception):
    pass


def run_task(task: TaskDir) -> int:
    """Body of `python -m histo_core tasks run DIR`: wait for a device slot, run, write result.json."""
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
        try:  # submit_task writes only known kinds; this is a hand-edited or foreign task.json
            declared = get_kind(kind)
        except HistoError as exc:
            raise HistoError(f"{task.task_path}: {exc}") from None
        runner = declared.run_function()

        def waiting() -> None:
            check()
            task.update_status(heartbeat=time.time())

        kind_of_device = spec.get("device") or "cpu"
        slot_held = (
            contextlib.nullcontext(None)
            if not declared.slot
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
        if task.path.is_dir():
            try:
                task.update_status(state="failed", error=error_line(exc), finished_at=time.time())
            except OSError:
                pass
        raise
