"""Large images cut into a centred grid of tiles, classified, rendered as a class map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from histo_core.errors import HistoError
from histo_core.image_decode import decode_image
from histo_core.model_cache import load_model
from histo_core.model_meta import LoadedModel, ModelMeta
from histo_core.tiling import (
    MAX_TILES,
    class_colours,
    classify_large_image,
    default_tile_px,
    legend,
    plan_grid,
    render_class_map,
)


class RedVsBlue(nn.Module):
    """Class 0 when the tile is mostly red, class 1 when mostly blue (normalised input, mean 0.5 std 0.25)."""

    def forward(self, x):
        r, b = x[:, 0].mean((1, 2)), x[:, 2].mean((1, 2))
        return torch.stack([r - b, b - r], 1) * 10


def loaded(size=28, native=None) -> LoadedModel:
    meta = ModelMeta("simplecnn", ("red", "blue"), size, 3, (0.5,) * 3, (0.25,) * 3, {}, native)
    return LoadedModel(RedVsBlue(), meta, "test")


def red_blue_image(h: int, w: int, blue_from_col: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 220
    img[:, blue_from_col:, 0] = 0
    img[:, blue_from_col:, 2] = 220
    return img


def test_plan_grid_is_centred():
    assert plan_grid(460, 700, 224) == (2, 3, 6, 14)
    assert plan_grid(448, 448, 224) == (2, 2, 0, 0)
    with pytest.raises(
        HistoError, match=r"150x150 px, smaller than one 224 px tile; choose a tile size of at most 150"
    ):
        plan_grid(150, 150, 224)
    with pytest.raises(HistoError, match="at least 8 px"):
        plan_grid(100, 100, 4)
    with pytest.raises(HistoError, match=f"more than {MAX_TILES:,}"):
        plan_grid(5000, 5000, 16)


def test_class_map_follows_the_image():
    img = red_blue_image(300, 500, blue_from_col=250)  # left half red, right half blue
    cmap = classify_large_image(loaded(), img, tile_px=50)
    assert (cmap.rows, cmap.cols, cmap.top, cmap.left) == (6, 10, 0, 0)
    expected = np.zeros((6, 10), int)
    expected[:, 5:] = 1
    np.testing.assert_array_equal(cmap.pred, expected)
    assert cmap.counts() == {"red": 30, "blue": 30}
    assert cmap.probs.shape == (6, 10, 2) and np.allclose(cmap.probs.sum(2), 1, atol=1e-5)
    assert cmap.cell_box(1, 2) == (50, 100, 100, 150)
    rows = cmap.table()
    assert len(rows) == 60 and rows[9]["prediction"] == "blue" and rows[0]["prediction"] == "red"
    assert not cmap.notes


def test_margins_noted_and_progress_reported():
    calls = []
    cmap = classify_large_image(
        loaded(),
        red_blue_image(460, 700, 350),
        tile_px=224,
        batch_tiles=4,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert (cmap.rows, cmap.cols) == (2, 3)
    assert any("margins of 28 px (width) and 12 px (height)" in n for n in cmap.notes)
    assert calls == [(4, 6), (6, 6)]


def test_default_tile_size():
    assert default_tile_px(loaded(native=224).meta) == 224
    assert default_tile_px(loaded(size=64).meta) == 224
    assert default_tile_px(loaded(native=150).meta) == 150


def test_render_and_legend():
    img = red_blue_image(300, 500, 250)
    cmap = classify_large_image(loaded(), img, tile_px=50)
    rgb = render_class_map(img, cmap, alpha=1.0, grid_lines=False)
    colours = class_colours(2)
    assert rgb.shape == (300, 500, 3)
    assert tuple(rgb[10, 10]) == tuple(colours[0]) and tuple(rgb[10, 490]) == tuple(colours[1])
    lines = render_class_map(img, cmap, alpha=0.0, grid_lines=True)
    assert tuple(lines[50, 20]) == (255, 255, 255) and tuple(lines[20, 20]) == (220, 0, 0)
    small = render_class_map(img, cmap, max_px=250)
    assert small.shape == (150, 250, 3)
    leg = legend(cmap)
    assert [(r["class"], r["tiles"]) for r in leg] == [("red", 30), ("blue", 30)]
    assert leg[0]["colour"].startswith("#") and leg[0]["share"] == 0.5
    assert len({tuple(c) for c in class_colours(25)}) == 25


def test_class_map_colours_stand_out_on_he():
    """No pink, purple, mauve or grey (they blend into H&E): each of the first 14 colours is far from those."""
    import colorsys

    colours = class_colours(14)
    assert len({tuple(c) for c in colours}) == 14
    for r, g, b in colours / 255.0:
        h, light, sat = colorsys.rgb_to_hls(r, g, b)
        grey = sat < 0.15 and 0.15 < light < 0.9
        pink_purple = 0.72 < h < 0.95 and sat > 0.15 and light > 0.2  # (crimson red, h 0.96, stands out)
        assert not grey and not pink_purple, (r, g, b)


def test_real_breakhis_image(trained_pathmnist_run, shared_data):
    files = sorted((shared_data / "tiles" / "breakhis-400x").rglob("*.png"))
    if not files:
        pytest.skip("no BreaKHis sample")
    decoded = decode_image(files[0].read_bytes(), files[0].name)
    model = load_model(trained_pathmnist_run.path)
    cmap = classify_large_image(model, decoded.array)  # default: PathMNIST's 224 px field of view
    assert cmap.tile_px == 224 and (cmap.rows, cmap.cols) == (460 // 224, 700 // 224)
    assert sum(cmap.counts().values()) == cmap.rows * cmap.cols
    assert render_class_map(decoded.array, cmap).shape == (460, 700, 3)
