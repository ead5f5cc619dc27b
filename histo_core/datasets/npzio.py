"""Reading and writing `.npz` files so that large arrays are memory-mapped, not loaded.

`np.load(..., mmap_mode="r")` ignores `mmap_mode` for `.npz` archives, so a 1 GB MedMNIST-224 split (or
our own decoded-tile cache) would be read into memory in full. A member stored uncompressed (ZIP_STORED,
what `np.savez` writes) is a plain `.npy` at a fixed offset inside the zip file, so we map it directly.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np

from histo_core.errors import DatasetError
from histo_core.fsutil import atomic_file

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


def check_declared_sizes(zf: zipfile.ZipFile, path: Path, max_bytes: int | None = None) -> None:
    """Refuse, before any array is allocated or decompressed, an npz whose members claim more than they can
    hold: a header declaring a shape larger than the member's bytes, a member expanding beyond
    HISTO_MAX_DATASET_BYTES in all, or one expanding more than MAX_COMPRESSION_RATIO times (a zip bomb).
    Raises DatasetError naming the file and the limit."""
    from histo_core import limits

    limit = limits.max_dataset_bytes() if max_bytes is None else max_bytes
    total = 0
    for zi in zf.infolist():
        if not zi.filename.endswith(".npy"):
            continue
        total += zi.file_size
        small = zi.file_size <= limits.SMALL_ENOUGH_BYTES
        if (
            zi.compress_type != zipfile.ZIP_STORED
            and not small
            and zi.file_size > limits.MAX_COMPRESSION_RATIO * max(zi.compress_size, 1)
        ):
            raise DatasetError(
                f"{path}: member {zi.filename} expands {zi.file_size / max(zi.compress_size, 1):.0f}x to "
                f"{limits.human_bytes(zi.file_size)}, beyond the limit of {limits.MAX_COMPRESSION_RATIO}x for "
                f"members over {limits.human_bytes(limits.SMALL_ENOUGH_BYTES)} (not a real image array)"
            )
        if total > limit:
            raise DatasetError(
                f"{path}: its arrays expand to more than {limits.human_bytes(limit)} (HISTO_MAX_DATASET_BYTES); "
                "raise that limit if the file is genuine"
            )
        try:
            with zf.open(zi) as fh:
                shape, _, dtype = _read_npy_header(fh)
                header_len = fh.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{path}: member {zi.filename} is not a readable array ({exc})") from None
        declared = int(np.prod([int(n) for n in shape], dtype=object)) * dtype.itemsize
        if declared > limit:
            raise DatasetError(
                f"{path}: member {zi.filename} declares shape {tuple(shape)} ({limits.human_bytes(declared)}), "
                f"more than the limit of {limits.human_bytes(limit)} (HISTO_MAX_DATASET_BYTES)"
            )
        if declared > zi.file_size - header_len:
            raise DatasetError(
                f"{path}: member {zi.filename} declares shape {tuple(shape)} ({limits.human_bytes(declared)}) "
                f"but holds only {limits.human_bytes(max(zi.file_size - header_len, 0))}: the file is damaged"
            )


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
    """Uncompressed npz (so `load_member` can map it), written atomically (histo_core.fsutil.atomic_file)."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as fh:
        np.savez(fh, **cast(dict[str, Any], arrays))  # numpy's stubs read ** as its allow_pickle keyword
