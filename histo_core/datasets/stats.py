"""Pixel statistics and per-class samples, on bounded seeded samples so 100k-tile sets stay fast.

Nothing here decodes a whole split: statistics read at most `max_tiles` tiles (in sorted-index chunks,
which lazy HDF5 splits need), and class samples are chosen from the labels alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from histo_core.datasets.base import Split, TileDataset

DEFAULT_MAX_TILES = 5000
CHUNK = 512


@dataclass
class PixelStats:
    split: str
    n_tiles: int  # tiles the statistics were computed on
    n_total: int  # tiles in the split
    mean: list[float]  # per channel, on the 0..1 scale (what torchvision's Normalize takes)
    std: list[float]
    histograms: list[list[int]]  # per channel, 256 bins of pixel counts (values 0..255)

    @property
    def sampled(self) -> bool:
        return self.n_tiles < self.n_total

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sampled"] = self.sampled
        return d


def sample_indices(n: int, max_tiles: int = DEFAULT_MAX_TILES, seed: int = 0) -> np.ndarray:
    """All of 0..n-1 when n <= max_tiles, else a seeded sorted sample of max_tiles distinct indices."""
    if n <= max_tiles:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_tiles, replace=False)).astype(np.int64)


def pixel_stats(split: Split, *, max_tiles: int = DEFAULT_MAX_TILES, seed: int = 0) -> PixelStats:
    """Per-channel mean, std and 256-bin histograms of `split`, on at most `max_tiles` tiles."""
    indices = sample_indices(len(split), max_tiles, seed)
    channels = split.tile_shape[2]
    hist = np.zeros((channels, 256), np.int64)
    for start in range(0, len(indices), CHUNK):
        tiles = split.get(indices[start : start + CHUNK])
        for c in range(channels):
            hist[c] += np.bincount(tiles[..., c].reshape(-1), minlength=256)
    # Pixels are 0..255 integers, so the histogram gives the exact mean and variance.
    pixels = hist.sum(axis=1)
    if pixels.sum() == 0:
        nan = [float("nan")] * channels
        return PixelStats(split.name, 0, len(split), nan, nan, hist.tolist())
    values = np.arange(256, dtype=np.float64)
    mean = hist @ values / pixels
    var = np.maximum(hist @ (values * values) / pixels - mean * mean, 0.0)
    return PixelStats(
        split.name, len(indices), len(split), (mean / 255).tolist(), (np.sqrt(var) / 255).tolist(), hist.tolist()
    )


def class_sample_indices(labels: np.ndarray, label: int, count: int, seed: int = 0) -> np.ndarray:
    """Up to `count` indices of tiles with `label`, chosen at random (seeded) from the labels alone."""
    candidates = np.flatnonzero(np.asarray(labels) == label)
    if len(candidates) <= count:
        return candidates
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=count, replace=False))


def samples_per_class(split: Split, per_class: int, seed: int = 0) -> dict[int, np.ndarray]:
    """{class index: up to `per_class` tile indices} for every class present in the split."""
    return {
        int(c): class_sample_indices(split.labels, int(c), per_class, seed + int(c)) for c in np.unique(split.labels)
    }


def dataset_summary(ds: TileDataset) -> dict:
    """Split sizes and class counts per split, by class name: what `datasets --info` prints."""
    counts = ds.class_counts()
    return {
        "info": ds.info.to_dict(),
        "split_sizes": ds.split_sizes(),
        "class_counts": {split: dict(zip(ds.info.classes, c)) for split, c in counts.items()},
        "tile_shape": list(next(iter(ds.splits.values())).tile_shape) if ds.splits else [],
    }
