"""Training runs: submit, cancel, resume and delete one. A run is the `train` process kind (histo_core.kinds):
one detached `python -m histo_core train --run-dir DIR` per run, controlled through its run directory.

    run = submit(config)          # prepare the run dir, start its process (launch.start_process)
    cancel(run); resume(run); delete(run)

Its liveness is liveness.refresh_status, as for every kind; nothing here keeps state in memory. The concurrency
limit per device is the trainer's own slot lock (histo_core/slots.py): every submitted process starts at once and
stays "queued" until a slot frees.
"""

from __future__ import annotations

import os
import shutil
import time

from histo_core import liveness
from histo_core.errors import HistoError
from histo_core.kinds import TRAINING
from histo_core.launch import queue_room, start_process
from histo_core.liveness import ACTIVE_STATES, STALE, process_alive, refresh_status
from histo_core.runs import UNREADABLE, RunDir, RunStatus


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


def _start_training_process(run: RunDir, resume: bool) -> int:
    return start_process(run, TRAINING, *(["--resume"] if resume else []))


def cancel(run: RunDir) -> RunStatus:
    """Ask a queued or running run to stop. A running trainer stops at a safe point, saves last.pt and writes
    "cancelled" itself; a queued run is marked cancelled at once."""
    if (status := run.status()).state == UNREADABLE:
        raise HistoError(unreadable_message(run, status, "cancelled"))
    status = liveness.cancel(run)
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

    def resumable() -> None:
        status = refresh_status(run)
        if status.state == UNREADABLE:  # never resumed with invented settings
            raise HistoError(unreadable_message(run, status, "resumed"))
        if status.state in ACTIVE_STATES:
            raise HistoError(f"{run.id}: the run is {status.state}; cancel it before resuming")
        if status.state == STALE:
            raise HistoError(f"{run.id}: the run is still marked running on {status.host}; resume it there")
        if status.state == "completed":
            raise HistoError(f"{run.id}: the run has completed; start a new run to train longer")

    with queue_room(run.path.parent, check=resumable):
        status = run.status()
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
