"""Process set-up that must happen before torch loads: CPU thread count and OpenMP wait policy.

OpenMP (libgomp, used by torch and by inductor's generated code) reads its wait policy and OMP_NUM_THREADS once,
when the library loads, so every training and inference process calls `configure_process()` before its first
`import torch`: `python -m histo_core` (histo_core/__main__.py, which torchrun and the app's job launcher also
run) and the Streamlit app (app.py). This module must not import torch (a test checks it).

- GOMP_SPINCOUNT=3000: an idle OpenMP thread spins a few microseconds for the next parallel region, then
  sleeps. libgomp's default (300,000 spins per wait) made a 2-thread training step several times slower as soon
  as one CPU-bound process ran beside it; OMP_WAIT_POLICY=PASSIVE (no spinning, used until 2026-12-03) avoids
  that but pays a thread wake-up per operator: the default CLI training ran at half its idle-machine speed. The
  short spin keeps both: 1.9x passive's throughput on an idle machine, 1.06x with one CPU-bound process beside
  it (benchmarks/RESULTS.md, "Busy machines"). A policy the user set (OMP_WAIT_POLICY or GOMP_SPINCOUNT) is kept.
- Threads: the cores this process may run on (os.sched_getaffinity: taskset, cgroups cpusets, Slurm's
  --cpus-per-task) divided by the training processes that share them: the CPU training slots
  ($HISTO_MAX_RUNS_CPU, histo_core/slots.py) or torchrun's processes per node ($LOCAL_WORLD_SIZE).

- glibc's malloc: a fixed mmap threshold (MALLOC_MMAP_THRESHOLD), so that tensors of 8 MB or more are
  always mapped and handed back to the system when freed. By default glibc raises the threshold to the size of the
  largest block freed so far (up to 32 MB): after the first batch every activation tensor came from the heap, and
  the heap kept a few hundred MB of freed, fragmented memory (benchmarks/RESULTS.md, "Peak memory training").
  Not lower than 8 MB: a mapped block is zero-filled page by page on first touch every time, and at 1 MB the
  page faults of a 28 px batch's 1-4 MB activations cost about a fifth of a simplecnn training step; at 96 px the
  large activations (12-50 MB a batch) are still mapped and returned. The trim threshold (32 MB of free memory
  kept at the top of the heap) is for the same reason: at 4 MB every step gave its 4 MB activations back and
  faulted them in again (simplecnn at 28 px: 27.5 -> 21.5 ms a step, glibc's own defaults 24-26 ms). A trainer
  on tiles of at most 32 px raises both (32 MB / 64 MB, `tune_malloc(tile_px=...)`): its activations are small
  enough for the heap to keep (resnet18 at 28 px has 25 MB ones).

Values the user set in the environment are kept (except torchrun's blanket OMP_NUM_THREADS=1); `--threads N`
(TrainConfig.threads) overrides the thread count.
"""

from __future__ import annotations

import os

from histo_core.errors import ConfigError


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _local_world(env) -> int:
    v = env.get("LOCAL_WORLD_SIZE", "")
    return int(v) if v.isdigit() else 0


def processes_sharing_cores(env=None) -> int:
    """How many of our training processes share this process's cores: torchrun's processes on this node, else the
    number of concurrent CPU training slots ($HISTO_MAX_RUNS_CPU, default 1)."""
    env = os.environ if env is None else env
    if _local_world(env) >= 1:
        return _local_world(env)
    try:
        return max(1, int(env.get("HISTO_MAX_RUNS_CPU", "1")))
    except ValueError:
        return 1


def default_threads(env=None) -> int:
    """Threads for torch when `--threads` is 0 (auto): $OMP_NUM_THREADS if the user set it, else the available
    cores divided by the processes sharing them, at least 1. Under torchrun ($LOCAL_WORLD_SIZE set) the share is
    always computed: torchrun sets OMP_NUM_THREADS=1 for every process whatever the cores."""
    env = os.environ if env is None else env
    given = env.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0 and not _local_world(env):
        return int(given)
    return max(1, available_cores() // processes_sharing_cores(env))


SPIN_COUNT = "3000"  # GOMP_SPINCOUNT: how long an idle OpenMP thread spins before it sleeps (see the module doc)


def set_wait_policy(env) -> None:
    """Put the OpenMP wait policy in `env` (a dict or os.environ): GOMP_SPINCOUNT=SPIN_COUNT, unless the user
    set OMP_WAIT_POLICY or GOMP_SPINCOUNT."""
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["GOMP_SPINCOUNT"] = SPIN_COUNT


def thread_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: a copy of os.environ) with the OpenMP wait policy (`set_wait_policy`) and OMP_NUM_THREADS /
    MKL_NUM_THREADS (`default_threads`) filled in."""
    env = dict(os.environ if env is None else env)
    set_wait_policy(env)
    threads = str(default_threads(env))
    env["OMP_NUM_THREADS"] = threads
    if _local_world(env) or "MKL_NUM_THREADS" not in env:
        env["MKL_NUM_THREADS"] = threads
    return env


MMAP_THRESHOLD = 8 << 20  # bytes: allocations from this size on are mapped, and unmapped when freed
TRIM_THRESHOLD = 32 << 20  # bytes of free memory at the top of the heap handed back to the system
# Training on tiles of at most SMALL_TILE_PX: a batch's activations are at most a few tens of MB and recur every
# step, so the heap keeps them (glibc's largest mmap threshold) instead of faulting them in again each step
# (resnet18 at 28 px: 25 MB activations; RESULTS.md, "Speed II").
SMALL_TILE_PX = 32
SMALL_TILE_THRESHOLDS = (32 << 20, 64 << 20)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def tune_malloc(env=None, tile_px: int | None = None) -> bool:
    """Fix glibc malloc's mmap and trim thresholds (see the module doc; `tile_px`: the size of the tiles a training
    process trains on, once known); True when applied. Skipped when the user set MALLOC_MMAP_THRESHOLD_ /
    MALLOC_TRIM_THRESHOLD_ or glibc.malloc tunables, and where there is no glibc."""
    env = os.environ if env is None else env
    if any(k in env for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) or "glibc.malloc" in env.get(
        "GLIBC_TUNABLES", ""
    ):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt does nothing)
    except (OSError, AttributeError):
        return False
    small = tile_px is not None and tile_px <= SMALL_TILE_PX
    mmap_threshold, trim_threshold = SMALL_TILE_THRESHOLDS if small else (MMAP_THRESHOLD, TRIM_THRESHOLD)
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def configure_process() -> int:
    """Apply `thread_env` to os.environ and `tune_malloc`; call before torch is imported (once torch is loaded the
    wait policy no longer changes; the thread count still does, through torch.set_num_threads). Returns the
    thread count."""
    os.environ.update(thread_env())
    tune_malloc()
    return int(os.environ["OMP_NUM_THREADS"])


def resolve_device(name: str) -> str:
    """The one device resolver: 'auto' -> 'cuda' when a GPU is usable, else 'cpu'; 'cuda' without a GPU is a
    ConfigError naming the fix; 'cpu' stays 'cpu'. (torch is imported here, on the first call, not at import.)"""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False); "
            "use --device cpu or auto"
        )
    return name


def exit_without_teardown(code: int) -> None:
    """End the process with `code` the way the interpreter would, less its teardown of modules and native
    libraries: wait for non-daemon threads, run the atexit handlers (logging, temporary files, weakref
    finalizers), flush stdout and stderr, then os._exit. Python's finalization of torch, scipy and scikit-learn
    (module dicts, C++ static destructors) faults in about 70 MB of code and data pages that the run itself never
    needed, which made the exit the moment of a training process's peak RSS (benchmarks/RESULTS.md, "Peak memory
    training"); it also takes a second or more of a short command's wall time. Used by `python -m histo_core`."""
    import atexit
    import sys
    import threading

    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, or a broken pipe: nothing more to deliver
            pass
    os._exit(code)
