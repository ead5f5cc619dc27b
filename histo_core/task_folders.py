"""Task folders: `<runs>/.tasks/<id>/` holds a background process of every kind but the training run
(histo_core.kinds: LR finder, time estimate, label-error search, slide analysis, a study's driver, embeddings,
CAM faithfulness, evaluation): task.json (kind, params, key), status.json (the run's schema, `RunStatus`),
result.json, log.txt, cancel. Reading them lives here; liveness and cancelling are liveness.py's (the same as a
run's), starting one is `launch.submit_task`, running one is `tasks.run_task`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from histo_core import paths
from histo_core.errors import HistoError
from histo_core.fsutil import read_json
from histo_core.kinds import KINDS
from histo_core.liveness import ACTIVE_STATES, cancel, refresh_status
from histo_core.runs import RunDir, RunStatus, check_run_id, status_problem

TASKS_FOLDER = ".tasks"


class TaskDir(RunDir):
    """A task folder: task.json (kind, params, key), status.json, result.json, log.txt, cancel."""

    noun = "task"
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

    def never_started_message(self) -> str:
        return "the task process was never started"

    def cancelled_error(self) -> str | None:
        return None

    def ended_message(self, status: RunStatus, last_log_line: str) -> str:
        return "the task process ended unexpectedly" + (f". Log: {last_log_line}" if last_log_line else "")

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
    """Identifies "the same request": the page shows the latest task with this key, and a second start of it is
    refused while it runs. The kind's `identity` names the parameters that count (default: all of them)."""
    declared = KINDS.get(kind)
    if declared is not None and declared.identity:
        params = {name: params.get(name) for name in declared.identity}
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
    task = TaskDir(tasks_root(runs_root) / check_run_id(task_id))
    if not task.exists():
        raise HistoError(f"{task_id}: no such task (see `python -m histo_core tasks list`)")
    return task


refresh_task = refresh_status  # the one liveness check (liveness.py), under the name the pages know
cancel_task = cancel


def active_tasks(runs_root: str | os.PathLike | None = None) -> list[TaskDir]:
    return [t for t in list_tasks(runs_root) if refresh_task(t).state in ACTIVE_STATES]


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
