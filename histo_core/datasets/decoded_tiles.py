"""Decode image files once into a uint8 tile array, cached as an npz so reopening is instant.

Shared by image folders and CSV manifests. Every readable image goes through the one image path
(`histo_core.image_decode`: decode_image -> make_tile), the same as uploads and `predict`: 8-bit RGB or grayscale,
centre square, resized to `size` px. The result (with the list of files that could not
be read) is cached under `<data dir>/cache/tiles/`, keyed by the files' absolute paths, modification
times and byte sizes and by the tile size: touching, adding or removing a file decodes again.

Tile size: `size=None` means min(64, median shorter side of the images): 64 px keeps a 100k-tile set at
1.2 GB and trains quickly, and small tiles are never upscaled. Pass `size` to choose (e.g. 224 for
ImageNet-sized models).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from histo_core import paths
from histo_core.datasets import npzio
from histo_core.datasets.sources import Progress
from histo_core.errors import DatasetError, ImageError

if TYPE_CHECKING:
    from histo_core.datasets.base import TileDataset
from histo_core.image_decode import gray_to_rgb, make_tile, max_image_pixels, read_image_file, shrink_for_display

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DEFAULT_MAX_SIZE = 64
CACHE_VERSION = 3  # bump when decoding changes, so old caches are not reused
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass
class DecodedTiles:
    images: np.ndarray  # (N, size, size, C) uint8, possibly memory-mapped
    kept: np.ndarray  # indices into the input file list of the N decoded images
    skipped: list[str]  # "<file>: <reason>" for each file that could not be decoded
    size: int
    channels: int
    cache_file: Path
    from_cache: bool
    native_px: int = 0  # median shorter side of the source images: what one tile covers, in their pixels


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def decode_image_files(
    files: Sequence[Path],
    *,
    size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    label: str = "tiles",
    progress: Progress | None = None,
) -> DecodedTiles:
    """Decode `files` into (N, size, size, C) uint8 tiles, from the cache when the files are unchanged.

    Unreadable files are left out (listed in `skipped`, their positions missing from `kept`).
    `label` names the source in the cache file name and in messages.
    """
    files = [Path(os.path.abspath(f)) for f in files]  # no resolve(): it costs a syscall per path component
    if size is not None and not 8 <= int(size) <= 1024:
        raise DatasetError(f"{label}: tile size must be between 8 and 1024 px, got {size}")
    cache_file = _cache_file(files, size, data_dir, label)
    cached = _read_cache(cache_file)
    if cached is not None:
        return cached
    decoded = _decode_all(files, size, label, progress)
    npzio.write_npz_atomic(
        cache_file,
        images=decoded.images,
        kept=decoded.kept,
        skipped=np.array(json.dumps(decoded.skipped)),
        size=np.array(decoded.size),
        native=np.array(decoded.native_px),
    )
    _remove_stale_caches(cache_file)
    decoded.cache_file = cache_file
    return _read_cache(cache_file) or decoded  # reread so large sets are served memory-mapped


# -- cache ----------------------------------------------------------------------------------------------


def cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    return paths.data_dir(data_dir) / "cache" / "tiles"


def _cache_file(files: list[Path], size: int | None, data_dir, label: str) -> Path:
    """<slug>-<source hash>-<content hash>.npz: the source hash (which files, which size) finds stale
    versions to delete; the content hash (mtimes, byte sizes) makes any change a cache miss."""
    names = [str(f) for f in files]
    source = hashlib.sha1(json.dumps([CACHE_VERSION, size, names]).encode()).hexdigest()[:10]
    content = hashlib.sha1()
    for name in names:  # one stat per file: ~100k files must still reopen in seconds
        try:
            st = os.stat(name)
            content.update(f"{name}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
        except OSError:
            content.update(f"{name}\0missing\n".encode())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[-40:].strip("_.") or "tiles"
    return cache_dir(data_dir) / f"{slug}-{source}-{content.hexdigest()[:12]}.npz"


def _read_cache(cache_file: Path) -> DecodedTiles | None:
    if not cache_file.exists():
        return None
    try:
        with zipfile.ZipFile(cache_file) as zf:
            images = npzio.load_member(zf, cache_file, "images")
            kept = npzio.load_member(zf, cache_file, "kept")
            skipped = json.loads(str(npzio.load_member(zf, cache_file, "skipped")))
            size = int(npzio.load_member(zf, cache_file, "size"))
            native = int(npzio.load_member(zf, cache_file, "native"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # a damaged cache is rebuilt, not reported
    return DecodedTiles(
        images, np.asarray(kept, np.int64), skipped, size, int(images.shape[3]), cache_file, True, native
    )


def _remove_stale_caches(current: Path) -> None:
    prefix = current.name.rsplit("-", 1)[0] + "-"
    for old in current.parent.glob(prefix + "*.npz"):
        if old != current:
            old.unlink(missing_ok=True)


# -- decoding -------------------------------------------------------------------------------------------


def _decode_all(files: list[Path], size: int | None, label: str, progress: Progress | None) -> DecodedTiles:
    total = len(files)
    headers, skipped = [], []
    limit = max_image_pixels()
    for i, f in enumerate(files):  # pass 1: headers only (fast), to choose the size and the channel count
        try:
            with Image.open(f) as im:
                if im.size[0] * im.size[1] > limit:
                    skipped.append(
                        f"{f.name}: {im.size[0]}x{im.size[1]} px, more than the limit of {limit:,} pixels "
                        "(HISTO_MAX_IMAGE_PIXELS)"
                    )
                    continue
                headers.append((i, im.size, im.mode))
        except Image.DecompressionBombError:  # Pillow's own guard fired first: name ours, the one users set
            skipped.append(f"{f.name}: more pixels than the limit of {limit:,} (HISTO_MAX_IMAGE_PIXELS)")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            skipped.append(f"{f.name}: {_reason(exc)}")
    if not headers:
        raise DatasetError(f"{label}: none of the {total} image files could be read ({'; '.join(skipped[:3])})")
    native = int(np.median([min(wh) for _, wh, _ in headers]))
    if size is None:
        size = min(DEFAULT_MAX_SIZE, native)
    channels = 1 if all(mode in GRAY_MODES for _, _, mode in headers) else 3
    images = np.empty((len(headers), size, size, channels), np.uint8)
    kept: list[int] = []
    for n, (i, _, _) in enumerate(headers):  # pass 2: decode, convert, crop, resize
        try:
            images[len(kept)] = tile_from_file(files[i], size, channels)
            kept.append(i)
        except ImageError as exc:  # truncated/corrupt data, too thin, over the pixel limit
            skipped.append(str(exc))
        if progress is not None and (n % 64 == 0 or n == len(headers) - 1):
            progress(n + 1, len(headers))
    if not kept:
        raise DatasetError(f"{label}: none of the {total} image files could be decoded ({'; '.join(skipped[:3])})")
    return DecodedTiles(images[: len(kept)], np.asarray(kept, np.int64), skipped, size, channels, Path(), False, native)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (cannot identify image file)"
    return f"unreadable ({exc})"


def tile_from_file(path: Path, size: int, channels: int) -> np.ndarray:
    """One file as a (size, size, channels) uint8 tile, through the one image path (raises ImageError)."""
    decoded = read_image_file(path)
    return make_tile(decoded.array, size, channels, name=decoded.name)


def rows(array: np.ndarray, index: np.ndarray):
    """Rows `index` of `array`: copied when in memory, a lazy view when memory-mapped (large sets)."""
    return _Rows(array, index) if isinstance(array, np.memmap) else np.ascontiguousarray(array[index])


class _Rows:
    """Rows `index` of an array, indexed like an array (so a split can share the one decoded block)."""

    def __init__(self, array: np.ndarray, index: np.ndarray):
        self.array = array
        self.index = np.asarray(index, np.int64)
        self.shape = (len(self.index),) + tuple(array.shape[1:])

    def __getitem__(self, idx) -> np.ndarray:
        return np.asarray(self.array[self.index[idx]])

    def __len__(self) -> int:
        return len(self.index)


def read_original(path: Path, max_side: int = 2048) -> np.ndarray:
    """An original image file as 8-bit RGB (H, W, 3) for viewing, shrunk only if larger than `max_side`."""
    try:
        arr = read_image_file(path).array
    except ImageError as exc:
        raise DatasetError(f"cannot read the original image: {exc}") from None
    return shrink_for_display(gray_to_rgb(arr), max_side)


def decoded_dataset(
    decoded: DecodedTiles,
    labels: np.ndarray,
    names: Sequence[str],
    split_indices: dict[str, np.ndarray],
    classes: list[str],
    *,
    as_rgb: bool,
    **info_fields,
) -> TileDataset:
    """A TileDataset over decoded tiles (folders and CSV manifests alike): one split per index array, and
    the DatasetInfo fields that follow from the decoded tiles (size, channels, task)."""
    from histo_core.datasets.base import DatasetInfo, Split, TileDataset

    channels = decoded.channels
    splits = {
        s: Split(
            s,
            rows(decoded.images, idx),
            labels[idx],
            expand_to_rgb=as_rgb and channels == 1,
            tile_names=[names[i] for i in idx],
        )
        for s, idx in split_indices.items()
    }
    info_fields.setdefault("extra", {})["native_tile_px"] = decoded.native_px
    info = DatasetInfo(
        classes=classes,
        channels=3 if as_rgb and channels == 1 else channels,
        size=decoded.size,
        task="binary" if len(classes) == 2 else "multi-class",
        native_channels=channels,
        **info_fields,
    )
    return TileDataset(info, splits)
