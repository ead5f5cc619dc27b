"""Is a run (or page task) really alive? Its status with a dead process noticed, cancelling it, and its log.

    status = refresh_status(run)   # a queued/running run whose process is gone is marked failed (on disk)
    cancel(run)                    # the cancel file + SIGTERM (runs and tasks alike)
    log_tail(run); last_log_line(run); wait(run, timeout_s)

The run directory is the only contract: the trainer writes status.json (pid, start time, heartbeat); these
readers check the pid against /proc and the heartbeat against the clock. Nothing is kept in memory.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time

from histo_core.errors import HistoError
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


def refresh_status(folder: RunDir) -> RunStatus:
    """The status of a run or task folder, with a queued/running one whose process is gone marked failed (or
    cancelled, when a cancel was asked for), written to disk; the folder says how (`RunDir.ended_message`).

    Cheap enough to call on every page refresh: a few small file reads. A process on another host cannot be
    checked by pid; when its heartbeat is older than HEARTBEAT_STALE_S it is reported as "stale" (not written).
    """
    status = folder.status()
    if status.state not in ACTIVE_STATES:
        return status
    if status.host and status.host != socket.gethostname():
        if _heartbeat_stale(status):
            status.state = STALE
        return status
    if status.pid is None:
        # the starter wrote "queued" and is about to record the pid; give it a moment.
        if time.time() - (status.created_at or 0) > HEARTBEAT_STALE_S:
            return _end(folder, status, "failed", folder.never_started_message())
        return status
    if process_alive(folder, status):
        return status
    fresh = folder.status()  # the process may have written its final state just before it exited
    if fresh.state not in ACTIVE_STATES:
        return fresh
    if folder.cancel_requested():  # asked to stop and stopped, just not cleanly: that is still a cancel
        return _end(folder, fresh, "cancelled", folder.cancelled_error())
    return _end(folder, fresh, "failed", folder.ended_message(fresh, last_log_line(folder)))


def cancel(folder: RunDir) -> RunStatus:
    """Ask the queued or running process of a run or task folder to stop: the `cancel` file (checked by the
    process at safe points) and SIGTERM, sent only when the pid is still the folder's process. Returns the
    status it had."""
    status = refresh_status(folder)
    if status.state not in ACTIVE_STATES:
        raise HistoError(
            f"{folder.id}: the {folder.noun} is {status.state}; only a queued or running {folder.noun} can be cancelled"
        )
    try:
        folder.cancel_path.touch()
    except OSError as exc:
        raise HistoError(f"{folder.id}: cannot write to the {folder.noun} folder ({exc.strerror or exc})") from None
    if status.pid and process_alive(folder, status):
        try:
            os.kill(int(status.pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
    return status


def _end(folder: RunDir, status: RunStatus, state: str, error: str | None) -> RunStatus:
    status.state, status.error, status.finished_at, status.eta_s = state, error, time.time(), None
    _write_if_possible(folder, status)
    return status


def _write_if_possible(run: RunDir, status: RunStatus) -> None:
    """Record a status found by a reader; on a read-only runs directory it is shown, not written."""
    try:
        run.write_status(status)
    except OSError:
        pass


def error_line(exc: BaseException) -> str:
    """One line for a failed run or task: the HistoError's message, a full or read-only disk in words, else the
    exception's type and first line."""
    if isinstance(exc, HistoError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing the run ({exc.filename or ''}): free space and resume the run"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return f"cannot write the run directory ({exc.filename or ''}: {exc.strerror}); check its permissions"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]


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
