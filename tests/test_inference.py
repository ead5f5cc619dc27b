"""Model loading (runs, files, exports, cache), preprocessing of every colour mode, batched prediction, TTA."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from histo_core import paths
from histo_core.checkpoint import save_checkpoint
from histo_core.errors import HistoError, ModelFileError
from histo_core.fsutil import write_json_atomic
from histo_core.image_decode import decode_image
from histo_core.image_decode import to_png_bytes as encode_png
from histo_core.model_cache import clear_cache, load_model
from histo_core.model_catalog import list_models
from histo_core.model_input import preprocess
from histo_core.model_meta import LoadedModel, ModelMeta
from histo_core.models import build_model
from histo_core.predict import predict, top_k
from histo_core.runs import RunDir, RunStatus
from histo_core.uploads import prepare_upload

CLASSES = ["ADI", "BACK", "TUM"]


def meta_dict(size=28, channels=3, arch="simplecnn"):
    return {
        "arch": arch,
        "num_classes": len(CLASSES),
        "in_channels": channels,
        "input_size": size,
        "classes": CLASSES,
        "mean": [0.5] * channels,
        "std": [0.25] * channels,
        "dataset": {"name": "pathmnist", "title": "PathMNIST (28 px)", "source": "medmnist", "synthetic": False},
    }


def make_run(root, run_id="20250101-000000-test", state="completed", synthetic=False, ckpt_name="best.pt", seed=0):
    run = RunDir(root / run_id)
    run.path.mkdir(parents=True)
    torch.manual_seed(seed)
    model = build_model("simplecnn", len(CLASSES), 3, 28)
    write_json_atomic(run.config_path, {"arch": "simplecnn", "dataset": "pathmnist", "size": 28})
    write_json_atomic(
        run.dataset_path,
        {
            "name": "pathmnist",
            "title": "PathMNIST (28 px)",
            "classes": CLASSES,
            "size": 28,
            "synthetic": synthetic,
            "extra": {"flag": "pathmnist"},
        },
    )
    run.write_status(RunStatus(state=state))
    write_json_atomic(run.results_path, {"test": {"accuracy": 0.75, "auc": 0.9}})
    save_checkpoint(run.path / ckpt_name, model, meta_dict())
    return run, model


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_cache()
    yield
    clear_cache()


# -- loading -------------------------------------------------------------------------------------------


def test_load_from_run_dir_id_and_file(tmp_path):
    run, model = make_run(paths.runs_dir())
    by_dir = load_model(run.path)
    assert by_dir.label == run.id and by_dir.source == str(run.best_ckpt.resolve())
    assert by_dir.meta.classes == tuple(CLASSES) and by_dir.meta.input_size == 28 and by_dir.meta.in_channels == 3
    assert by_dir.meta.native_tile_px == 224  # PathMNIST tiles are shrunk 224 px NCT-CRC-HE tiles
    assert not by_dir.model.training
    for a, b in zip(by_dir.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert load_model(run.id) is by_dir  # same file: the cached object
    assert load_model(run.best_ckpt) is by_dir


def test_run_without_best_uses_last(tmp_path):
    run, _ = make_run(paths.runs_dir(), ckpt_name="last.pt")
    assert load_model(run.path).source.endswith("last.pt")


def test_run_without_checkpoint_says_so():
    run = RunDir(paths.runs_dir() / "r1")
    run.path.mkdir(parents=True)
    write_json_atomic(run.config_path, {"dataset": "synthetic", "arch": "simplecnn"})
    run.write_status(RunStatus(state="running"))
    with pytest.raises(ModelFileError, match=r"r1: the run has no best.pt or last.pt yet \(state: running\)"):
        load_model("r1")


def test_load_export_by_name():
    weights = paths.weights_dir()
    save_checkpoint(weights / "crc-v1.pt", build_model("simplecnn", 3, 3, 28), meta_dict())
    loaded = load_model("crc-v1")
    assert loaded.label == "crc-v1" and loaded.meta.num_classes == 3


def test_unknown_model_spec():
    with pytest.raises(ModelFileError, match=r"nope: not a run directory, run id, model file or export name"):
        load_model("nope")
    with pytest.raises(ModelFileError, match=r"missing\.pt: no such model file"):
        load_model("missing.pt")
    with pytest.raises(ModelFileError, match="no model given"):
        load_model("  ")


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="bad.pt: not a"):
        load_model(bad)


def test_cache_reloads_a_rewritten_file(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("simplecnn", 3, 3, 28), meta_dict())
    first = load_model(path)
    time.sleep(0.01)
    save_checkpoint(path, build_model("simplecnn", 3, 3, 28), meta_dict())
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = load_model(path)
    assert second is not first


# -- preprocessing ---------------------------------------------------------------------------------------


def _encode(im: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


RGB224 = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
MODES = {
    "RGB": lambda: _encode(Image.fromarray(RGB224)),
    "L": lambda: _encode(Image.fromarray(RGB224[..., 0])),
    "RGBA": lambda: _encode(Image.fromarray(np.dstack([RGB224, np.full((224, 224), 200, np.uint8)]))),
    "LA": lambda: _encode(Image.fromarray(RGB224[..., :2].copy(), "LA")),
    "P": lambda: _encode(Image.fromarray(RGB224).convert("P")),
    "CMYK": lambda: _encode(Image.fromarray(RGB224).convert("CMYK"), "JPEG"),
    "1": lambda: _encode(Image.fromarray(RGB224[..., 0]).convert("1")),
    "I;16": lambda: _encode(Image.fromarray(RGB224[..., 0].astype(np.uint16) * 257), "TIFF"),
    "F": lambda: _encode(Image.fromarray(RGB224[..., 0].astype(np.float32) / 255.0, "F"), "TIFF"),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("channels", [3, 1])
def test_preprocess_every_mode(mode, channels):
    meta = ModelMeta.from_checkpoint(meta_dict(channels=channels))
    decoded = decode_image(MODES[mode](), f"x.{mode}.png")
    notes: list[str] = []
    tile = preprocess(decoded, meta, notes)
    assert tile.dtype == np.uint8 and tile.shape == (28, 28, channels)
    gray_source = decoded.channels == 1
    if channels == 3 and gray_source:
        assert any("repeated to 3 channels" in n for n in notes)
        assert np.array_equal(tile[..., 0], tile[..., 2])
    if channels == 1 and not gray_source:
        assert any("converted to grayscale" in n for n in notes)
    assert not any("at a scale" in n for n in notes)  # 224 px = PathMNIST's native field of view


def test_preprocess_resizes_with_area_filter():
    meta = ModelMeta.from_checkpoint(meta_dict())
    checker = (np.indices((224, 224)).sum(0) % 2 * 255).astype(np.uint8)
    tile = preprocess(np.dstack([checker] * 3), meta)
    assert abs(float(tile.mean()) - 127.5) < 3 and tile.std() < 10  # averaged, not aliased to black/white


def test_preprocess_takes_the_models_field_of_view_at_a_known_scale():
    meta = ModelMeta.from_checkpoint(meta_dict())  # PathMNIST: 224 px source tiles at 0.5 µm/px = 112 µm
    assert meta.field_um == pytest.approx(112.0)
    wide = np.zeros((460, 700, 3), np.uint8)
    wide[118:342, 238:462] = 255  # the centred 224x224 square is white
    notes: list[str] = []
    tile = preprocess(wide, meta, notes)
    assert tile.shape == (28, 28, 3) and tile.min() == 255
    assert any("centre 224x224 px (112 µm" in n and "large-image" in n for n in notes)
    notes.clear()
    preprocess(np.zeros((224, 224, 3), np.uint8), meta, notes)  # an NCT tile: exactly the field of view
    assert notes == []
    notes.clear()
    half = np.zeros((448, 448, 3), np.uint8)
    half[112:336, 112:336] = 255
    tile = preprocess(half, meta, notes, mpp=0.25)  # 448 px at 0.25 µm/px is the same 112 µm: all of it
    assert notes == [] and 60 < tile.mean() < 200
    notes.clear()
    preprocess(np.zeros((150, 150, 3), np.uint8), meta, notes, mpp=0.495)  # a Kather 2016 tile: 74 µm
    assert any("covers 74 µm, less than the 112 µm" in n for n in notes)
    notes.clear()
    preprocess(np.zeros((200, 200, 3), np.uint8), meta, notes)  # within tolerance of the field: no note
    assert notes == []


def test_preprocess_refuses_images_too_thin_to_hold_a_tile():
    from histo_core.errors import ImageError

    meta = ModelMeta.from_checkpoint(meta_dict())
    with pytest.raises(ImageError, match="too small to classify"):
        preprocess(np.zeros((1, 1000, 3), np.uint8), meta)
    result = prepare_upload(encode_png(np.zeros((1, 1000, 3), np.uint8)), "line.png", meta)
    assert not result.ok and "1000x1 px, too small to classify" in result.error


def test_preprocess_without_native_size_compares_with_input_size():
    d = meta_dict()
    d["dataset"] = {"name": "my-folder", "source": "folder"}
    meta = ModelMeta.from_checkpoint(d)
    notes: list[str] = []
    preprocess(np.zeros((224, 224, 3), np.uint8), meta, notes)
    assert any("8x larger than the training tiles (28 px)" in n for n in notes)


# -- prediction ------------------------------------------------------------------------------------------


class MeanColour(nn.Module):
    """Depends only on the mean colour: invariant to every flip and rotation."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


class TopLeftPixel(nn.Module):
    """Looks at one corner pixel: changes under every flip/rotation."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x[:, :, 0, 0])


def loaded_with(module: nn.Module) -> LoadedModel:
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, std=2.0)
    return LoadedModel(module.eval(), ModelMeta.from_checkpoint(meta_dict()), "test")


TILES = np.random.default_rng(2).integers(0, 256, (10, 28, 28, 3), dtype=np.uint8)


def test_predict_is_batched_consistently():
    loaded = LoadedModel(build_model("simplecnn", 3, 3, 28).eval(), ModelMeta.from_checkpoint(meta_dict()), "t")
    one = predict(loaded, TILES, batch_size=3)
    all_ = predict(loaded, TILES, batch_size=256)
    assert one.shape == (10, 3) and one.dtype == np.float32
    np.testing.assert_allclose(one, all_, atol=1e-5)
    np.testing.assert_allclose(one.sum(1), 1.0, atol=1e-5)


def test_tta_equals_plain_for_invariant_model():
    loaded = loaded_with(MeanColour())
    np.testing.assert_allclose(predict(loaded, TILES, tta=True), predict(loaded, TILES), atol=1e-5)


def test_tta_averages_the_eight_dihedral_views():
    loaded = loaded_with(TopLeftPixel())
    plain = predict(loaded, TILES)
    tta = predict(loaded, TILES, tta=True)
    assert not np.allclose(tta, plain, atol=1e-3)
    views = []
    for flip in (False, True):
        for k in range(4):
            v = np.rot90(TILES, k, axes=(1, 2))
            views.append(predict(loaded, np.ascontiguousarray(v[:, :, ::-1] if flip else v)))
    np.testing.assert_allclose(tta, np.mean(views, axis=0), atol=1e-5)


def test_predict_rejects_unprepared_tiles():
    loaded = loaded_with(MeanColour())
    with pytest.raises(ValueError, match="run preprocess"):
        predict(loaded, np.zeros((1, 224, 224, 3), np.uint8))


def test_top_k():
    probs = np.array([[0.1, 0.7, 0.2]])
    assert top_k(probs, CLASSES, 2) == [[("BACK", pytest.approx(0.7)), ("TUM", pytest.approx(0.2))]]


# -- picker ----------------------------------------------------------------------------------------------


def test_list_models_runs_and_exports():
    make_run(paths.runs_dir(), "20250101-000000-a", synthetic=True)
    make_run(paths.runs_dir(), "20250102-000000-running", state="running")
    save_checkpoint(paths.weights_dir() / "exp.pt", build_model("simplecnn", 3, 3, 28), meta_dict())
    write_json_atomic(
        paths.weights_dir() / "exp.json",
        {
            "name": "exp",
            "arch": "simplecnn",
            "classes": CLASSES,
            "input_size": 28,
            "in_channels": 3,
            "dataset": {"title": "PathMNIST (28 px)", "synthetic": False},
            "metrics": {"test_accuracy": 0.8},
        },
    )
    entries = list_models()
    assert [(e.kind, e.name) for e in entries] == [("run", "20250101-000000-a"), ("export", "exp")]
    run_entry, exp_entry = entries
    assert run_entry.synthetic and run_entry.label.startswith("SYNTHETIC") and "test accuracy 75.0%" in run_entry.label
    assert exp_entry.test_accuracy == 0.8 and not exp_entry.synthetic
    assert load_model(exp_entry.ref).meta.classes == tuple(CLASSES)
    assert load_model(run_entry.ref).label == "20250101-000000-a"


# -- uploads ---------------------------------------------------------------------------------------------


def test_classify_uploads_keeps_order_and_reports_bad_files():
    from histo_core.uploads import PREVIEW_PX, classify_uploads

    loaded = LoadedModel(build_model("simplecnn", 3, 3, 28).eval(), ModelMeta.from_checkpoint(meta_dict()), "t")
    big = _encode(Image.fromarray(np.zeros((600, 900, 3), np.uint8)))
    files = [("a.png", MODES["RGB"]()), ("bad.png", b"text"), ("../b.tif", MODES["I;16"]()), ("big.png", big)]
    results = classify_uploads(loaded, files)
    assert [r.name for r in results] == ["a.png", "bad.png", "b.tif", "big.png"]
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].error.startswith("bad.png: not an image") and results[1].probs is None
    assert results[2].tile.shape == (28, 28, 3) and any("repeated to 3 channels" in n for n in results[2].notes)
    assert results[3].preview.shape == (round(PREVIEW_PX * 2 / 3), PREVIEW_PX, 3) and (
        results[3].width,
        results[3].height,
    ) == (900, 600)
    assert any("centre 224x224 px" in n for n in results[3].notes)
    assert results[3].field_view.shape == (224, 224, 3)  # the part the model saw, for the CAM at full resolution
    direct = predict(loaded, np.stack([results[0].tile, results[2].tile]))
    np.testing.assert_allclose(np.stack([results[0].probs, results[2].probs]), direct, atol=1e-6)
    assert results[0].pred == int(direct[0].argmax()) and results[0].confidence == pytest.approx(float(direct[0].max()))
    assert classify_uploads(loaded, [("x.png", b"")])[0].error.startswith("x.png: empty file")


def test_classify_uploads_stain_normalises_each_tile_once(monkeypatch):
    """The model's view (shown, and checked against the training tiles) is the tiles it classifies: one stain
    normalisation per batch, not one for the view and another inside the forward pass."""
    from histo_core import stain
    from histo_core.uploads import classify_uploads

    rng = np.random.default_rng(0)
    tissue = (rng.random((8, 28, 28, 3)) * np.array([120, 60, 140]) + np.array([100, 40, 90])).astype(np.uint8)
    meta = {**meta_dict(), "stain": stain.fit_reference("reinhard", tissue)}
    loaded = LoadedModel(build_model("simplecnn", 3, 3, 28).eval(), ModelMeta.from_checkpoint(meta), "t")
    files = [(f"{i}.png", encode_png(tile)) for i, tile in enumerate(tissue[:3])]
    direct = predict(loaded, np.stack([decode_image(data, name).array for name, data in files]))
    real, calls = stain.normalize_batch, []

    def counted(x01, ref):
        calls.append(len(x01))
        return real(x01, ref)

    monkeypatch.setattr(stain, "normalize_batch", counted)
    results = classify_uploads(loaded, files)
    assert calls == [3]  # once, for the batch of three tiles
    np.testing.assert_allclose(np.stack([r.probs for r in results]), direct, atol=1e-5)
    assert all(r.model_view is not None and r.model_view.shape == (28, 28, 3) for r in results)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_requested_without_gpu(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("simplecnn", 3, 3, 28), meta_dict())
    with pytest.raises(HistoError, match="--device cuda: no CUDA GPU is available here"):
        load_model(path, device="cuda")
