"""A deterministic, procedurally generated H&E-like tile set that needs no download.

Six tissue-like classes drawn with haematoxylin (purple nuclei) and eosin (pink stroma) colours. It
exists so the app, the CLI and the tests work offline; it is labelled SYNTHETIC everywhere it appears
and says nothing about real tissue.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from histo_core.datasets.base import DatasetInfo, Split, TileDataset
from histo_core.datasets.sources import DatasetEntry, DatasetSource, register_source

CLASSES = ["adipose", "background", "lymphocytes", "stroma", "tumour", "mucus"]
SPLIT_SIZES = {"train": 200, "val": 50, "test": 50}  # tiles per class
DEFAULT_SIZE = 28

HEMATOXYLIN = np.array([75, 40, 125], np.float32)
EOSIN = np.array([232, 150, 190], np.float32)
WHITE = np.array([243, 238, 243], np.float32)
MUCIN = np.array([196, 186, 222], np.float32)


def _blobs(h: int, rng: np.random.Generator, n: int, r_lo: float, r_hi: float, elong: float = 1.0) -> np.ndarray:
    """Soft mask (h, h) in [0,1] of `n` random elliptical nuclei with radii in [r_lo, r_hi] pixels."""
    yy, xx = np.mgrid[0:h, 0:h].astype(np.float32)
    mask = np.zeros((h, h), np.float32)
    if n == 0:
        return mask
    cy, cx = rng.uniform(-2, h + 2, (2, n)).astype(np.float32)
    r = rng.uniform(r_lo, r_hi, n).astype(np.float32)
    ang = rng.uniform(0, np.pi, n).astype(np.float32)
    for i in range(n):
        dy, dx = yy - cy[i], xx - cx[i]
        u = (dx * np.cos(ang[i]) + dy * np.sin(ang[i])) / elong
        v = -dx * np.sin(ang[i]) + dy * np.cos(ang[i])
        d = np.sqrt(u * u + v * v) / r[i]
        mask = np.maximum(mask, np.clip(1.5 - d, 0, 1))
    return mask


def _tile(cls: int, h: int, rng: np.random.Generator) -> np.ndarray:
    s = h / 28.0  # features scale with the tile so classes look alike at every size
    yy, xx = np.mgrid[0:h, 0:h].astype(np.float32)
    name = CLASSES[cls]
    if name == "adipose":
        n = max(3, int(rng.integers(4, 8) * s * s / s))
        pts = rng.uniform(0, h, (n, 2)).astype(np.float32)
        d = np.sqrt((yy[None] - pts[:, 0, None, None]) ** 2 + (xx[None] - pts[:, 1, None, None]) ** 2)
        d.sort(axis=0)
        membrane = np.clip(1.2 - (d[1] - d[0]) / max(0.8, 0.9 * s), 0, 1)
        img = WHITE * (1 - membrane[..., None]) + EOSIN * membrane[..., None]
    elif name == "background":
        img = WHITE + rng.normal(0, 3, (h, h, 1)).astype(np.float32)
        specks = _blobs(h, rng, int(rng.integers(0, 2)), 0.5 * s, 1.0 * s)
        img = img * (1 - 0.4 * specks[..., None]) + EOSIN * 0.4 * specks[..., None]
    elif name == "lymphocytes":
        nuclei = _blobs(h, rng, int(rng.integers(22, 30) * s * s), 1.0 * s, 1.5 * s)
        base = EOSIN * 0.55 + WHITE * 0.45
        img = base * (1 - nuclei[..., None]) + HEMATOXYLIN * 0.85 * nuclei[..., None]
    elif name == "stroma":
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(3.0, 5.0) * s
        fib = 0.5 + 0.5 * np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period)
        img = EOSIN * (0.8 + 0.2 * fib[..., None]) + WHITE * 0.0
        nuclei = _blobs(h, rng, int(rng.integers(1, 4) * s * s), 0.5 * s, 0.9 * s, elong=3.0)
        img = img * (1 - nuclei[..., None]) + HEMATOXYLIN * nuclei[..., None]
    elif name == "tumour":
        nuclei = _blobs(h, rng, int(rng.integers(6, 10) * s * s), 2.2 * s, 3.4 * s, elong=1.4)
        base = EOSIN * 0.75 + HEMATOXYLIN * 0.25
        img = base * (1 - nuclei[..., None]) + (HEMATOXYLIN * 0.9) * nuclei[..., None]
    else:  # mucus
        ang = rng.uniform(0, np.pi)
        wisp = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) / (6.0 * s) + rng.uniform(0, 6)) * 0.5 + 0.5
        img = MUCIN * (0.9 + 0.1 * wisp[..., None]) + WHITE * 0.0
        nuclei = _blobs(h, rng, int(rng.integers(0, 2)), 0.8 * s, 1.2 * s)
        img = img * (1 - nuclei[..., None]) + HEMATOXYLIN * nuclei[..., None]
    # Stain and brightness variation between "slides", then sensor noise.
    img = img * rng.uniform(0.9, 1.08, 3).astype(np.float32) + rng.normal(0, 6, (h, h, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


@lru_cache(maxsize=8)
def _generate(size: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for si, (split, per_class) in enumerate(SPLIT_SIZES.items()):
        rng = np.random.default_rng([seed, si])
        labels = np.repeat(np.arange(len(CLASSES)), per_class)
        labels = labels[rng.permutation(len(labels))]
        images = np.stack([_tile(int(c), size, rng) for c in labels])
        images.setflags(write=False)
        out[split] = (images, labels)
    return out


def open_synthetic(size: int | None = None, seed: int = 0) -> TileDataset:
    size = int(size or DEFAULT_SIZE)
    data = _generate(size, seed)
    info = DatasetInfo(
        name="synthetic",
        title=f"Synthetic H&E demo (SYNTHETIC, {size} px)",
        source="synthetic",
        classes=list(CLASSES),
        channels=3,
        size=size,
        task="multi-class",
        license="Generated by histo_core; public domain.",
        citation="Procedurally generated; not real tissue. Use it to try the tool, not to draw conclusions.",
        location="generated in memory (no files)",
        synthetic=True,
        description="SYNTHETIC: procedurally generated H&E-like tiles, six tissue-like classes, no download needed.",
        native_channels=3,
    )
    splits = {name: Split(name, imgs, labels) for name, (imgs, labels) in data.items()}
    return TileDataset(info, splits)


class SyntheticSource(DatasetSource):
    """The built-in demo: always here, any of SIZES."""

    kind = "synthetic"
    order = 10
    label = "synthetic demo"
    SIZES: tuple[int, ...] = (28, 32, 64, 96, 128, 224)

    def names(self) -> tuple[str, ...]:
        return ("synthetic",)

    def open(self, spec, options, *, size, as_rgb, data_dir, seed, progress) -> TileDataset:
        return open_synthetic(size)

    def entries(self, data_dir=None) -> list[DatasetEntry]:
        return [
            DatasetEntry(
                "synthetic",
                "Synthetic H&E demo (SYNTHETIC)",
                self.kind,
                sizes=self.SIZES,
                channels=3,
                location="generated in memory",
                synthetic=True,
                all_sizes=self.SIZES,
                availability="yes (generated)",
                classes=tuple(CLASSES),
                split_sizes={s: n * len(CLASSES) for s, n in SPLIT_SIZES.items()},
                size_status={str(s): {"available": True} for s in self.SIZES},
                description="Procedurally generated H&E-like tiles; needs no download.",
                license="Generated by histo_core; public domain.",
            )
        ]


register_source(SyntheticSource(), first=False)
