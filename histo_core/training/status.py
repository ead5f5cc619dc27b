"""What a training process tells the world while it runs: the run's status.json (with a heartbeat), the cancel
request it obeys, and one-line error messages for the status and the log."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time
from typing import Any

from histo_core.errors import HistoError
from histo_core.procs import proc_start_time
from histo_core.runs import RunDir

HEARTBEAT_S = 3.0


class StatusWriter:
    """The run's status, kept in memory and written atomically; a daemon thread refreshes the heartbeat
    every few seconds, so even one slow batch (ResNet-50 on CPU) never looks like a dead process.
    Only rank 0 writes (`enabled`)."""

    def __init__(self, run: RunDir, enabled: bool):
        self.run, self.enabled = run, enabled
        self.status = run.status()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, **changes: Any) -> None:
        if not self.enabled:
            return
        with self.lock:
            for k, v in changes.items():
                setattr(self.status, k, v)
            self.status.heartbeat = time.time()
            self.run.write_status(self.status)

    def start_heartbeat(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.update()
            except OSError:
                pass  # a full disk is reported by the main thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class RunFolderGone(Exception):
    """The run folder disappeared while training: the trainer stops and writes nothing."""


class CancelFlag:
    """Set by SIGTERM/SIGINT or by the run's `cancel` file; checked at batch boundaries."""

    def __init__(self, run: RunDir):
        self.run = run
        self.signalled = False
        self._last_check = 0.0
        self._file = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signalled:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the batch to end
        self.signalled = True

    def requested(self) -> bool:
        """Checked at every batch (and while queued); raises RunFolderGone when the run folder was deleted."""
        now = time.monotonic()
        if now - self._last_check > 0.25:
            self._last_check = now
            if not self.run.path.is_dir():
                raise RunFolderGone(str(self.run.path))
            self._file = self._file or self.run.cancel_requested()
        return self.signalled or self._file


def own_start_time() -> int | None:
    """This process's start time as `jobs.proc_start_time` reads it (with the pid, it names the process)."""
    return proc_start_time(os.getpid())


def say(text: str, rank: int = 0) -> None:
    """A progress line on stderr, from rank 0 only."""
    if rank == 0:
        print(text, file=sys.stderr, flush=True)


def append_log(run: RunDir, text: str) -> None:
    try:
        with open(run.log_path, "a", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
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
