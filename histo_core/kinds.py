"""Every kind of background process, declared in one place.

A kind is a detached OS process that owns one process folder (`runs.RunDir`: status.json with the one status
schema `RunStatus`, log.txt, cancel, its result file) and is started, refreshed and cancelled the same way as
every other (`launch.start_process`, `liveness.refresh_status`, `liveness.cancel`). A declaration says what it
runs, what it leaves behind and what the pages call it:

    ProcessKind("lr-find", "learning-rate finder", "histo_core.lr_find:task_main", "result.json: lrs, losses,
                suggestion")

The training run owns a run folder (`runs/<id>/`, started by `jobs.submit`) and runs its own command; every
other kind is a task (`<runs>/.tasks/<id>/`, started by `launch.submit_task`) whose process, `tasks run DIR`,
calls the kind's `runner`: a `(params, progress) -> result dict` function named as "module:function" and
imported only in that process, so this registry imports none of the work it starts (the trainer imports the
process model, never the other way round). To add a kind: one `ProcessKind(...)` below (or `register_kind`
from outside) naming a function of the module that does the work.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from histo_core.errors import HistoError

Progress = Callable[[float, str], None]
Runner = Callable[[dict[str, Any], Progress], dict[str, Any]]
TASK_COMMAND = ("tasks", "run")  # what a task kind's process runs, with its folder


@dataclass(frozen=True)
class ProcessKind:
    name: str
    label: str  # what the pages and `tasks list` call it
    runner: str  # "module:function" run by the task process; "" for a kind with a command of its own
    result: str  # what the process leaves behind (result.json of a task, or the files it writes)
    slot: bool = True  # waits for a device slot (histo_core.slots) like a trainer; False: it starts runs itself
    command: tuple[str, ...] = TASK_COMMAND  # `python -m histo_core *command FOLDER`
    identity: tuple[str, ...] = ()  # the params that make two tasks the same work (default: all of them)

    @property
    def is_task(self) -> bool:
        return self.command == TASK_COMMAND

    def run_function(self) -> Runner:
        """The function the task process calls (imported here, in that process only)."""
        module, _, name = self.runner.partition(":")
        return getattr(importlib.import_module(module), name)


KINDS: dict[str, ProcessKind] = {}


def register_kind(kind: ProcessKind) -> ProcessKind:
    if kind.is_task and ":" not in kind.runner:
        raise ValueError(f"process kind {kind.name!r}: runner must be 'module:function', got {kind.runner!r}")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: object) -> ProcessKind:
    """The declaration of task kind `name`; one clear line for an unknown one (or the training run, which is no
    task: it starts with jobs.submit)."""
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None or not kind.is_task:
        raise HistoError(f"unknown task kind {name!r}; one of {', '.join(k for k, v in KINDS.items() if v.is_task)}")
    return kind


TRAINING = register_kind(
    ProcessKind(
        "train",
        "training run",
        "",
        "runs/<id>/: checkpoints, metrics.jsonl, results.json, predictions (runs.RunDir)",
        command=("train", "--run-dir"),
    )
)
for _kind in (
    ProcessKind(
        "lr-find", "learning-rate finder", "histo_core.lr_find:task_main", "result.json: lrs, losses, suggestion"
    ),
    ProcessKind("estimate", "time estimate", "histo_core.estimate:task_main", "result.json: the estimate"),
    ProcessKind(
        "label-errors",
        "label-error search",
        "histo_core.label_errors:task_main",
        "label_errors.npz in the run; result.json: its summary",
    ),
    ProcessKind("slide", "slide analysis", "histo_core.slides:task_main", "the analysis folder under <runs>/.slides/"),
    ProcessKind(
        "study",
        "study driver",
        "histo_core.study:task_main",
        "the study's runs (runs.json); result.json: the results table",
        slot=False,
    ),
    ProcessKind(
        "embed",
        "feature map",
        "histo_core.embeddings:task_main",
        "the embeddings folder (EmbedTarget.out_dir); result.json: counts",
        slot=False,
    ),
    ProcessKind(
        "explain-quality",
        "CAM faithfulness",
        "histo_core.faithfulness:task_main",
        "faithfulness.json in the run; result.json: the method table",
        slot=False,
    ),
    ProcessKind(
        "evaluate",
        "evaluation",
        "histo_core.evaluation:task_main",
        "<name>.json in the model's evaluations folder; result.json: the report",
        slot=False,
        identity=("save_to", "name"),
    ),
):
    register_kind(_kind)
