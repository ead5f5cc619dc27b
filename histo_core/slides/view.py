"""What the Slides page shows of an analysis: the results so far (partial or final), one tile at the model's
view and the region around it, read from the slide at the pyramid level that fits the display."""

from __future__ import annotations

from typing import Any

import numpy as np

from histo_core.slides import outputs
from histo_core.slides.analysis import SlideAnalysis, model_tile
from histo_core.slides.grid import SlideGrid
from histo_core.slides.reader import Slide

# -- what the page shows ----------------------------------------------------------------------------------


def current_results(folder: SlideAnalysis) -> dict[str, Any] | None:
    """The analysis as far as it got: the grid, and per tile the class (-1: not analysed, or not yet), the
    probabilities (NaN where none), the OOD flag and score (NaN where none); from grid.npz when finished, else from partial.npz (the
    live map while it runs, and what a stopped analysis has). None before the first results."""
    rec = folder.record()
    if not rec.get("grid"):
        return None
    grid = SlideGrid(**rec["grid"])
    arrays = folder.grid_arrays() if rec.get("state") == "completed" else None
    if arrays is None:
        try:
            with np.load(folder.file("partial.npz"), allow_pickle=False) as z:
                cells, probs, done, ood, score = z["cells"], z["probs"], z["done"], z["ood"], z["ood_score"]
        except (FileNotFoundError, OSError, ValueError, KeyError):
            return None
        arrays = outputs.tile_grids(grid, cells[done], probs[done], ood[done], score[done])
    return {"grid": grid, "record": rec, **arrays}


def read_tile(
    slide: Slide, grid: SlideGrid, row: int, col: int, meta: Any, max_px: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(the tile at full resolution, or from the level nearest `max_px` px when larger; the model's input for
    it, made exactly as the analysis made it: read at the grid's level, through `model_input.preprocess`)."""
    x, y, side, _ = grid.box(row, col)
    level = _level_for(slide, side / max_px)
    d = slide.level_downsamples[level]
    shown = slide.read(x, y, level, max(1, round(side / d)), max(1, round(side / d)))
    raw = slide.read(x, y, grid.level, grid.read_px, grid.read_px)
    return shown, model_tile(raw, meta, [], grid.field_um / grid.read_px)


def read_region(
    slide: Slide, grid: SlideGrid, row: int, col: int, tiles: int = 5, max_px: int = 768
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A region `tiles` tiles wide centred on a tile, from the level nearest full resolution that fits `max_px`;
    and the tile's box in the region's pixels (left, top, right, bottom) to outline it."""
    x, y, side, _ = grid.box(row, col)
    span = side * tiles
    w, h = slide.dimensions
    left = int(min(max(0, x + side / 2 - span / 2), max(0, w - span)))
    top = int(min(max(0, y + side / 2 - span / 2), max(0, h - span)))
    level = _level_for(slide, span / max_px)
    d = slide.level_downsamples[level]
    out = max(1, round(min(span, w, h) / d))
    region = slide.read(left, top, level, out, out)
    box = tuple(round(v / d) for v in (x - left, y - top, x - left + side, y - top + side))
    return region, box  # type: ignore[return-value]


def _level_for(slide: Slide, downsample: float) -> int:
    """The most reduced level whose downsample does not exceed `downsample` (never upsampled)."""
    best = 0
    for i, d in enumerate(slide.level_downsamples):
        if d <= max(1.0, downsample) * 1.0001:
            best = i if d >= slide.level_downsamples[best] else best
    return best
