"""Batches on the device: uint8 tiles in, normalised (and augmented) float batches out.

Tiles stay uint8 NHWC until the last moment (4x less memory and bandwidth than float32). A batch is
gathered by index from one uint8 tensor (resident on the device when it fits), from a memory-mapped array,
or, for lazy HDF5 splits, from contiguous chunks read one at a time, then converted, normalised and
augmented as a whole batch on the training device. There is no per-image Python and no PIL in the loop.

    x = to_model_input(batch_uint8, mean, std, device)          # inference
    src = TileSource(split, device)                              # training
    for idx in epoch_batches(src, batch_size, seed, epoch):
        x = augment_batch(to_float01(src.gather(idx), device), aug, gen)
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator, Sequence
from typing import TypeGuard

import numpy as np
import torch
import torch.nn.functional as F

from histo_core import stain
from histo_core.config import Augment

LAZY_CHUNK = 1024  # tiles per contiguous read from a streamed split (28 MB of 96 px RGB tiles)
CPU_RESIDENT_MAX_BYTES = 2 * 1024**3  # in-memory splits up to this size become one torch tensor
CUDA_RESIDENT_FRACTION = 0.4  # of free GPU memory a split may take to live on the GPU


# -- conversion ------------------------------------------------------------------------------------
def _as_tensor(batch_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(batch_uint8, np.ndarray):
        return _from_numpy(batch_uint8)
    return batch_uint8


def _from_numpy(arr: np.ndarray) -> torch.Tensor:
    """torch.from_numpy without the warning (and the hazard) of sharing a read-only array."""
    arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def to_float01(
    batch_uint8: np.ndarray | torch.Tensor,
    device: str | torch.device,
    size: int | None = None,
    *,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 NHWC (or NHW) -> float32 NCHW in [0, 1] on `device`, resized to `size` if given. With
    `channels_last` the result is in channels-last memory, which is the tiles' own NHWC order: one contiguous
    copy instead of a transposing copy now and another before the model."""
    x = _as_tensor(batch_uint8)
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 tiles, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    x = to_device(x, device)
    n, h, w, c = x.shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((n, c, h, w), dtype=torch.float32, device=x.device, memory_format=layout)  # one float copy
    x = out.copy_(x.permute(0, 3, 1, 2)).div_(255.0)
    if size is not None and (x.shape[-2] != size or x.shape[-1] != size):
        x = resize_batch(x, size)
    return x.contiguous(memory_format=layout)


def to_device(x: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """`x` on `device`. Only a host-to-device copy is asynchronous (from pinned memory: the stream orders it before
    the kernels that read it). A device-to-host copy is blocking: a non-blocking one returns before the bytes
    have arrived, and the host would read a half-copied tensor (the colour statistics of `ood.py` did)."""
    device = torch.device(device)
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)
    return x.to(device)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float NCHW batch (antialiased when shrinking), clamped to [0, 1]."""
    shrinking = size < x.shape[-1]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking).clamp_(
        0.0, 1.0
    )


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    c = x.shape[1]
    m = torch.as_tensor(_per_channel(mean, c), dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    s = torch.as_tensor(_per_channel(std, c), dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    return (x - m) / s


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    values = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:  # RGB statistics for a grayscale input: their mean
        return [float(np.mean(values))]
    raise ValueError(f"{len(values)} normalisation values for {channels} channels")


def to_model_input(
    batch_uint8: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device,
    channels_last: bool = False,
    size: int | None = None,
    stain_ref: dict | None = None,
) -> torch.Tensor:
    """uint8 NHWC tiles (numpy or torch) -> normalised float32 NCHW tensor on `device`: resized to `size`,
    stain-normalised to `stain_ref` (a model's reference, see histo_core.stain), then mean/std-normalised.
    Training batches take the same steps (`Trainer.prepare_batch`), with augmentation before mean/std."""
    x = normalize(stain.normalize_batch(to_float01(batch_uint8, device, size), stain_ref), mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def channel_stats(
    images: np.ndarray | torch.Tensor, max_tiles: int = 10_000, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC tiles scaled to [0, 1] (a seeded sample of at most `max_tiles`),
    accumulated in blocks so that memory stays small for large tiles."""
    n = images.shape[0]
    if n > max_tiles:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_tiles, replace=False))
        images = images[idx]
        n = max_tiles
    c = images.shape[3] if len(images.shape) == 4 else 1
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for s in range(0, n, 64):
        block = images[s : s + 64]
        block = block.numpy() if isinstance(block, torch.Tensor) else np.asarray(block)
        x = block.reshape(-1, c).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += x.shape[0]
    mean = total / max(count, 1)
    var = np.maximum(total_sq / max(count, 1) - mean**2, 0.0) * count / max(count - 1, 1)
    return mean.tolist(), np.maximum(np.sqrt(var), 1e-3).tolist()


# -- augmentation ----------------------------------------------------------------------------------
def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device).to(device) * (hi - lo) + lo


def _coin(n: int, gen: torch.Generator, device: torch.device, p: float = 0.5) -> torch.Tensor:
    return (torch.rand(n, generator=gen, device=gen.device) < p).to(device)


def random_flips(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Independent horizontal and vertical flips, each with probability 1/2, per tile."""
    n = x.shape[0]
    h = _coin(n, gen, x.device).view(n, 1, 1, 1)
    v = _coin(n, gen, x.device).view(n, 1, 1, 1)
    x = torch.where(h, x.flip(3), x)
    return torch.where(v, x.flip(2), x)


def random_rot90(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rotate each (square) tile by a random multiple of 90 degrees."""
    if x.shape[-1] != x.shape[-2]:
        return x
    n = x.shape[0]
    k = torch.randint(0, 4, (n,), generator=gen, device=gen.device).to(x.device).view(n, 1, 1, 1)
    # rot90 by k = (transpose when k is odd), then flip rows when k is 1 or 2, columns when k is 2 or 3: three
    # selects, no boolean indexing (which waits for the device to learn how many tiles each k has)
    x = torch.where(k % 2 == 1, x.transpose(2, 3), x)
    x = torch.where((k == 1) | (k == 2), x.flip(2), x)
    return torch.where(k >= 2, x.flip(3), x)


def random_affine(
    x: torch.Tensor, gen: torch.Generator, max_degrees: float = 0.0, crop_scale: float | None = None
) -> torch.Tensor:
    """Small random rotations and/or random resized crops in one grid_sample (reflection padding, so
    no black corners appear in tissue)."""
    n = x.shape[0]
    dev = x.device
    angle = _uniform(n, -max_degrees, max_degrees, gen, dev) * (math.pi / 180.0)
    sx = torch.ones(n, device=dev)
    sy = torch.ones(n, device=dev)
    tx = torch.zeros(n, device=dev)
    ty = torch.zeros(n, device=dev)
    if crop_scale is not None and crop_scale < 1.0:
        area = _uniform(n, crop_scale, 1.0, gen, dev)
        log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), gen, dev)
        ratio = torch.exp(log_ratio)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = _uniform(n, -1.0, 1.0, gen, dev) * (1.0 - sx)
        ty = _uniform(n, -1.0, 1.0, gen, dev) * (1.0 - sy)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * sx, -sin * sy, tx], dim=1),
            torch.stack([sin * sx, cos * sy, ty], dim=1),
        ],
        dim=1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)  # once here: linalg.inv on a GPU checks its result on the host
_GRAY_WEIGHTS = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (x * stain.constant(_GRAY_WEIGHTS, x)).sum(1, keepdim=True)


def color_jitter(
    x: torch.Tensor,
    gen: torch.Generator,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> torch.Tensor:
    """Per-tile brightness/contrast/saturation factors in [1-v, 1+v] and a hue shift in [-hue, hue] turns
    (a rotation of the chroma plane in YIQ space), batched. Input and output in [0, 1]."""
    n, dev = x.shape[0], x.device
    view = (n, 1, 1, 1)
    if brightness > 0:
        x = x * _uniform(n, 1 - brightness, 1 + brightness, gen, dev).view(view)
    if contrast > 0:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, 1 - contrast, 1 + contrast, gen, dev).view(view) + mean
    if x.shape[1] == 3 and saturation > 0:
        g = _gray(x)
        x = (x - g) * _uniform(n, 1 - saturation, 1 + saturation, gen, dev).view(view) + g
    if x.shape[1] == 3 and hue > 0:
        phi = _uniform(n, -hue, hue, gen, dev) * (2 * math.pi)
        to_yiq = stain.constant(_RGB_TO_YIQ, x)
        from_yiq = stain.constant(_YIQ_TO_RGB, x)
        c, s = torch.cos(phi), torch.sin(phi)
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        rot = torch.stack([one, zero, zero, zero, c, -s, zero, s, c], dim=1).view(n, 3, 3).to(x.dtype)
        m = from_yiq @ rot @ to_yiq  # (n, 3, 3)
        x = torch.einsum("nij,njhw->nihw", m, x)
    return x.clamp(0.0, 1.0)


def augment_batch(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """All configured augmentations of a float [0, 1] NCHW batch, on its device."""
    if aug.flip:
        x = random_flips(x, gen)
    if aug.rot90:
        x = random_rot90(x, gen)
    if aug.rotate > 0 or aug.resized_crop:
        x = random_affine(x, gen, aug.rotate, aug.crop_scale if aug.resized_crop else None)
    if aug.brightness or aug.contrast or aug.saturation or aug.hue:
        x = color_jitter(x, gen, aug.brightness, aug.contrast, aug.saturation, aug.hue)
    if aug.stain_jitter > 0:
        x = stain.hed_jitter(x, aug.stain_jitter, gen)
    return x


def augmentation_active(aug: Augment) -> bool:
    return bool(
        aug.flip
        or aug.rot90
        or aug.rotate > 0
        or aug.resized_crop
        or aug.brightness
        or aug.contrast
        or aug.saturation
        or aug.hue
        or aug.stain_jitter > 0
    )


def dihedral_views(x: torch.Tensor, flips: bool = True, rot90: bool = True) -> list[torch.Tensor]:
    """The test-time views of a batch: up to the 8 symmetries of the square (all label-preserving for tissue)."""
    views = [x]
    if rot90 and x.shape[-1] == x.shape[-2]:
        views += [torch.rot90(x, k, (2, 3)) for k in (1, 2, 3)]
    if flips:
        views += [v.flip(3) for v in views]
    return views


# -- where the tiles live --------------------------------------------------------------------------
class _FileRows:
    """Row reads from a file-backed np.memmap with plain file reads instead of touching the mapping: pages
    read through a mapping stay in the process's resident set (RSS grows to the file size over an epoch),
    pages read with read() live in the OS page cache only."""

    def __init__(self, images: np.memmap):
        if images.filename is None:
            raise ValueError("not a file-backed memmap")
        mm = images._mmap  # type: ignore[attr-defined]  # numpy's mapping object, not in its stubs
        base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
        mapped_from = images.offset - images.offset % mmap.ALLOCATIONGRANULARITY
        self.path = images.filename
        self.start = mapped_from + (images.ctypes.data - base)
        self.row_shape = images.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape)) * images.dtype.itemsize
        self.n = images.shape[0]

    @staticmethod
    def usable(images: object) -> TypeGuard[np.memmap]:
        return (
            isinstance(images, np.memmap)
            and getattr(images, "_mmap", None) is not None
            and images.filename is not None
            and images.dtype == np.uint8
            and images.flags.c_contiguous
        )

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.row_shape), np.uint8)
        with open(str(self.path), "rb", buffering=0) as fh:
            fh.seek(self.start + start * self.row_bytes)
            view = out.data.cast("B")
            got = 0
            while got < len(view):
                k = fh.readinto(view[got:])
                if not k:
                    raise OSError(f"{self.path}: file ended early (truncated?)")
                got += k
        return out


def _file_rows(split) -> _FileRows | None:
    images = getattr(split, "images", None)
    try:
        return _FileRows(images) if _FileRows.usable(images) else None
    except (AttributeError, TypeError, ValueError):
        return None


class TileSource:
    """One split's tiles, served as uint8 NHWC batches by index.

    In-memory splits become one uint8 tensor (on the GPU when it fits in a fraction of free memory).
    File-backed splits (memory-mapped arrays, lazy HDF5) are *streamed*: training visits contiguous chunks
    of LAZY_CHUNK tiles in random order (`chunk_order`), each read once in one sequential read and
    shuffled within, so peak memory is bounded by one chunk whatever the file's length. On CUDA a
    file-backed split that fits on the GPU is copied there chunk by chunk instead.
    """

    def __init__(
        self,
        split,
        device: str | torch.device,
        *,
        indices: np.ndarray | None = None,
        resident_max_bytes: int | None = None,
    ):
        self.split = split
        self.device = torch.device(device)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.n = int(len(self.indices) if self.indices is not None else len(split))
        self.file_rows = _file_rows(split) if self.indices is None else None
        file_backed = bool(getattr(split, "lazy", False)) or isinstance(getattr(split, "images", None), np.memmap)
        h, w, c = split.tile_shape
        self.tile_shape = (h, w, c)
        nbytes = self.n * h * w * c
        self._tiles: torch.Tensor | None = None
        self._chunks: dict[int, torch.Tensor] = {}  # streamed splits: the chunk(s) read last
        self._served: dict[int, int] = {}  # tiles of each held chunk handed out so far
        all_labels = split.labels if self.indices is None else split.labels[self.indices]
        self.labels = torch.from_numpy(np.array(all_labels, dtype=np.int64))
        limit = resident_max_bytes
        if self.device.type == "cuda":
            if limit is None:
                free, _ = torch.cuda.mem_get_info(self.device)
                limit = int(free * CUDA_RESIDENT_FRACTION)
            resident = nbytes <= limit
        else:
            resident = not file_backed and nbytes <= (CPU_RESIDENT_MAX_BYTES if limit is None else limit)
        self.streamed = not resident and file_backed
        if resident:
            try:
                self._tiles = self._load_all(self.device)
            except torch.OutOfMemoryError:  # the GPU is fuller than it said: batches come from host memory
                self._tiles = None
                self.streamed = file_backed

    @property
    def resident(self) -> bool:
        return self._tiles is not None

    @property
    def resident_bytes(self) -> int:
        """Bytes this source holds on its device as one tensor (0 when its batches come from host memory)."""
        return 0 if self._tiles is None else self._tiles.numel() * self._tiles.element_size()

    def _load_all(self, device: torch.device) -> torch.Tensor:
        """The whole split as one uint8 tensor on `device`. A file-backed split is read chunk by chunk straight
        into the tensor on the device: host memory holds one chunk at a time, never the whole split."""
        if self.indices is None and (getattr(self.split, "lazy", False) or self.file_rows is not None):
            out = torch.empty((self.n, *self.tile_shape), dtype=torch.uint8, device=device)
            for s in range(0, self.n, LAZY_CHUNK):
                out[s : s + LAZY_CHUNK] = to_device(self._read(s, min(self.n, s + LAZY_CHUNK)), device)
            return out
        arr = self.split.get(self.indices) if self.indices is not None else self.split.load_all()
        return _from_numpy(arr).to(device)  # already in host memory: one copy, no pinned duplicate

    def __len__(self) -> int:
        return self.n

    def _read(self, start: int, stop: int) -> torch.Tensor:
        if self.file_rows is not None:
            arr = self.file_rows.read(start, stop)
            if arr.ndim == 3:
                arr = arr[..., None]
            if getattr(self.split, "expand_to_rgb", False) and arr.shape[-1] == 1:
                arr = np.repeat(arr, 3, axis=-1)
            return torch.from_numpy(arr)
        if self.indices is None:
            return _from_numpy(self.split.get(slice(start, stop)))
        return _from_numpy(self.split.get(self.indices[start:stop]))

    def read_range(self, start: int, stop: int) -> torch.Tensor:
        """Contiguous positions [start, stop): one sequential read for streamed splits."""
        if self._tiles is not None:
            return self._tiles[start:stop]
        return self._read(start, stop)

    def gather(self, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 NHWC tiles at positions `idx` (0..n-1 of this source), on the device when resident there."""
        if self._tiles is not None:
            t_idx = torch.as_tensor(idx, dtype=torch.long)
            return self._tiles[t_idx.to(self._tiles.device)]
        pos = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64)
        if self.streamed:
            return self._gather_chunked(pos)
        rows = self.indices[pos] if self.indices is not None else pos
        return _from_numpy(self.split.get(rows))

    def _gather_chunked(self, pos: np.ndarray) -> torch.Tensor:
        """Training batches lie inside one chunk of `chunk_order`: each chunk is read once, in one sequential
        read, and dropped when the next one is needed (any positions work, at the cost of more reads)."""
        chunk_ids = pos // LAZY_CHUNK
        wanted = [int(c) for c in np.unique(chunk_ids)]
        out = torch.empty((len(pos), *self.tile_shape), dtype=torch.uint8)
        for cid in wanted:
            if cid not in self._chunks:
                if len(wanted) == 1:
                    self._drop_chunks()  # drop the previous chunk before reading the next
                while len(self._chunks) >= 2:
                    self._served.pop(next(iter(self._chunks)), None)
                    self._chunks.pop(next(iter(self._chunks)))
                start = cid * LAZY_CHUNK
                self._chunks[cid] = self.read_range(start, min(self.n, start + LAZY_CHUNK))
                self._served[cid] = 0
            sel = np.flatnonzero(chunk_ids == cid)
            out[torch.from_numpy(sel)] = self._chunks[cid][torch.from_numpy(pos[sel] - cid * LAZY_CHUNK)]
            self._served[cid] += len(sel)
            if self._served[cid] >= len(self._chunks[cid]):  # an epoch visits each tile once: done with it
                del self._chunks[cid], self._served[cid]
        return out

    def _drop_chunks(self) -> None:
        self._chunks.clear()
        self._served.clear()

    def gather_labels(self, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.labels[torch.as_tensor(idx, dtype=torch.long).cpu()]

    def iter_sequential(
        self, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, uint8 batch) over positions [start, stop) (default: the whole source) in order: for
        evaluation (a torchrun rank evaluates its `shard_range`)."""
        self._drop_chunks()  # a training chunk is not needed while evaluating
        end = self.n if stop is None else min(self.n, stop)
        for s in range(start, end, batch_size):
            yield s, self.read_range(s, min(end, s + batch_size))


# -- epoch order -----------------------------------------------------------------------------------
def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The same permutation on every rank and after a resume: it depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 7919]).permutation(n)


def shard(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s share of an epoch order; padded by wrapping so that every rank gets the same count
    (DDP ranks must run the same number of steps)."""
    if world <= 1:
        return order
    per_rank = math.ceil(len(order) / world)
    padded = np.concatenate([order, order[: per_rank * world - len(order)]]) if len(order) % world else order
    return padded[rank::world]


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous share [start, stop) of n rows for evaluation (one sequential read each; the
    shares in rank order are the rows in order, so gathered predictions line up with the labels)."""
    per_rank = math.ceil(n / max(1, world))
    return min(n, rank * per_rank), min(n, (rank + 1) * per_rank)


def chunk_order(n: int, seed: int, epoch: int, chunk: int = LAZY_CHUNK) -> list[np.ndarray]:
    """For lazy splits: contiguous chunks visited in random order, shuffled within. Each chunk is read in
    one sequential pass; memory holds one chunk at a time."""
    rng = np.random.default_rng([seed, epoch, 104729])
    starts = np.arange(0, n, chunk)
    return [start + rng.permutation(min(chunk, n - start)) for start in rng.permutation(starts)]


def batch_slices(count: int, batch_size: int) -> list[slice]:
    """Batch boundaries over `count` samples; a trailing batch of one sample is dropped (BatchNorm cannot
    train on it) unless it is the only one."""
    out = [slice(s, min(count, s + batch_size)) for s in range(0, count, batch_size)]
    if len(out) > 1 and out[-1].stop - out[-1].start < 2:
        out.pop()
    return out
