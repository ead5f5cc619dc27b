"""Tissue detection on a slide's thumbnail: Otsu's threshold on saturation (stained tissue is coloured, glass
and its dust are grey), specks and small holes removed, then the fraction of each tile that is tissue.

    mask = tissue_mask(thumb, um_per_px=slide_um_per_thumb_px)
    fractions = tile_fractions(mask, grid, thumb_scale)      # (rows, cols) in [0, 1]
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_SATURATION = 0.04  # below this nothing is tissue, whatever Otsu says (a blank slide has only noise)
MAX_SATURATION_THRESHOLD = 0.08  # Otsu above this has split dark from pale tissue (glass is ~0.01): capped
MIN_SPECK_UM2 = 100 * 100.0  # tissue pieces smaller than this (dust, debris) are dropped
MAX_HOLE_UM2 = 200 * 200.0  # holes smaller than this inside tissue (nuclei-free gaps, fat) are filled
DEFAULT_TISSUE_THRESHOLD = 0.5  # a tile is analysed when at least this fraction of it is tissue


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of a uint8 RGB image; black pixels (pen, scanner borders) count as 0."""
    x = rgb.astype(np.float32)
    mx, mn = x.max(axis=2), x.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0)
    sat[mx < 40] = 0.0  # near-black: not stained tissue
    return sat


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut maximising the between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def tissue_mask(thumb: np.ndarray, um_per_px: float) -> np.ndarray:
    """Boolean mask (H, W) of tissue in an RGB uint8 thumbnail whose pixels cover `um_per_px` µm each."""
    sat = saturation(thumb)
    threshold = min(max(otsu_threshold(sat), MIN_SATURATION), MAX_SATURATION_THRESHOLD)
    mask = sat > threshold
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool)) if min(mask.shape) >= 16 else mask
    px_area = um_per_px * um_per_px
    mask = _drop_small(mask, MIN_SPECK_UM2 / px_area)
    holes = ndimage.binary_fill_holes(mask) & ~mask
    small_holes = _drop_small(holes, 0, keep_below=MAX_HOLE_UM2 / px_area)
    return mask | small_holes


def _drop_small(mask: np.ndarray, min_px: float, keep_below: float | None = None) -> np.ndarray:
    """The components of `mask` of at least `min_px` pixels (or, with `keep_below`, those smaller than it)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
    keep = sizes >= min_px if keep_below is None else sizes < keep_below
    keep[0] = False
    return keep[labels]


def tile_fractions(
    mask: np.ndarray, rows: int, cols: int, x0: float, y0: float, tile: float, scale: float
) -> np.ndarray:
    """(rows, cols) fraction of tissue in each tile of a grid starting at level-0 (x0, y0) with `tile` level-0
    px per side, the mask having `scale` mask px per level-0 px (integral image: one pass whatever the grid)."""
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    ys = np.clip(np.rint((y0 + np.arange(rows + 1) * tile) * scale).astype(int), 0, h)
    xs = np.clip(np.rint((x0 + np.arange(cols + 1) * tile) * scale).astype(int), 0, w)
    top, bottom = ys[:-1, None], ys[1:, None]
    left, right = xs[None, :-1], xs[None, 1:]
    area = np.maximum((bottom - top) * (right - left), 1)
    inside = integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left]
    return (inside / area).astype(np.float32)
