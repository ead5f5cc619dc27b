"""The tile grid of a slide at the model's field of view, in µm: a PathMNIST model saw 224 px at 0.5 µm/px =
112 µm, so on a 0.25 µm/px slide a tile is 448 level-0 px. Tiles are read from the pyramid level closest to the
model's input resolution without going below it (read fewer pixels, never upsample), then resized to the
model's input size by the one image path (`model_input.preprocess`)."""

from __future__ import annotations

from dataclasses import dataclass

from histo_core.model_input import FIELD_TOLERANCE
from histo_core.model_meta import ModelMeta
from histo_core.slides.reader import Slide, SlideError


@dataclass(frozen=True)
class SlideGrid:
    tile_l0: int  # tile side in level-0 px
    level: int  # pyramid level read
    downsample: float  # of that level
    read_px: int  # tile side in that level's px
    rows: int
    cols: int
    x0: int  # level-0 offset of the grid (centred)
    y0: int
    field_um: float
    mpp: float

    @property
    def tile_mm2(self) -> float:
        return (self.tile_l0 * self.mpp / 1000.0) ** 2

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of a tile in level-0 px."""
        return self.x0 + col * self.tile_l0, self.y0 + row * self.tile_l0, self.tile_l0, self.tile_l0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def plan_slide_grid(slide: Slide, meta: ModelMeta, level: int | None = None) -> SlideGrid:
    """The grid of whole tiles of the model's field of view over level 0, and the level to read it from
    (`level` forces one, for comparisons; it must not upsample either).
    Raises SlideError when the model's field of view is unknown or does not fit the slide's resolution."""
    field_um = meta.field_um
    if not field_um:
        raise SlideError(
            "the model records no field of view in µm (its training data's scale is unknown), so its tiles "
            "cannot be cut from a slide at the right scale; use a model trained on PathMNIST/PCam or on a "
            "dataset that records 'mpp' and 'native_tile_px'"
        )
    tile_l0 = round(field_um / slide.mpp)
    if tile_l0 * FIELD_TOLERANCE < meta.input_size:
        raise SlideError(
            f"{slide.name}: the model's {field_um:g} µm field of view is only {tile_l0} px at the slide's "
            f"{slide.mpp:g} µm/px, fewer than the model's {meta.input_size} px input: the slide is scanned too "
            "coarsely for this model (check --mpp, or use a model with a smaller input)"
        )
    w, h = slide.dimensions
    cols, rows = w // tile_l0, h // tile_l0
    if rows == 0 or cols == 0:
        raise SlideError(
            f"{slide.name}: the slide ({w}x{h} px, {w * slide.mpp:.0f}x{h * slide.mpp:.0f} µm) is smaller than one "
            f"{field_um:g} µm tile of the model"
        )
    wanted = tile_l0 / meta.input_size  # the downsample at which a tile is exactly the model's input
    chosen, best = 0, 1.0
    for i, d in enumerate(slide.level_downsamples):
        if d <= wanted * 1.0001 and d > best:
            chosen, best = i, d
    if level is not None:
        chosen = level
        if not 0 <= level < len(slide.level_downsamples):
            raise SlideError(f"{slide.name}: no level {level} (the slide has {len(slide.level_downsamples)})")
        best = slide.level_downsamples[level]
        if tile_l0 / best * FIELD_TOLERANCE < meta.input_size:
            raise SlideError(f"{slide.name}: level {level} holds fewer px per tile than the model's input")
    read_px = max(1, round(tile_l0 / best))
    return SlideGrid(
        tile_l0=tile_l0,
        level=chosen,
        downsample=best,
        read_px=read_px,
        rows=rows,
        cols=cols,
        x0=(w - cols * tile_l0) // 2,
        y0=(h - rows * tile_l0) // 2,
        field_um=float(field_um),
        mpp=slide.mpp,
    )
