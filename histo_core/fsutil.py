"""Atomic file writes: a reader (the UI polling a run) never sees half a file, and a crash never leaves one.
Every file histo_core writes for another process or a later session goes through `atomic_file`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """The one way files are written in histo_core: `with atomic_file(p) as fh: fh.write(...)`.

    Writes go to a temp file in the same folder; when the block ends without an error the file is flushed and
    fsynced, renamed over `path`, and the folder is fsynced so the rename itself survives a crash. On any error
    (or an exception raised in the block to abandon the write) the temp file is removed and `path` is left as
    it was. The folder must exist: a writer never re-creates a missing folder (a deleted run's trainer must not
    bring its folder back). The file gets the usual permissions for the umask (mkstemp's would be 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where the platform cannot (Windows, some
    network file systems)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    with atomic_file(path) as fh:
        write(fh)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def torch_save_atomic(path: Path, obj: Any) -> None:
    """torch.save through `_atomic`. torch reports a failed write as a RuntimeError ("[enforce fail at
    inline_container.cc:...] ... file write failed"): that becomes OSError(ENOSPC) when the disk is full,
    so callers say "disk full" instead of quoting torch."""
    import torch

    try:
        _atomic(path, lambda fh: torch.save(obj, fh))
    except RuntimeError as exc:
        text = str(exc)
        if "inline_container" not in text and "write failed" not in text:
            raise
        if disk_nearly_full(Path(path).parent):
            raise OSError(errno.ENOSPC, "No space left on device (disk full)", str(path)) from None
        raise OSError(
            errno.EIO, f"could not write the file ({text.splitlines()[-1].strip()[:200]})", str(path)
        ) from None


DISK_FULL_BELOW = 64 * 2**20


def disk_nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_BELOW
    except OSError:
        return False


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only be read by setting)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def savez_atomic(path: Path, **arrays: Any) -> None:
    """A compressed npz (use `atomic_file` with np.savez for one that np.load can memory-map)."""
    import numpy as np

    _atomic(path, lambda fh: np.savez_compressed(fh, **arrays))


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
