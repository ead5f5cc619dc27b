"""The dataset contract shared by every source.

A `TileDataset` has `info` (metadata) and up to three `Split`s (train/val/test). A split serves uint8
tiles shaped (N, H, W, C) and int64 labels (N,). Images may live in memory, in a memory-mapped array or
lazily in an HDF5 file: callers fetch batches with `Split.get(indices)` and never assume the whole split
is in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from histo_core.errors import DatasetError
from histo_core.image_decode import gray_to_rgb
from histo_core.limits import MAX_CLASSES

SPLITS = ("train", "val", "test")


@dataclass
class DatasetInfo:
    name: str  # registry name, or the path it was opened from
    title: str  # human title ("PathMNIST (28 px)")
    source: str  # medmnist | pcam | folder | csv | synthetic
    classes: list[str]
    channels: int  # channels as served (1 or 3)
    size: int  # tile height == width as served
    task: str = "multi-class"  # multi-class | binary
    license: str = ""
    citation: str = ""
    location: str = ""  # where the files live
    synthetic: bool = False
    description: str = ""
    native_channels: int | None = None  # before any as_rgb expansion
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_classes"] = self.num_classes
        return d


class ArrayLike(Protocol):
    shape: tuple[int, ...]

    def __getitem__(self, idx: Any) -> np.ndarray: ...


class Split:
    """One split of a dataset. `images` is any array-like supporting integer/slice/sorted-index reads."""

    def __init__(
        self,
        name: str,
        images: ArrayLike,
        labels: np.ndarray,
        *,
        expand_to_rgb: bool = False,
        lazy: bool = False,
        tile_names: Sequence[str] | None = None,
    ):
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(labels) != images.shape[0]:
            raise DatasetError(f"split {name!r}: {images.shape[0]} images but {len(labels)} labels")
        self.name = name
        self.images = images
        self.labels = labels
        self.expand_to_rgb = expand_to_rgb
        self.lazy = lazy  # True when reads go to disk (HDF5): read in sorted chunks
        # Where each tile came from (file names for folders/CSV), for viewers; None when tiles are anonymous.
        self.tile_names = list(tile_names) if tile_names is not None else None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def tile_shape(self) -> tuple[int, int, int]:
        h, w = self.images.shape[1:3]
        c = self.images.shape[3] if len(self.images.shape) == 4 else 1
        return int(h), int(w), 3 if self.expand_to_rgb else int(c)

    def get(self, indices: Any) -> np.ndarray:
        """Tiles at `indices` (int array, slice or list) as a uint8 array (k, H, W, C), in the order asked."""
        if isinstance(indices, slice):
            out = np.asarray(self.images[indices])
        else:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            if self.lazy and len(idx) > 1:
                # h5py wants increasing unique indices: read sorted, then put back in the asked order.
                uniq, inverse = np.unique(idx, return_inverse=True)
                out = np.asarray(self.images[uniq])[inverse]
            else:
                out = np.asarray(self.images[idx])
        if out.ndim == 3:
            out = out[..., None]
        if self.expand_to_rgb:
            out = gray_to_rgb(out)
        return np.ascontiguousarray(out, dtype=np.uint8)

    def load_all(self) -> np.ndarray:
        """The whole split in memory. Only for sets known to be small (callers check `nbytes`)."""
        return self.get(slice(None))

    @property
    def nbytes(self) -> int:
        h, w, c = self.tile_shape
        return len(self) * h * w * c


@dataclass
class TileDataset:
    info: DatasetInfo
    splits: dict[str, Split]

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DatasetError(f"{self.info.name}: no split {name!r}; available: {', '.join(self.splits) or 'none'}")
        return self.splits[name]

    def split_sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}

    def class_counts(self) -> dict[str, list[int]]:
        k = self.info.num_classes
        return {name: np.bincount(s.labels, minlength=k)[:k].tolist() for name, s in self.splits.items()}


def check_label_range(max_label: int, where: str) -> None:
    """Refuse a label so large that sizing anything by it (class lists, bincounts) would exhaust memory."""

    if max_label >= MAX_CLASSES:
        raise DatasetError(
            f"{where}: label {max_label} is beyond the limit of {MAX_CLASSES} classes (labels must be class "
            "indices 0..K-1)"
        )


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Labels must be integers in [0, num_classes)."""
    if labels.size == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise DatasetError(
            f"{where}: labels must be in 0..{num_classes - 1} for {num_classes} classes, found {lo}..{hi}"
        )


def split_note(what: str, parts: dict[str, np.ndarray], seed: int) -> str:
    """What a stratified split made, in counts: "no train/val/test folders: split per class (stratified, seed
    0): train 24, val 4, test 4", saying why when val or test came out empty (classes of fewer than 3 tiles
    stay whole in train)."""
    counts = {s: len(parts.get(s, ())) for s in SPLITS}
    text = f"{what}: split per class (stratified, about 70/15/15, seed {seed}): " + ", ".join(
        f"{s} {n}" for s, n in counts.items()
    )
    empty = [s for s in SPLITS[1:] if not counts[s]]
    if empty:
        text += (
            f"; {' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty: every class has fewer than 3 "
            "tiles, so all stay in train"
        )
    return text


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test index split. Every class with >= 3 items lands in all three splits."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n = len(idx)
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        if n >= 3:
            n_val, n_test = max(1, n_val), max(1, n_test)
        n_train = max(0, n - n_val - n_test)
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {s: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for s, p in parts.items()}
