"""Concurrency limit for training runs: one OS file lock per slot and device.

Every run's process is started at once; it waits (state `queued`) until it holds one of the
`max_concurrent(device)` slot locks under <runs>/.slots/, then trains. The OS releases a dead process's
lock, so a killed run never blocks the queue, and no scheduler daemon is needed.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from histo_core import paths


def max_concurrent(device: str) -> int:
    """$HISTO_MAX_RUNS_<DEVICE> (e.g. HISTO_MAX_RUNS_CPU=2), default 1 per device: two CPU runs on 2 cores only
    slow each other down."""
    from histo_core.limits import env_int

    return env_int(f"HISTO_MAX_RUNS_{device.upper()}", 1)


@contextmanager
def device_slot(
    device: str,
    *,
    runs_root: str | os.PathLike | None = None,
    on_wait: Callable[[], None] | None = None,
    poll_s: float = 1.0,
) -> Iterator[int]:
    """Block until a slot for `device` is free; yields the slot number. `on_wait` runs at every poll
    (the trainer uses it for its heartbeat and to notice a cancel while queued)."""
    root = paths.runs_dir(runs_root) / ".slots"
    root.mkdir(parents=True, exist_ok=True)
    n = max_concurrent(device)
    while True:
        for i in range(n):
            fh = open(root / f"{device}-{i}.lock", "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                yield i
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        if on_wait is not None:
            on_wait()
        time.sleep(poll_s)
