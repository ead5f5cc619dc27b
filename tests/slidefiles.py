"""Test slides: tiled, pyramidal, zlib TIFFs written by benchmarks/make_test_slide.py (the project's one writer)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from make_test_slide import cmu_pixels, write_slide  # noqa: E402

__all__ = ["bad_slides", "cmu_pixels", "pink_tissue", "write_slide"]


def pink_tissue(height: int, width: int, seed: int = 0) -> np.ndarray:
    """H&E-like pink and purple blotches on white glass, RGB uint8: tissue in the middle, glass around it."""
    rng = np.random.default_rng(seed)
    out = np.full((height, width, 3), 245, np.uint8)
    h0, h1, w0, w1 = height // 4, 3 * height // 4, width // 4, 3 * width // 4
    base = np.array([200, 120, 180], np.int16)
    noise = rng.integers(-40, 40, size=(h1 - h0, w1 - w0, 1), dtype=np.int16)
    out[h0:h1, w0:w1] = np.clip(base + noise, 0, 255).astype(np.uint8)
    return out


def bad_slides(folder: Path) -> dict[str, tuple[Path, str]]:
    """One file per refusal of the issue, and the words its message must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.svs").write_text("<b>not</b> a slide")
    truncated = write_slide(folder / "cut.tif", pink_tissue(1024, 1024, seed=3), mpp=0.5, downsamples=(1, 4))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    return {
        "not a slide": (folder / "notes.svs", "notes.svs: not a slide OpenSlide can read"),
        "truncated": (truncated, "cut.tif: a TIFF file OpenSlide cannot read: it may be truncated"),
        # level 0 over the limit: the test lowers reader.MAX_SIDE_PX to 1,100 px (a 10^6 px slide cannot be written)
        "too large": (
            write_slide(folder / "big.tif", pink_tissue(1200, 1200), mpp=0.5, downsamples=(1,)),
            "big.tif: level 0 is 1,200 x 1,200 px, larger than the 1,100 px per side",
        ),
        "no mpp": (
            write_slide(folder / "nompp.tif", pink_tissue(512, 512), mpp=None, downsamples=(1,)),
            "nompp.tif: the slide records no µm per pixel; give it with --mpp (the CLI) or the µm/px box",
        ),
        "absurd mpp": (
            write_slide(folder / "absurd.tif", pink_tissue(512, 512), mpp=500.0, downsamples=(1,)),
            "absurd.tif: the slide records 500 µm per pixel",
        ),
        "too coarse": (
            write_slide(folder / "coarse.tif", pink_tissue(512, 512), mpp=8.0, downsamples=(1,)),
            "coarse.tif: the model's 112 µm field of view is only 14 px",
        ),
        "no tissue": (
            write_slide(folder / "blank.tif", np.full((1024, 1024, 3), 240, np.uint8), mpp=0.5, downsamples=(1,)),
            "blank.tif: no tissue found: no tile is at least 50% tissue (the tissue threshold)",
        ),
    }
