"""Limits that keep one user's input from taking the machine down, each settable by an environment variable.

    HISTO_MAX_DATASET_BYTES   largest dataset array an npz/.h5.gz may declare or expand to (default 64 GB)
    HISTO_MAX_QUEUED          queued + running background processes per runs directory (default 8)
    HISTO_MAX_RUNS_<DEVICE>   runs training at once per device (histo_core.slots, default 1)

A bad value (`HISTO_MAX_QUEUED=abc`) is a user error naming the variable, never a bare ValueError.
"""

from __future__ import annotations

import os

from histo_core.errors import ConfigError

DEFAULT_MAX_DATASET_BYTES = 64 * 10**9
# A compressed npz member may expand this many times its compressed size, and any member may be this large
# whatever its ratio: real image arrays compress 2-20x; a zip bomb expands ~1000x.
MAX_COMPRESSION_RATIO = 100
SMALL_ENOUGH_BYTES = 256 * 2**20
MAX_CLASSES = 10_000  # integer labels above this are a broken file, not a classification task
DEFAULT_MAX_QUEUED = 8


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """Integer environment variable `name` (>= minimum), `default` when unset; ConfigError when not a number."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None:  # also accept 64e9
        try:
            as_float = float(raw)
            value = int(as_float) if as_float.is_integer() else None
        except (ValueError, OverflowError):
            value = None
    if value is None:
        raise ConfigError(
            f"{name}={raw!r} is not a whole number; set it to e.g. {name}={default} or unset it"
        ) from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}; set it to e.g. {name}={default} or unset it")
    return value


def max_dataset_bytes() -> int:
    return env_int("HISTO_MAX_DATASET_BYTES", DEFAULT_MAX_DATASET_BYTES)


def max_queued() -> int:
    return env_int("HISTO_MAX_QUEUED", DEFAULT_MAX_QUEUED)


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
