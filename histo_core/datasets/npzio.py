"""Reading and writing `.npz` files so that large arrays are memory-mapped, not loaded.

`np.load(..., mmap_mode="r")` ignores `mmap_mode` for `.npz` archives, so a 1 GB MedMNIST-224 split (or
our own decoded-tile cache) would be read into memory in full. A member stored uncompressed (ZIP_STORED,
what `np.savez` writes) is a plain `.npy` at a fixed offset inside the zip file, so we map it directly.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

MMAP_THRESHOLD = 64 * 1024 * 1024  # members larger than this are memory-mapped when stored uncompressed


def load_member(zf: zipfile.ZipFile, path: Path, key: str) -> np.ndarray:
    """Array `key` of the open npz `zf` (whose file is `path`): memory-mapped when stored and large."""
    member = f"{key}.npy"
    zi = zf.getinfo(member)
    if zi.compress_type == zipfile.ZIP_STORED and zi.file_size > MMAP_THRESHOLD:
        with zf.open(member) as fh:
            shape, fortran, dtype = _read_npy_header(fh)
            header_len = fh.tell()
        if dtype.hasobject:
            raise ValueError(f"'{key}' holds Python objects; refusing to unpickle")
        # The data starts after the zip local header (30 bytes + name + its own extra field, which can
        # differ from the central directory's) and the npy header.
        with open(path, "rb") as raw:
            raw.seek(zi.header_offset + 26)
            name_len, extra_len = np.frombuffer(raw.read(4), "<u2")
        offset = zi.header_offset + 30 + int(name_len) + int(extra_len) + header_len
        return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran else "C")
    with zf.open(member) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def member_shape(zf: zipfile.ZipFile, key: str) -> tuple[int, ...]:
    """Shape of array `key` from its header only (no data read, even when compressed)."""
    with zf.open(f"{key}.npy") as fh:
        return tuple(int(n) for n in _read_npy_header(fh)[0])


def _read_npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    major, _ = np.lib.format.read_magic(fh)
    if major == 1:
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)  # 2.x and 3.x headers share the layout we need


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Uncompressed npz (so `load_member` can map it), written to a temp file and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
