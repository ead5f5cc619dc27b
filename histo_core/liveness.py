"""Is a run (or page task) really alive? Its status with a dead process noticed, and its log.

    status = refresh_status(run)   # a queued/running run whose process is gone is marked failed (on disk)
    log_tail(run); last_log_line(run); wait(run, timeout_s)

The run directory is the only contract: the trainer writes status.json (pid, start time, heartbeat); these
readers check the pid against /proc and the heartbeat against the clock. Nothing is kept in memory.
"""

from __future__ import annotations

import os
import socket
import time

from histo_core.procs import pid_alive, proc_file, proc_start_time
from histo_core.runs import FINAL_STATES, HEARTBEAT_STALE_S, RunDir, RunStatus

ACTIVE_STATES = ("queued", "running")
STALE = "stale"  # shown for a run on another host whose heartbeat stopped; never written to disk


def _is_run_process(pid: int, run: RunDir, status: RunStatus) -> bool:
    """Is live process `pid` really this run's trainer (and not a process that reused its pid)?
    The recorded start time must match; a run recorded before start times were kept falls back to the
    run id in the command line."""
    started = proc_start_time(pid)
    if status.pid_start is not None and started is not None:
        return int(status.pid_start) == started
    cmdline = proc_file(pid, "cmdline")
    if cmdline is None:  # no /proc (not Linux): trust the pid
        return True
    return run.id.encode() in cmdline


def _heartbeat_stale(status: RunStatus, now: float | None = None) -> bool:
    beat = status.heartbeat or status.started_at or status.created_at
    return beat is None or (now or time.time()) - beat > HEARTBEAT_STALE_S


def process_alive(run: RunDir, status: RunStatus | None = None) -> bool:
    status = status or run.status()
    pid = status.pid
    return pid is not None and pid_alive(pid) and _is_run_process(int(pid), run, status)


def refresh_status(run: RunDir) -> RunStatus:
    """The run's status, with a queued/running run whose process is gone marked failed (written to disk).

    Cheap enough to call on every page refresh: a few small file reads. A run on another host cannot be
    checked by pid; when its heartbeat is older than HEARTBEAT_STALE_S it is reported as "stale" (not written).
    """
    status = run.status()
    if status.state not in ACTIVE_STATES:
        return status
    if status.host and status.host != socket.gethostname():
        if _heartbeat_stale(status):
            status.state = STALE
        return status
    if status.pid is None:
        # prepare_run wrote "queued" and submit is about to record the pid; give it a moment.
        if time.time() - (status.created_at or 0) > HEARTBEAT_STALE_S:
            return _mark_failed(run, status, "the training process was never started — resume to start it")
        return status
    if process_alive(run, status):
        return status
    fresh = run.status()  # the trainer may have written its final state just before it exited
    if fresh.state not in ACTIVE_STATES:
        return fresh
    if run.cancel_requested():  # asked to stop and stopped, just not cleanly: that is still a cancel
        fresh.state, fresh.finished_at, fresh.eta_s = "cancelled", time.time(), None
        fresh.error = f"cancelled; the process ended before it could save ({_checkpoint_note(run)})"
        _write_if_possible(run, fresh)
        return fresh
    return _mark_failed(run, fresh, _unexpected_end_message(run, fresh))


def _checkpoint_note(run: RunDir) -> str:
    if not run.last_ckpt.exists():
        return "no checkpoint yet"
    epochs = len(run.metrics())
    return f"last checkpoint: epoch {epochs}" if epochs else "last checkpoint: before the first epoch ended"


def _unexpected_end_message(run: RunDir, status: RunStatus) -> str:
    where = _checkpoint_note(run)
    advice = "resume to continue" if run.last_ckpt.exists() else "resume to start again from scratch"
    msg = f"training process {status.pid} ended unexpectedly (killed or crashed); {where} — {advice}"
    last = last_log_line(run)
    return f"{msg}. Log: {last}" if last else msg


def _mark_failed(run: RunDir, status: RunStatus, error: str) -> RunStatus:
    status.state = "failed"
    status.error = error
    status.finished_at = time.time()
    status.eta_s = None
    _write_if_possible(run, status)
    return status


def _write_if_possible(run: RunDir, status: RunStatus) -> None:
    """Record a status found by a reader; on a read-only runs directory it is shown, not written."""
    try:
        run.write_status(status)
    except OSError:
        pass


def log_tail(run: RunDir, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last `lines` lines of log.txt (reads at most `max_bytes` from its end)."""
    try:
        with open(run.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    return "\n".join(text.splitlines()[-lines:])


def last_log_line(run: RunDir) -> str:
    """The last non-empty log line that is not our own start banner, trimmed for a one-line message."""
    for line in reversed(log_tail(run, 20).splitlines()):
        line = line.strip()
        if line and not line.startswith("==="):
            return line[:200]
    return ""


def wait(run: RunDir, timeout_s: float, states: tuple[str, ...] = FINAL_STATES, poll_s: float = 0.25) -> RunStatus:
    """Poll until the run reaches one of `states` (refreshing liveness); raises TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = refresh_status(run)
        if status.state in states:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run.id}: still {status.state} after {timeout_s:.0f} s")
        time.sleep(poll_s)
