"""Concurrency limit for training runs: one OS file lock per slot and device.

Every run's process is started at once; it waits (state `queued`) until it holds one of the
`max_concurrent(device)` slot locks under <runs>/.slots/, then trains. CUDA slot i trains on GPU
`gpu_of_slot(i)` (one slot per visible GPU by default). The OS releases a dead process's
lock, so a killed run never blocks the queue, and no scheduler daemon is needed.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from histo_core import paths
from histo_core.limits import env_int


def gpu_count() -> int:
    """GPUs this process may use: torch's count, which honours CUDA_VISIBLE_DEVICES (0 without CUDA)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def max_concurrent(device: str) -> int:
    """$HISTO_MAX_RUNS_<DEVICE> (e.g. HISTO_MAX_RUNS_CPU=2). Default: one CUDA slot per visible GPU; one CPU slot
    (two CPU runs on 2 cores only slow each other down)."""

    name = f"HISTO_MAX_RUNS_{device.upper()}"
    if device == "cuda" and not os.environ.get(name, "").strip():
        return max(1, gpu_count())
    return env_int(name, 1)


def gpu_of_slot(slot: int) -> int:
    """The GPU (torch's `cuda:<index>`, counted among the visible ones) that CUDA slot `slot` trains on: slots go
    round the GPUs, so with HISTO_MAX_RUNS_CUDA above the GPU count the extra runs share cards evenly."""
    return slot % max(1, gpu_count())


def runs_per_gpu() -> int:
    """At most how many CUDA slots share one GPU (1 by default): each run sizes its GPU memory for that share."""
    n, gpus = max_concurrent("cuda"), max(1, gpu_count())
    return -(-n // gpus)


def physical_gpu(index: int) -> str:
    """GPU `index` as the machine numbers it: its entry of CUDA_VISIBLE_DEVICES where that is set (nvidia-smi's
    number or UUID), else the index itself. For logs: cuda:0 of a process that sees "2,3" is the machine's GPU 2."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index] if index < len(visible) else str(index)


@contextmanager
def device_slot(
    device: str,
    *,
    runs_root: str | os.PathLike | None = None,
    on_wait: Callable[[], None] | None = None,
    poll_s: float = 1.0,
    gpu: int | None = None,
) -> Iterator[int]:
    """Block until a slot for `device` is free; yields the slot number. `on_wait` runs at every poll
    (the trainer uses it for its heartbeat and to notice a cancel while queued). With `gpu`, only the CUDA slots
    of that GPU (`gpu_of_slot`) are taken: a torchrun rank queues for the card it was placed on."""
    root = paths.runs_dir(runs_root) / ".slots"
    root.mkdir(parents=True, exist_ok=True)
    n = max_concurrent(device)
    candidates = [i for i in range(n) if gpu is None or gpu_of_slot(i) == gpu] or [gpu or 0]
    while True:
        for i in candidates:
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
