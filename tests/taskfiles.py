"""Test helpers for background tasks (histo_core.tasks): a task that completes at once, and waiting for one."""

from __future__ import annotations

import time

from histo_core import launch, liveness, task_folders
from histo_core.fsutil import write_json_atomic
from histo_core.runs import RunStatus


def make_task(kind: str, params: dict, state: str = "completed", result: dict | None = None) -> task_folders.TaskDir:
    """A task folder as a finished task process leaves it (no process started)."""
    root = task_folders.tasks_root()
    root.mkdir(parents=True, exist_ok=True)
    task = task_folders.TaskDir(root / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{time.monotonic_ns() % 10**6:06d}")
    task.path.mkdir()
    write_json_atomic(
        task.task_path,
        {
            "kind": kind,
            "params": params,
            "key": task_folders.params_key(kind, params),
            "device": "cpu",
            "started_by": "",
            "created_at": time.time(),
        },
    )
    task.write_status(RunStatus(state=state, finished_at=time.time(), step=1000, steps_per_epoch=1000))
    if result is not None:
        write_json_atomic(task.result_path, result)
    return task


def instant_submit(monkeypatch, results: dict[str, dict]) -> list:
    """Replace launch.submit_task by one that completes at once with results[kind]; returns the calls seen."""
    seen = []

    def submit(kind, params, runs_root=None, *, device="cpu", started_by=None):
        seen.append((kind, params))
        return make_task(kind, params, "completed", results[kind])

    monkeypatch.setattr(launch, "submit_task", submit)
    return seen


def wait_for_task(task: task_folders.TaskDir, timeout_s: float = 300) -> RunStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = task_folders.refresh_task(task)
        if status.state not in liveness.ACTIVE_STATES or time.monotonic() > deadline:
            return status
        time.sleep(0.5)
