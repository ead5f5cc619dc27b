"""Class activation maps: every method, every architecture at its smallest input, localisation, flat maps,
hook hygiene, rendering, and non-uniform maps for real tiles through a model trained on real PathMNIST."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from histo_core.errors import HistoError
from histo_core.explain import (
    CAM_METHODS,
    class_index,
    compute_cams,
    heatmap,
    hook_count,
    overlay,
    uniform_maps,
    upscale_tile,
)
from histo_core.model_cache import load_model
from histo_core.model_meta import LoadedModel, ModelMeta
from histo_core.models import ARCHITECTURES, build_model
from histo_core.predict import predict
from histo_core.uploads import prepare_upload

torch.set_num_threads(2)


def meta_for(arch: str, size: int, k: int = 4, channels: int = 3) -> ModelMeta:
    return ModelMeta(arch, tuple(f"c{i}" for i in range(k)), size, channels, (0.5,) * channels, (0.25,) * channels)


def random_tiles(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_method_runs_and_releases_hooks(method):
    torch.manual_seed(0)
    model = build_model("simplecnn", 4, 3, 28).eval()
    meta = meta_for("simplecnn", 28)
    cams = compute_cams(model, meta, random_tiles(5, 28), method)
    assert cams.shape == (5, 28, 28) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    assert not uniform_maps(cams).any()
    assert hook_count(model) == 0  # nothing left attached between calls
    again = compute_cams(model, meta, random_tiles(2, 28, seed=1), method)
    assert again.shape == (2, 28, 28) and hook_count(model) == 0
    assert "_histo_cam_objects" not in model.__dict__  # no CAM object kept on the model
    assert all(p.grad is None for p in model.parameters())  # gradients freed


def test_scorecam_is_quiet_without_patching_the_library(capfd):
    import tqdm
    from pytorch_grad_cam import score_cam

    model = build_model("simplecnn", 4, 3, 28).eval()
    cams = compute_cams(model, meta_for("simplecnn", 28), random_tiles(3, 28), "ScoreCAM")
    out, err = capfd.readouterr()
    assert cams.shape == (3, 28, 28)
    assert out == "" and "it/s" not in err and "%|" not in err  # no tqdm bar per image
    assert score_cam.tqdm is tqdm  # the library's module is left as it was
    print("after", file=sys.stderr)  # stderr is restored once the call returns
    assert "after" in capfd.readouterr().err


def test_an_error_inside_the_cam_is_raised_not_printed(capfd, monkeypatch):
    """pytorch-grad-cam's context manager prints and swallows an IndexError; compute_cams must raise it."""
    model = build_model("simplecnn", 4, 3, 28).eval()
    meta = meta_for("simplecnn", 28)

    def broken(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="GradCAM: list index out of range"):
        compute_cams(model, meta, random_tiles(2, 28), "GradCAM")
    assert capfd.readouterr().out == "" and hook_count(model) == 0


def _sizes():
    for arch, spec in ARCHITECTURES.items():
        for size in sorted({spec.min_size, 28}):
            yield arch, size


@pytest.mark.parametrize("arch,size", list(_sizes()))
def test_every_architecture_at_its_smallest_input(arch, size):
    torch.manual_seed(0)
    model = build_model(arch, 4, 3, size).eval()
    cams = compute_cams(model, meta_for(arch, size), random_tiles(2, size), "GradCAM")
    assert cams.shape == (2, size, size)
    assert not uniform_maps(cams).any(), f"{arch} at {size} px gives a flat map: the CAM layer lost its spatial detail"
    # more than a handful of distinct levels: the map has spatial structure, not a 1x1 blob upsampled
    assert len(np.unique(np.round(cams[0], 3))) > 8
    assert hook_count(model) == 0


def test_grayscale_model():
    torch.manual_seed(0)
    model = build_model("cnn3", 3, 1, 28).eval()
    cams = compute_cams(model, meta_for("cnn3", 28, 3, 1), random_tiles(2, 28, channels=1), "GradCAM++")
    assert cams.shape == (2, 28, 28) and not uniform_maps(cams).any()


def _square_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class 1 tiles hold one bright 8x8 square at a random place; class 0 tiles do not."""
    tiles = rng.integers(60, 100, (n, 28, 28, 3)).astype(np.uint8)
    labels = np.arange(n) % 2
    where = np.zeros((n, 2), int)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, 20, 2)
        tiles[i, y : y + 8, x : x + 8] = 250
        where[i] = (y, x)
    return tiles, labels, where


def test_gradcam_points_at_the_evidence():
    """Train a small CNN to detect a bright square; its Grad-CAM must peak inside the square (this also
    catches transposed or flipped maps)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tiles, labels, _ = _square_data(128, rng)
    meta = meta_for("simplecnn", 28, k=2)
    model = build_model("simplecnn", 2, 3, 28)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    from histo_core.model_input import model_input

    x, y = model_input(tiles, meta, "cpu"), torch.from_numpy(labels)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    test_tiles, test_labels, where = _square_data(20, np.random.default_rng(1))
    positives = np.flatnonzero(test_labels)
    loaded = LoadedModel(model, meta, "trained-here")
    assert (predict(loaded, test_tiles).argmax(1) == test_labels).mean() >= 0.9
    cams = compute_cams(model, meta, test_tiles[positives], "GradCAM", targets=1)
    inside = 0
    for cam, (y0, x0) in zip(cams, where[positives]):
        py, px = np.unravel_index(np.argmax(cam), cam.shape)
        inside += (y0 - 2 <= py < y0 + 10) and (x0 - 2 <= px < x0 + 10)
    assert inside >= 0.8 * len(positives)


def test_targets_change_the_map_except_for_eigencam():
    torch.manual_seed(0)
    model = build_model("simplecnn", 4, 3, 28).eval()
    meta = meta_for("simplecnn", 28)
    tiles = random_tiles(3, 28)
    a = compute_cams(model, meta, tiles, "GradCAM", targets=0)
    b = compute_cams(model, meta, tiles, "GradCAM", targets=[1, 2, 3])
    assert not np.allclose(a, b, atol=1e-3)
    e0 = compute_cams(model, meta, tiles, "EigenCAM", targets=0)
    e1 = compute_cams(model, meta, tiles, "EigenCAM", targets=3)
    np.testing.assert_allclose(e0, e1, atol=1e-5)
    assert not CAM_METHODS["EigenCAM"].uses_target


def test_default_target_is_the_predicted_class():
    torch.manual_seed(0)
    model = build_model("simplecnn", 4, 3, 28).eval()
    meta = meta_for("simplecnn", 28)
    tiles = random_tiles(4, 28)
    pred = predict(LoadedModel(model, meta, "x"), tiles).argmax(1)
    np.testing.assert_allclose(
        compute_cams(model, meta, tiles, "GradCAM"),
        compute_cams(model, meta, tiles, "GradCAM", targets=pred),
        atol=1e-6,
    )


def test_flat_map_is_flagged():
    torch.manual_seed(0)
    model = build_model("simplecnn", 4, 3, 28).eval()
    with torch.no_grad():  # the hooked conv outputs zeros everywhere: nothing to localise
        model.features[3].weight.zero_()
        model.features[3].bias.zero_()
    cams = compute_cams(model, meta_for("simplecnn", 28), random_tiles(2, 28), "GradCAM")
    assert uniform_maps(cams).all()
    assert uniform_maps(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)).tolist() == [False]


def test_bad_targets_and_methods():
    model = build_model("simplecnn", 4, 3, 28).eval()
    meta = meta_for("simplecnn", 28)
    with pytest.raises(HistoError, match="--target must name one of the model's 4 classes"):
        compute_cams(model, meta, random_tiles(1, 28), "GradCAM", targets=7)
    with pytest.raises(HistoError, match="--cam must be one of"):
        compute_cams(model, meta, random_tiles(1, 28), "SaliencyMagic")
    assert class_index(meta, "C2") == 2 and class_index(meta, "3") == 3
    with pytest.raises(HistoError, match="not a class of this model"):
        class_index(meta, "TUM")


def test_overlay_rendering():
    tile = random_tiles(1, 28)[0]
    cam = np.tile(np.linspace(0, 1, 28, dtype=np.float32), (28, 1))
    only_tile = overlay(tile, cam, alpha=0.0, out_size=224)
    assert only_tile.shape == (224, 224, 3) and only_tile.dtype == np.uint8
    np.testing.assert_array_equal(only_tile[::8, ::8], tile)  # nearest-neighbour: each pixel an 8x8 block
    np.testing.assert_array_equal(overlay(tile, cam, alpha=1.0, out_size=224), heatmap(cam, 224))
    hm = heatmap(cam, 224)
    assert hm[100, 0, 2] > hm[100, 0, 0] and hm[100, -1, 0] > hm[100, -1, 2]  # low = blue (left), high = red (right)
    gray = overlay(tile[..., :1], cam, 0.5, 56)
    assert gray.shape == (56, 56, 3)
    assert upscale_tile(np.zeros((300, 300, 3), np.uint8), 224).shape == (224, 224, 3)
    with pytest.raises(ValueError):
        overlay(tile, cam, alpha=1.5)


# -- real tiles through a model trained on real PathMNIST ---------------------------------------------


def test_real_tiles_give_non_uniform_maps(trained_pathmnist_run, shared_data):
    loaded = load_model(trained_pathmnist_run.path)
    files = sorted((shared_data / "tiles" / "pathmnist-224").glob("*/*.png"))[::5] + sorted(
        (shared_data / "tiles" / "crc-he").glob("*/*/*.*")
    )
    files = [f for f in files if f.suffix.lower() in (".png", ".tif", ".jpg")]
    assert len(files) >= 15
    prepared = [prepare_upload(f.read_bytes(), f.name, loaded.meta) for f in files]
    assert all(p.ok for p in prepared), [p.error for p in prepared if not p.ok]
    tiles = np.stack([p.tile for p in prepared])
    for method in ("GradCAM", "HiResCAM", "EigenCAM"):
        cams = compute_cams(loaded.model, loaded.meta, tiles, method)
        assert cams.shape == (len(files), 28, 28)
        flat = uniform_maps(cams)
        assert flat.mean() <= 0.1, f"{method}: {flat.sum()} of {len(files)} real tiles give a flat map"
    assert hook_count(loaded.model) == 0


def test_cam_on_original_keeps_the_images_resolution_and_the_crop():
    from histo_core.explain import cam_on_original, model_field

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)  # the field the model saw (TileResult.field_view)
    cam = np.zeros((28, 28), np.float32)
    cam[10:18, 10:18] = 1.0
    field = model_field(image)
    np.testing.assert_array_equal(field, image)
    assert model_field(image[..., :1]).shape == (300, 300, 3)
    over = cam_on_original(image, cam, "overlay", alpha=0.4)
    assert over.shape == (300, 300, 3)
    corner = np.rint(field[0, 0].astype(float) * 0.6 + np.array([0, 0, 127.5]) * 0.4)  # jet(0) is dark blue
    assert np.abs(over[0, 0].astype(float) - corner).max() <= 2
    contour = cam_on_original(image, cam, "contour", threshold=0.5)
    changed = np.any(contour != field, axis=2)
    assert changed.any() and not changed[0].any() and not changed[150, 150]  # outline only, the inside untouched
    assert (contour[changed] == (0, 255, 0)).all()
    ys, xs = np.nonzero(changed)
    assert 90 < ys.min() < 120 and 180 < ys.max() < 210  # the 10..18 of 28 region, at 300 px
    square = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    assert cam_on_original(square, cam).shape == (224, 224, 3)
