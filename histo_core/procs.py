"""Operating-system processes: start a detached `python -m histo_core ...` child, and tell whether a pid is alive.

Every background process (training runs and tasks of every other kind, histo_core.kinds) is started by
`spawn_detached`: in its own session, so it outlives the Streamlit server, a browser refresh or an app restart,
and reaped by a daemon thread, so it never lingers as a zombie in a long-lived server. Nothing is kept in memory
here; each caller records the pid (and `proc_start_time`) in its own status file, and `spawn_detached` also
registers every process in `<runs dir>/.processes/` so that the queue limit counts every kind
(`live_registered`).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from histo_core import paths, runtime
from histo_core.fsutil import read_json, write_json_atomic


def histo_command(*args: str) -> list[str]:
    """`python -m histo_core *args` with this interpreter."""
    return [sys.executable, "-m", "histo_core", *args]


def child_env() -> dict[str, str]:
    """The environment of a child process: ours (so it sees the same HISTO_* locations: runs, data, weights, slot
    limits), unbuffered, with the thread settings of histo_core/runtime.py. The child finds histo_core as the
    installed package (`pip install -e .`) or, without an install, from its working directory, the project root."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")  # log.txt shows progress lines as they happen
    # OpenMP spin-waiting made a 2-thread step 5x slower when the app or another run shares the cores
    # (benchmarks/RESULTS.md); passive waiting costs nothing on an idle machine. Threads: this process's cores
    # shared by the training slots (histo_core/runtime.py; the child's __main__ applies the same rule).
    return runtime.thread_env(env)


@contextmanager
def one_start(lock_path: str | os.PathLike) -> Iterator[None]:
    """Hold an OS file lock on `lock_path` from the check "is it already running?" to the record of the process
    just started: two callers (the two clicks of a double click, two browser tabs, two app servers sharing a runs
    folder) then start one process, and the second sees the first's record. The OS drops the lock of a killed
    holder, so a crash never blocks a later start."""
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def spawn_detached(
    cmd: list[str],
    stdout: IO[bytes],
    stderr: IO[bytes] | int = subprocess.STDOUT,
    runs_root: str | os.PathLike | None = None,
) -> int:
    """Start `cmd` in its own session from the project root, output to the given open files; returns its pid,
    registered under the runs directory `runs_root` (see `live_registered`). Raises OSError when it cannot
    start."""
    proc = subprocess.Popen(
        cmd,
        cwd=paths.PROJECT_ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    register_process(proc.pid, cmd, runs_root)
    return proc.pid


def _registry(runs_root: str | os.PathLike | None) -> Path:
    return paths.runs_dir(runs_root) / ".processes"


def register_process(pid: int, cmd: list[str], runs_root: str | os.PathLike | None = None) -> None:
    """Record a background process (pid, start time, command) in the runs directory's registry."""

    folder = _registry(runs_root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / f"{pid}.json", {"pid": pid, "pid_start": proc_start_time(pid), "command": cmd[1:]})
    except OSError:
        pass  # a read-only runs directory starts nothing anyway; the process's own status file still names it


def live_registered(runs_root: str | os.PathLike | None = None) -> set[int]:
    """The pids of registered background processes that are still alive (the same process: its start time
    matches); the entries of ended ones are removed."""

    folder = _registry(runs_root)
    alive: set[int] = set()
    for entry in folder.glob("*.json") if folder.is_dir() else []:
        doc = read_json(entry)
        pid = doc.get("pid") if isinstance(doc, dict) else None
        if isinstance(pid, int) and pid_alive(pid) and doc.get("pid_start") in (None, proc_start_time(pid)):
            alive.add(pid)
        else:
            entry.unlink(missing_ok=True)
    return alive


def start_lock(runs_root: str | os.PathLike | None = None):
    """The lock a page holds from "is it already started?" to the start (`launch.start_once`)."""
    folder = _registry(runs_root)
    folder.mkdir(parents=True, exist_ok=True)
    return one_start(folder / ".start.lock")


def queue_lock(runs_root: str | os.PathLike | None = None):
    """The one lock under which a runs directory's queue is counted and a process started (`launch.queue_room`)."""
    folder = _registry(runs_root)
    folder.mkdir(parents=True, exist_ok=True)
    return one_start(folder / ".lock")


def proc_file(pid: int, name: str) -> bytes | None:
    """/proc/<pid>/<name>, or None (no such process, or no /proc)."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


def pid_alive(pid: int | None) -> bool:
    """True while process `pid` exists and is not a zombie (a zombie has finished; it only awaits reaping)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    stat = proc_file(pid, "stat")
    if stat is not None:
        # /proc/<pid>/stat: "pid (comm) S ..."; comm may contain spaces or parentheses, so split after the last ')'
        state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
        if state in (b"Z", b"X"):
            return False
    return True


def proc_start_time(pid: int | None) -> int | None:
    """Start time of process `pid` in clock ticks since boot (/proc/<pid>/stat field 22); None without /proc.
    A pid reused by another process has another start time."""
    stat = proc_file(int(pid), "stat") if pid else None
    if stat is None:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # fields 3.. (comm may hold spaces and parentheses)
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None


def process_age_s() -> float:
    """Seconds since this process started (its start time in /proc), 0 where unknown."""
    try:
        start_ticks = proc_start_time(os.getpid())
        boot = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0
    if start_ticks is None:
        return 0.0
    return max(0.0, time.time() - (boot + start_ticks / os.sysconf("SC_CLK_TCK")))


def log_banner(log: IO[bytes], cmd: list[str]) -> None:
    """The "=== <time> <command>" line a log gets before each process start (readers skip it as not output)."""
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd[1:])}\n".encode())
    log.flush()
