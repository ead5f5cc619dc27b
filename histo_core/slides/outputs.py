"""What a slide analysis leaves for the researcher: a per-tile CSV, a GeoJSON of tile polygons QuPath imports
as detections (File > Import objects), and class-map PNGs drawn over the thumbnail."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histo_core.fsutil import write_bytes_atomic, write_text_atomic
from histo_core.slides.grid import SlideGrid
from histo_core.tiling import class_colours, colour_hex

OOD_GREY = np.array([128, 128, 128], np.float32)


def tile_rows(
    grid: SlideGrid,
    cells: np.ndarray,
    probs: np.ndarray,
    fractions: np.ndarray,
    ood: np.ndarray | None,
    classes: tuple[str, ...],
    ood_score: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One row per analysed tile: its level-0 box, grid cell, tissue fraction, class, confidence, every class
    probability, and the "unlike the training tiles" score (`histo_core.ood`: 1.0 or more is flagged) and flag
    (0/1); both empty without a calibration."""
    out = []
    none = [None] * len(cells)
    for (r, c), p, f, o, sc in zip(
        cells, probs, fractions, none if ood is None else ood, none if ood_score is None else ood_score
    ):
        x, y, w, h = grid.box(int(r), int(c))
        k = int(np.argmax(p))
        row: dict[str, Any] = {"x": x, "y": y, "width": w, "height": h, "row": int(r), "col": int(c)}
        row.update(tissue_fraction=round(float(f), 4), **{"class": classes[k]}, confidence=round(float(p[k]), 6))
        row.update({f"prob_{name}": round(float(v), 6) for name, v in zip(classes, p)})
        row["ood_score"] = "" if sc is None or np.isnan(sc) else round(float(sc), 4)
        row["ood"] = "" if o is None else int(bool(o))
        out.append(row)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def geojson(rows: list[dict[str, Any]], classes: tuple[str, ...]) -> dict[str, Any]:
    """A FeatureCollection of closed square polygons in level-0 px, one detection per tile, with its class
    (name and colour, as QuPath reads them) and every class probability as a measurement."""
    colours = class_colours(len(classes))
    index = {c: i for i, c in enumerate(classes)}
    features = []
    for row in rows:
        x, y, w, h = row["x"], row["y"], row["width"], row["height"]
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        measurements = {f"p({c})": row[f"prob_{c}"] for c in classes}
        measurements["tissue fraction"] = row["tissue_fraction"]
        if row["ood_score"] != "":
            measurements["unlike training score"] = row["ood_score"]
        if row["ood"] != "":
            measurements["unlike training"] = row["ood"]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": row["class"], "color": [int(v) for v in colours[index[row["class"]]]]},
                    "measurements": measurements,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: Path, rows: list[dict[str, Any]], classes: tuple[str, ...]) -> None:
    write_text_atomic(path, json.dumps(geojson(rows, classes)))


def render_overlay(
    thumb: np.ndarray,
    grid: SlideGrid,
    scale: float,
    values: np.ndarray,
    *,
    alpha: float = 0.5,
    heat: bool = False,
    ood: np.ndarray | None = None,
    grey_ood: bool = True,
    num_classes: int | None = None,
) -> np.ndarray:
    """The thumbnail (`scale` thumbnail px per level-0 px) with each analysed tile tinted: `values` is a
    (rows, cols) int array of classes (-1 where not analysed), or with `heat` a float array of probabilities
    in [0, 1] (NaN where not analysed) drawn with the viridis map. `ood` (rows, cols) bool: tiles unlike the
    training tiles are drawn grey instead (with `grey_ood`)."""
    base = thumb.astype(np.float32)
    h, w = base.shape[:2]
    ys = np.clip(np.rint((grid.y0 + np.arange(grid.rows + 1) * grid.tile_l0) * scale).astype(int), 0, h)
    xs = np.clip(np.rint((grid.x0 + np.arange(grid.cols + 1) * grid.tile_l0) * scale).astype(int), 0, w)
    # per thumbnail pixel: which tile (or -1)
    row_of = np.full(h, -1)
    col_of = np.full(w, -1)
    for r in range(grid.rows):
        row_of[ys[r] : ys[r + 1]] = r
    for c in range(grid.cols):
        col_of[xs[c] : xs[c + 1]] = c
    inside = (row_of[:, None] >= 0) & (col_of[None, :] >= 0)
    rr, cc = np.clip(row_of, 0, None)[:, None], np.clip(col_of, 0, None)[None, :]
    if heat:
        from matplotlib import colormaps

        v = values[rr, cc]
        valid = inside & ~np.isnan(v)
        colour = colormaps["viridis"](np.nan_to_num(v))[..., :3].astype(np.float32) * 255
    else:
        v = values[rr, cc]
        valid = inside & (v >= 0)
        palette = class_colours(num_classes or max(1, int(values.max()) + 1)).astype(np.float32)
        colour = palette[np.clip(v, 0, None)]
    if ood is not None and grey_ood:
        flagged = ood[rr, cc] & valid
        colour[flagged] = OOD_GREY
    out = base.copy()
    out[valid] = base[valid] * (1 - alpha) + colour[valid] * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def class_grid(grid: SlideGrid, cells: np.ndarray, probs: np.ndarray) -> np.ndarray:
    out = np.full((grid.rows, grid.cols), -1, np.int64)
    if len(cells):
        out[cells[:, 0], cells[:, 1]] = probs.argmax(1)
    return out


def tile_grids(
    grid: SlideGrid, cells: np.ndarray, probs: np.ndarray, ood: np.ndarray | None, ood_score: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Per-tile results scattered onto the grid: `pred` (-1 where no tile), `probs` (NaN where none), `ood`
    (False where none) and `ood_score` (NaN where none). The one layout of grid.npz and of the live map."""
    probs_grid = np.full((grid.rows, grid.cols, probs.shape[1]), np.nan, np.float32)
    ood_grid = np.zeros((grid.rows, grid.cols), bool)
    score_grid = np.full((grid.rows, grid.cols), np.nan, np.float32)
    rows, cols = cells[:, 0], cells[:, 1]
    probs_grid[rows, cols] = probs
    if ood is not None and ood_score is not None:
        ood_grid[rows, cols] = ood
        score_grid[rows, cols] = ood_score
    return {"pred": class_grid(grid, cells, probs), "probs": probs_grid, "ood": ood_grid, "ood_score": score_grid}


def write_png(path: Path, rgb: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def legend(classes: tuple[str, ...], preds: np.ndarray, tile_mm2: float) -> list[dict[str, Any]]:
    """Per class: colour, tiles, area in mm², share of the analysed tissue."""
    colours = class_colours(len(classes))
    counts = np.bincount(preds, minlength=len(classes)) if len(preds) else np.zeros(len(classes), int)
    total = int(counts.sum())
    return [
        {
            "class": c,
            "colour": colour_hex(colours[k]),
            "tiles": int(counts[k]),
            "area_mm2": round(float(counts[k] * tile_mm2), 4),
            "share": round(float(counts[k] / total), 4) if total else 0.0,
        }
        for k, c in enumerate(classes)
    ]
