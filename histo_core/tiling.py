"""Classify a large image (a 700x460 BreaKHis field, a 5000x5000 region) tile by tile into a class map.

    cmap = classify_large_image(loaded, decoded.array, tile_px=224)
    rgb = render_class_map(decoded.array, cmap)          # the image with each tile tinted by its class
    cmap.counts()                                        # {class: tiles}

A tile covers `tile_px` source pixels, the field of view the model was trained on: by default the
training tiles' native source size when known (PathMNIST tiles are 224 px NCT-CRC-HE tiles shrunk to
28 px), else 224. Each tile is resized to the model's input size and classified in batches. The grid is
centred; the margins it leaves (less than one tile) are not classified, and a note says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from histo_core.errors import HistoError
from histo_core.image_decode import gray_to_rgb, shrink_for_display
from histo_core.model_input import preprocess
from histo_core.model_meta import LoadedModel, ModelMeta
from histo_core.predict import predict

DEFAULT_TILE_PX = 224
MIN_TILE_PX = 8
MAX_TILES = 20_000
BATCH_TILES = 256


@dataclass
class ClassMap:
    classes: tuple[str, ...]
    tile_px: int
    top: int  # the grid's offset in the image (centred)
    left: int
    probs: np.ndarray  # (rows, cols, K) float32
    image_shape: tuple[int, int]  # (H, W) of the source image
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(self.probs.shape[0])

    @property
    def cols(self) -> int:
        return int(self.probs.shape[1])

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(axis=2)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=2)

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.pred.reshape(-1), minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, found)}

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of a cell in source pixels."""
        top, left = self.top + row * self.tile_px, self.left + col * self.tile_px
        return top, left, top + self.tile_px, left + self.tile_px

    def table(self) -> list[dict]:
        """One row per tile: position, box, predicted class and its probability."""
        rows = []
        for r in range(self.rows):
            for c in range(self.cols):
                t, lft, b, rt = self.cell_box(r, c)
                k = int(self.pred[r, c])
                rows.append(
                    {
                        "row": r,
                        "col": c,
                        "top": t,
                        "left": lft,
                        "bottom": b,
                        "right": rt,
                        "prediction": self.classes[k],
                        "confidence": float(self.probs[r, c, k]),
                    }
                )
        return rows


def default_tile_px(meta: ModelMeta, mpp: float | None = None) -> int:
    """The model's field of view in this image's pixels: at `mpp` µm/px when both are known, else the
    training tiles' source size, else DEFAULT_TILE_PX."""
    if meta.field_um and mpp:
        return max(MIN_TILE_PX, round(meta.field_um / mpp))
    return int(meta.native_tile_px or DEFAULT_TILE_PX)


def plan_grid(height: int, width: int, tile_px: int) -> tuple[int, int, int, int]:
    """(rows, cols, top, left) of the centred grid of whole tiles. Raises HistoError when none fits."""
    tile_px = int(tile_px)
    if tile_px < MIN_TILE_PX:
        raise HistoError(f"tile size must be at least {MIN_TILE_PX} px, got {tile_px}")
    rows, cols = height // tile_px, width // tile_px
    if rows == 0 or cols == 0:
        raise HistoError(
            f"the image is {width}x{height} px, smaller than one {tile_px} px tile; choose a tile size "
            f"of at most {min(height, width)} px, or classify it as a single tile"
        )
    if rows * cols > MAX_TILES:
        raise HistoError(
            f"{tile_px} px tiles would cut this {width}x{height} image into {rows * cols:,} tiles "
            f"(more than {MAX_TILES:,}); choose a larger tile size"
        )
    return rows, cols, (height - rows * tile_px) // 2, (width - cols * tile_px) // 2


def classify_large_image(
    loaded: LoadedModel,
    image: np.ndarray,
    tile_px: int | None = None,
    *,
    tta: bool = False,
    batch_tiles: int = BATCH_TILES,
    mpp: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClassMap:
    """Cut `image` (uint8 HxWxC, at `mpp` µm per pixel when known) into tiles of `tile_px` source pixels
    (default: the model's field of view), classify them, return the map. Each window goes through the one
    image path (`preprocess`)."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    meta = loaded.meta
    tile_px = int(tile_px or default_tile_px(meta, mpp))
    h, w = image.shape[:2]
    rows, cols, top, left = plan_grid(h, w, tile_px)
    notes = []
    window_mpp = meta.field_um / tile_px if meta.field_um else None  # each window is one field of view
    if rows * tile_px < h or cols * tile_px < w:
        notes.append(
            f"the centred {cols}x{rows} grid of {tile_px} px tiles leaves margins of "
            f"{w - cols * tile_px} px (width) and {h - rows * tile_px} px (height) unclassified"
        )
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    probs = np.zeros((rows, cols, meta.num_classes), np.float32)
    tile_notes: list[str] = []
    for start in range(0, len(cells), batch_tiles):
        chunk = cells[start : start + batch_tiles]
        tiles = np.stack(
            [
                preprocess(
                    image[top + r * tile_px : top + (r + 1) * tile_px, left + c * tile_px : left + (c + 1) * tile_px],
                    meta,
                    tile_notes,
                    mpp=window_mpp,
                )
                for r, c in chunk
            ]
        )
        out = predict(loaded, tiles, tta=tta)
        for (r, c), p in zip(chunk, out):
            probs[r, c] = p
        if progress is not None:
            progress(min(start + batch_tiles, len(cells)), len(cells))
    notes.extend(dict.fromkeys(tile_notes))  # every tile has the same size: say each thing once
    return ClassMap(
        classes=meta.classes, tile_px=tile_px, top=top, left=left, probs=probs, image_shape=(h, w), notes=notes
    )


# Distinct colours that stand out on H&E: no pinks, purples, mauves or greys, which blend into stained
# tissue and glass (from Sasha Trubetskoy's list of 20 distinct colours, those kept).
_MAP_COLOURS = [
    "#e6194b",
    "#3cb44b",
    "#ffe119",
    "#4363d8",
    "#f58231",
    "#42d4f4",
    "#bfef45",
    "#469990",
    "#9a6324",
    "#000075",
    "#808000",
    "#000000",
    "#aaffc3",
    "#800000",
]


def class_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours that do not blend into H&E (then evenly spaced hues beyond 14 classes)."""
    if n <= len(_MAP_COLOURS):
        return np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in _MAP_COLOURS[:n]], np.uint8)
    from matplotlib import colormaps

    cols = colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))[:, :3]
    return (cols * 255).round().astype(np.uint8)


def colour_hex(rgb: np.ndarray) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[:3]))


def legend(cmap: ClassMap) -> list[dict]:
    """Per class: name, colour (hex), tiles predicted, share of the grid, mean confidence of those tiles."""
    colours = class_colours(len(cmap.classes))
    pred, conf = cmap.pred, cmap.confidence
    total = pred.size
    out = []
    for k, name in enumerate(cmap.classes):
        sel = pred == k
        out.append(
            {
                "class": name,
                "colour": colour_hex(colours[k]),
                "tiles": int(sel.sum()),
                "share": float(sel.sum() / total) if total else 0.0,
                "mean_confidence": float(conf[sel].mean()) if sel.any() else None,
            }
        )
    return out


def render_class_map(
    image: np.ndarray, cmap: ClassMap, alpha: float = 0.45, max_px: int = 1200, grid_lines: bool = True
) -> np.ndarray:
    """The image (downscaled so its longer side is at most `max_px`) with each tile tinted by its predicted
    class colour at opacity `alpha`, and thin lines between tiles. Unclassified margins stay untinted."""
    h, w = cmap.image_shape
    scale = min(1.0, max_px / max(h, w))
    base = shrink_for_display(gray_to_rgb(np.asarray(image, dtype=np.uint8)), max_px).astype(np.float32)
    tint = base.copy()
    mask = np.zeros(base.shape[:2], bool)
    colours = class_colours(len(cmap.classes)).astype(np.float32)
    pred = cmap.pred
    for r in range(cmap.rows):
        for c in range(cmap.cols):
            t, lft, b, rt = (round(v * scale) for v in cmap.cell_box(r, c))
            tint[t:b, lft:rt] = colours[pred[r, c]]
            mask[t:b, lft:rt] = True
    out = base.copy()
    out[mask] = base[mask] * (1.0 - alpha) + tint[mask] * alpha
    if grid_lines and cmap.tile_px * scale >= 6:  # lines on smaller cells would hide the tissue
        x0, x1 = round(cmap.left * scale), round((cmap.left + cmap.cols * cmap.tile_px) * scale)
        y0, y1 = round(cmap.top * scale), round((cmap.top + cmap.rows * cmap.tile_px) * scale)
        for r in range(cmap.rows + 1):
            out[min(round((cmap.top + r * cmap.tile_px) * scale), out.shape[0] - 1), x0:x1] = 255
        for c in range(cmap.cols + 1):
            out[y0:y1, min(round((cmap.left + c * cmap.tile_px) * scale), out.shape[1] - 1)] = 255
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
