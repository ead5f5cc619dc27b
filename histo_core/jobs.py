"""Background training runs: one detached OS process per run, controlled through its run directory.

    run = submit(config)          # prepare the run dir, start `python -m histo_core train --run-dir DIR`
    refresh_status(run)           # notices a process that died without saying so (killed, OOM, crash)
    cancel(run); resume(run); delete(run)

The process is started in its own session (histo_core.procs), so it outlives the Streamlit server, a browser
refresh or an app restart; nothing here keeps state in memory. The concurrency limit per device is the
trainer's own slot lock (histo_core/slots.py): every submitted process starts at once and stays "queued" until
a slot frees.

This module is also the one import for callers (pages, CLI) of the neighbouring modules it re-exports:
liveness (refresh_status, wait, log_tail), summaries (run_summary, comparison_row) and background (inspection
and evaluation jobs).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from histo_core import paths
from histo_core.background import (
    INSPECTION_KINDS,
    evaluation_command,
    evaluation_jobs,
    job_status,
    start_evaluation,
    start_inspection_job,
    write_job_status,
)
from histo_core.errors import HistoError
from histo_core.liveness import (
    ACTIVE_STATES,
    STALE,
    last_log_line,
    log_tail,
    process_alive,
    refresh_status,
    wait,
)
from histo_core.procs import (
    histo_command,
    live_registered,
    log_banner,
    one_start,
    pid_alive,
    proc_start_time,
    queue_lock,
    spawn_detached,
)
from histo_core.runs import UNREADABLE, RunDir, RunStatus, list_runs, resolve_run
from histo_core.summaries import augmentation_label, best_val, comparison_row, run_summary, summaries

# -- starting processes ------------------------------------------------------------------------------


def submit(config, runs_root: str | os.PathLike | None = None, started_by: str | None = None) -> RunDir:
    """Validate `config`, create its run directory and start training it in a background process.
    `started_by`: the signed-in user, recorded in config.json."""
    from histo_core.training import prepare_run

    with queue_room(runs_root):
        if started_by:
            config.started_by = str(started_by)
        run = prepare_run(config, runs_root=runs_root)
        _start_training_process(run, resume=False)
    return run


def active_runs(runs_root: str | os.PathLike | None = None) -> list[RunDir]:
    """Runs under the runs root whose process is queued or running (liveness refreshed)."""
    return [r for r in list_runs(runs_root) if refresh_status(r).state in ACTIVE_STATES]


def active_processes(runs_root: str | os.PathLike | None = None) -> int:
    """How many background processes of every kind are queued or running in this runs directory: training runs,
    page tasks, evaluations and inspection jobs (each registered when started, procs.live_registered), and runs
    or tasks marked active whose process is not registered (started by hand, or about to start)."""
    from histo_core.tasks import active_tasks, refresh_task

    statuses = [refresh_status(r) for r in active_runs(runs_root)] + [refresh_task(t) for t in active_tasks(runs_root)]
    theirs = {int(s.pid) for s in statuses if s.pid}
    return len(statuses) + len(live_registered(runs_root) - theirs)


@contextmanager
def queue_room(runs_root: str | os.PathLike | None = None) -> Iterator[None]:
    """Start a background process inside this block: refused when HISTO_MAX_QUEUED (default 8) processes of any
    kind are already queued or running in this runs directory (each waiting process holds its memory, about
    900 MB for a trainer). The count and the start happen under one OS file lock, so simultaneous starts (two
    browser tabs, two app servers) never pass the limit together."""
    from histo_core.limits import max_queued
    from histo_core.slots import max_concurrent

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


def _start_training_process(run: RunDir, resume: bool) -> int:
    """Start the trainer detached from us; record its pid at once so a crash before the trainer writes its
    first status is still noticed by refresh_status."""
    cmd = histo_command("train", "--run-dir", str(run.path.resolve()), *(["--resume"] if resume else []))
    try:
        with open(run.log_path, "ab") as log:
            log_banner(log, cmd)
            pid = spawn_detached(cmd, log, runs_root=run.path.parent)
    except OSError as exc:
        run.update_status(state="failed", error=f"could not start the training process: {exc}")
        raise HistoError(f"{run.id}: could not start the training process ({exc})") from None
    # The trainer needs a second or more to import torch before it writes status.json, so this write does
    # not race with it in practice; the trainer records its own pid too.
    run.update_status(
        pid=pid,
        pid_start=proc_start_time(pid),
        host=socket.gethostname(),
        state="queued",
        error=None,
        finished_at=None,
    )
    return pid


# -- control -----------------------------------------------------------------------------------------


def cancel(run: RunDir) -> RunStatus:
    """Ask a queued or running run to stop. A running trainer stops at a safe point, saves last.pt and writes
    "cancelled" itself; a queued run is marked cancelled at once."""
    status = refresh_status(run)
    if status.state == UNREADABLE:
        raise HistoError(unreadable_message(run, status, "cancelled"))
    if status.state not in ACTIVE_STATES:
        raise HistoError(f"{run.id}: the run is {status.state}; only a queued or running run can be cancelled")
    try:
        run.cancel_path.touch()
    except OSError as exc:
        raise HistoError(f"{run.id}: cannot write to the run directory ({exc.strerror or exc})") from None
    if status.pid and process_alive(run, status):
        try:
            os.kill(int(status.pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
    if status.state == "queued":
        status = run.status()
        if status.state == "queued":
            status.state = "cancelled"
            status.finished_at = time.time()
            status.eta_s = None
            run.write_status(status)
    return status


def resume(run: RunDir, batch_size: int | None = None) -> str:
    """Restart a cancelled or failed run in a new background process, from last.pt when there is one; with
    `batch_size` other than the run's (after running out of GPU memory), config.json gets the new one first and
    the saved epoch restarts at its first batch (as `train --resume --batch-size N`).
    Returns a sentence saying what will happen. Two callers at once (a double click on Resume) start one process:
    the second finds the run queued."""
    with one_start(run.path / ".start.lock"):
        status = refresh_status(run)
        if status.state == UNREADABLE:  # never resumed with invented settings
            raise HistoError(unreadable_message(run, status, "resumed"))
        if status.state in ACTIVE_STATES:
            raise HistoError(f"{run.id}: the run is {status.state}; cancel it before resuming")
        if status.state == STALE:
            raise HistoError(f"{run.id}: the run is still marked running on {status.host}; resume it there")
        if status.state == "completed":
            raise HistoError(f"{run.id}: the run has completed; start a new run to train longer")
        with queue_room(run.path.parent):
            resized = ""
            old = int(run.config().get("batch_size") or 0)
            if batch_size is not None and batch_size != old:
                from histo_core.training.run import change_batch_size

                change_batch_size(run, batch_size)  # checked like --batch-size: a bad value changes nothing
                resized = f" with batch size {batch_size} (was {old}; the epoch restarts at its first batch)"
            run.cancel_path.unlink(missing_ok=True)
            from_checkpoint = run.last_ckpt.exists()
            if from_checkpoint:
                note = f"resuming {run.id} from epoch {len(run.metrics())} of {status.epochs or '?'}{resized}"
            else:  # the trainer refuses --resume without last.pt; a fresh start also clears the partial metrics
                note = f"{run.id} has no checkpoint (last.pt): restarting it from scratch"
            run.update_status(state="queued", error=None, finished_at=None, eta_s=None, phase="")
            _start_training_process(run, resume=from_checkpoint)
        return note


def unreadable_message(run: RunDir, status: RunStatus, verb: str) -> str:
    return (
        f"{run.id}: unreadable ({status.error}), so it cannot be {verb}; restore the file, or delete the run "
        f"(python -m histo_core runs delete {run.id})"
    )


def delete(run: RunDir) -> None:
    """Remove a run directory; refused while its process is alive."""
    status = refresh_status(run)
    if status.state in ACTIVE_STATES or status.state == STALE:
        raise HistoError(f"{run.id}: the run is {status.state}; cancel it before deleting it")
    if status.pid and process_alive(run, status):
        raise HistoError(f"{run.id}: its training process {status.pid} is still exiting; try again in a moment")
    try:
        shutil.rmtree(run.path)
    except OSError as exc:
        raise HistoError(f"{run.path}: could not delete the run ({exc.strerror or exc})") from None


__all__ = [
    "ACTIVE_STATES",
    "INSPECTION_KINDS",
    "STALE",
    "active_runs",
    "augmentation_label",
    "best_val",
    "cancel",
    "queue_room",
    "active_processes",
    "comparison_row",
    "delete",
    "evaluation_command",
    "evaluation_jobs",
    "job_status",
    "last_log_line",
    "log_tail",
    "pid_alive",
    "proc_start_time",
    "process_alive",
    "refresh_status",
    "resolve_run",
    "resume",
    "run_summary",
    "start_evaluation",
    "start_inspection_job",
    "submit",
    "summaries",
    "wait",
    "write_job_status",
]
