"""Test slides: tiled, pyramidal, zlib TIFFs written by benchmarks/make_test_slide.py (the project's one writer)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from make_test_slide import cmu_pixels, write_slide  # noqa: E402

__all__ = ["cmu_pixels", "pink_tissue", "write_slide"]


def pink_tissue(height: int, width: int, seed: int = 0) -> np.ndarray:
    """H&E-like pink and purple blotches on white glass, RGB uint8: tissue in the middle, glass around it."""
    rng = np.random.default_rng(seed)
    out = np.full((height, width, 3), 245, np.uint8)
    h0, h1, w0, w1 = height // 4, 3 * height // 4, width // 4, 3 * width // 4
    base = np.array([200, 120, 180], np.int16)
    noise = rng.integers(-40, 40, size=(h1 - h0, w1 - w0, 1), dtype=np.int16)
    out[h0:h1, w0:w1] = np.clip(base + noise, 0, 255).astype(np.uint8)
    return out
