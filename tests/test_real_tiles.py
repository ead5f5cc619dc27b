"""Answers you can trust on real tiles: one image path, stain normalisation and augmentation, the model's world
(field of view, stain reference, "unlike the training tiles" calibration), the shipped model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histo_core import ood, paths, stain
from histo_core.checkpoint import save_checkpoint
from histo_core.datasets import open_dataset
from histo_core.image_decode import make_tile
from histo_core.model_cache import load_model
from histo_core.model_catalog import list_models
from histo_core.model_meta import ModelMeta
from histo_core.models import build_model
from histo_core.uploads import classify_uploads, prepare_upload

CLASSES = ["a", "b", "c"]


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def sample_files() -> dict[str, bytes]:
    """One file of every kind the image path must treat alike: 8/16-bit, palette, RGBA, CMYK, grayscale, oblong."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, rng.integers(0, 256, (40, 40), dtype=np.uint8)])
    deep = (rng.integers(0, 4096, (40, 40)) * 16).astype(np.uint16)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "rgb8.png": encode(Image.fromarray(rgb)),
        "gray16.png": encode(Image.fromarray(deep)),
        "palette.png": encode(pal),
        "rgba.png": encode(Image.fromarray(rgba, "RGBA")),
        "cmyk.jpg": encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
        "gray8.png": encode(Image.fromarray(rgb[..., 0])),
        "oblong.png": encode(Image.fromarray(rng.integers(0, 256, (30, 70, 3), dtype=np.uint8))),
        "tiff16.tif": encode(Image.fromarray(deep), "TIFF"),
    }


def folder_meta(size: int, channels: int) -> ModelMeta:
    """A model trained on an image folder of unknown scale (no field of view)."""
    return ModelMeta(
        arch="simplecnn",
        classes=tuple(CLASSES),
        input_size=size,
        in_channels=channels,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        dataset={"name": "folder", "source": "folder"},
    )


@pytest.mark.parametrize("channels", [3, 1])
def test_one_file_one_tile_through_the_dataset_and_an_upload(tmp_path, channels):
    files = sample_files()
    if channels == 1:  # an all-grayscale folder keeps one channel
        files = {f"{c}-{k}": v for k, v in files.items() if k.startswith("gray") for c in "xyz"}
    root = tmp_path / "ds"
    for i, (name, data) in enumerate(files.items()):
        folder = root / CLASSES[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    ds = open_dataset(root, size=24)
    assert ds.info.channels == channels
    meta = folder_meta(24, channels)
    seen = 0
    for split in ds.splits.values():
        for k, name in enumerate(split.tile_names):
            tile = split.get([k])[0]
            upload = prepare_upload((root / name).read_bytes(), Path(name).name, meta)
            assert upload.ok, upload.error
            assert np.array_equal(tile, upload.tile), name
            seen += 1
    assert seen == len(list(root.rglob("*.*")))


def test_make_tile_crops_the_centre_square_and_refuses_slivers():
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, 20:40] = 255
    assert make_tile(img, 10, 3).min() == 255
    from histo_core.errors import ImageError

    with pytest.raises(ImageError, match="too small"):
        make_tile(np.zeros((1, 100000, 3), np.uint8), 28, 3)


# -- stain ----------------------------------------------------------------------------------------------


def he_tile(seed: int = 0, size: int = 32, stain_matrix=None) -> np.ndarray:
    """A synthetic H&E tile: random haematoxylin and eosin concentrations through Macenko's reference vectors."""
    rng = np.random.default_rng(seed)
    he = np.asarray(
        stain_matrix if stain_matrix is not None else [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]]
    )
    conc = np.stack([rng.gamma(2.0, 0.4, (size, size)), rng.gamma(2.0, 0.3, (size, size))], -1)
    conc[: size // 4, : size // 4] = 0.0  # some background
    rgb = 240.0 * np.exp(-(conc @ he.T))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def hed_shift(tile: np.ndarray, h: float, e: float) -> np.ndarray:
    """The same tissue stained differently: haematoxylin x h, eosin x e in HED space."""
    x = torch.from_numpy(tile).permute(2, 0, 1)[None].float() / 255
    hed = torch.einsum("nihw,ij->njhw", torch.log(x.clamp_min(1e-6)) / stain._LOG_ADJUST, stain._HED_FROM_RGB)
    hed = hed * torch.tensor([h, e, 1.0]).view(1, 3, 1, 1)
    out = torch.exp(torch.einsum("njhw,ji->nihw", hed, stain._RGB_FROM_HED) * stain._LOG_ADJUST).clamp(0, 1)
    return (out[0].permute(1, 2, 0) * 255).round().byte().numpy()


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normaliser_maps_a_stain_shifted_copy_back_and_leaves_its_reference_alone(method):
    tiles = np.stack([he_tile(s) for s in range(8)])
    ref = stain.fit_reference(method, tiles)
    json.dumps(ref)  # saved with the run and the card
    assert method != "macenko" or ref["version"] == stain.MACENKO_VERSION
    original = tiles[0]
    shifted = hed_shift(original, 1.6, 0.6)
    before = np.abs(shifted.astype(float) - original).mean()
    back = stain.normalize_uint8(shifted[None], ref)[0]
    after = np.abs(back.astype(float) - original).mean()
    assert before > 10 and after < before / 2, (before, after)
    unchanged = stain.normalize_uint8(original[None], ref)[0]
    assert np.abs(unchanged.astype(float) - original).mean() < 6  # an already-normalised tile barely moves


def test_normaliser_keeps_blank_and_grayscale_input_valid():
    ref = stain.fit_reference("macenko", np.stack([he_tile(s) for s in range(4)]))
    blank = np.full((1, 16, 16, 3), 250, np.uint8)
    out = stain.normalize_uint8(blank, ref)
    assert out.shape == blank.shape and out.dtype == np.uint8
    gray = torch.rand(2, 1, 8, 8)
    assert torch.equal(stain.normalize_batch(gray, ref), gray)
    with pytest.raises(ValueError, match="RGB"):
        stain.fit_reference("macenko", np.zeros((2, 8, 8, 1), np.uint8))


# A Macenko reference as fitted on the real PathMNIST tiles (weights/pathmnist-resnet9-macenko.json).
PATHMNIST_REF = {
    "method": "macenko",
    "version": 2,
    "stain_matrix": [[0.444, 0.254], [0.791, 0.865], [0.421, 0.432]],
    "max_concentration": [1.21, 0.89],
}


def test_glass_brighter_than_the_default_white_level_is_background_stain_not_white_with_specks():
    """Glass scanned at ~244 (above Io = 240) is glass: measured against the tile's own white level, its faint
    texture is rescaled into the uniform stain NCT-CRC-HE-100K's (hence PathMNIST's) background tiles show.
    Against a fixed Io its OD was negative: it stayed white apart from a few magnified black specks."""
    rng = np.random.default_rng(0)
    glass = np.clip(np.array([244, 244, 245]) + rng.normal(0, 1.5, (28, 28, 3)), 0, 255).astype(np.uint8)
    out = stain.normalize_uint8(glass[None], PATHMNIST_REF)[0].reshape(-1, 3).astype(float)
    assert out.mean(0).sum() < 600  # stained, not white (was ~762)
    assert np.percentile(out.sum(1), 1) > 250  # and no near-black specks
    # A reference fitted before (no version: the shipped macenko model's) keeps the maths it was trained with.
    v1 = {k: v for k, v in PATHMNIST_REF.items() if k != "version"}
    assert stain.normalize_uint8(glass[None], v1)[0].reshape(-1, 3).astype(float).mean(0).sum() > 740


def test_bare_glass_becomes_uniform_like_the_flattest_training_tiles(shared_data):
    """Version 3: Kather 2016's EMPTY tiles are glass with a faint texture (uneven light, dust); v2 magnified the
    texture into a mottled pale stain (read as mucus or adipose). Now any bare glass becomes one uniform colour:
    that of the flattest training tiles normalised, which on PathMNIST are its background tiles."""
    from histo_core.datasets import open_dataset

    train = open_dataset(str(shared_data / "pathmnist-mini" / "pathmnist.npz")).split("train")
    tiles, labels = np.asarray(train.get(np.arange(len(train)))), np.asarray(train.labels)
    ref = stain.fit_reference("macenko", tiles)
    assert ref["version"] == 3 and len(ref["glass_concentration"]) == 2
    background = stain.normalize_uint8(tiles[labels == 1], ref).reshape(-1, 3).astype(float).mean(0)
    empty = sorted((shared_data / "tiles" / "kather2016" / "08_EMPTY").glob("*.tif"))
    glass = np.stack([make_tile(np.asarray(Image.open(p).convert("RGB")), 28, 3) for p in empty])
    out = stain.normalize_uint8(glass, ref).astype(float)
    assert out.std(axis=(1, 2)).max() < 1.0  # uniform: no magnified texture
    assert np.abs(out.mean(axis=(1, 2)) - background).max() < 15, (out.mean(axis=(1, 2)), background)
    v2 = stain.normalize_uint8(glass, {**ref, "version": 2}).astype(float)
    assert v2.std(axis=(1, 2)).mean() > 5  # what version 2 references still do: the texture, magnified
    # Tissue is never taken for glass: not the pale eosin-only debris tile, not a mostly empty adipose tile.
    for cls in ("DEB", "ADI"):
        path = next((shared_data / "tiles" / "crc-he" / "NCT-CRC-HE-100K-NONORM" / cls).iterdir())
        tile = make_tile(np.asarray(Image.open(path).convert("RGB")), 28, 3)
        assert stain.normalize_uint8(tile[None], ref).astype(float).std(axis=(1, 2)).max() > 3, cls


def test_a_pale_eosin_only_tile_keeps_its_colour(shared_data):
    """NCT-CRC-HE-100K-NONORM's debris tile is uniform pale pink: too little 'tissue' (red OD < beta) for its own
    stain vectors, and a tiny haematoxylin percentile. Negative concentrations, magnified by that percentile,
    used to turn it white with black specks (then classified as adipose); clamped at zero, it stays pink."""
    path = next((shared_data / "tiles" / "crc-he" / "NCT-CRC-HE-100K-NONORM" / "DEB").iterdir())
    tile = make_tile(np.asarray(Image.open(path).convert("RGB")), 28, 3)
    out = stain.normalize_uint8(tile[None], PATHMNIST_REF)[0].reshape(-1, 3).astype(float)
    assert np.abs(out.mean(0) - tile.reshape(-1, 3).mean(0)).max() < 25, out.mean(0)


def test_stain_jitter_keeps_shape_dtype_range_and_is_reproducible():
    x = torch.from_numpy(np.stack([he_tile(s) for s in range(6)])).permute(0, 3, 1, 2).float() / 255
    a = stain.hed_jitter(x, 0.05, torch.Generator().manual_seed(3))
    b = stain.hed_jitter(x, 0.05, torch.Generator().manual_seed(3))
    c = stain.hed_jitter(x, 0.05, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float((a - x).abs().mean()) > 0.005
    assert torch.equal(stain.hed_jitter(x, 0.0, torch.Generator()), x)


# -- the model's world: card, field of view, "unlike the training tiles" ------------------------------------


def save_model(path: Path, **extra) -> dict:
    torch.manual_seed(0)
    model = build_model("simplecnn", 3, 3, 28)
    tiles = np.stack([he_tile(s, 28) for s in range(60)])
    ref = stain.fit_reference("macenko", tiles)
    given = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    seen = stain.normalize_batch(given, ref)
    calib = ood.calibrate(seen, None, "", input_features=ood.colour_features(given))  # untrained: colour checks only
    meta = {
        "arch": "simplecnn",
        "num_classes": 3,
        "in_channels": 3,
        "input_size": 28,
        "classes": CLASSES,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "stain": ref,
        "tta": True,
        "dataset": {
            "name": "pathmnist",
            "title": "PathMNIST",
            "source": "medmnist",
            "synthetic": False,
            "extra": {"flag": "pathmnist"},
        },
    }
    save_checkpoint(path, model, meta, ood=calib, **extra)
    return {"stain": ref, "ood": calib}


def test_checkpoint_carries_the_models_world(tmp_path):
    saved = save_model(tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    meta = loaded.meta
    assert meta.stain == saved["stain"] and meta.tta is True
    assert meta.ood["colour_threshold"] == pytest.approx(saved["ood"]["colour_threshold"])
    assert meta.field_um == pytest.approx(112.0) and meta.native_tile_px == 224 and meta.source_mpp == 0.5


def test_unlike_training_flag_fires_on_noise_and_not_on_tissue(tmp_path):
    save_model(tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    rng = np.random.default_rng(1)
    noise = encode(Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)))
    tissue = encode(Image.fromarray(he_tile(99, 28)))  # a new tile of the training kind
    results = classify_uploads(loaded, [("noise.png", noise), ("tissue.png", tissue)])
    assert results[0].unlike_training and "unlike the training tiles" in results[0].unlike_training
    assert results[1].unlike_training is None
    assert results[1].model_view is not None and results[1].model_view.shape == (28, 28, 3)


def test_input_colour_check_sees_what_normalisation_hides():
    """A stain-normalised model checks the tile as given too: normalisation can turn noise into a plausible
    stain, which the check on the model's view alone misses."""
    given = torch.from_numpy(np.stack([he_tile(s, 28) for s in range(40)])).permute(0, 3, 1, 2).float() / 255
    seen = given * 0.9  # stands for the normalised tiles
    calib = ood.calibrate(seen, None, "", input_features=ood.colour_features(given))
    assert calib["input_colour_tiles"] == 40 and calib["input_colour_threshold"] > 0
    noise = torch.from_numpy(np.random.default_rng(0).random((2, 3, 28, 28), dtype=np.float32))
    looks_fine = seen[:2]  # what the model sees is in range; what was given is noise
    probs = np.full((2, 3), 1 / 3)
    flags, reasons = ood.flag_tiles(calib, probs, looks_fine, torch.cat([noise[:1], given[:1]]))
    assert flags.tolist() == [True, False]
    assert reasons[0] == "colours and contrast unlike the training tiles even before stain normalisation"
    assert not ood.flag_tiles(calib, probs, looks_fine)[0].any()  # the input check needs the input
    # the flag's one threshold scales the checks calibrated on held-out tiles, not the colour checks' own
    calib["combined"] = {"threshold": 3.0}
    assert ood.flag_tiles(calib, probs, looks_fine, torch.cat([noise[:1], given[:1]]))[0].tolist() == [True, False]
    assert "input_colour_mean" not in ood.calibrate(seen, None, "")  # no normalisation: no input check


def test_confidence_check_uses_the_held_out_quantile():
    seen = torch.from_numpy(np.stack([he_tile(s, 28) for s in range(40)])).permute(0, 3, 1, 2).float() / 255
    heldout = np.stack([np.linspace(0.5, 0.99, 40), np.zeros(40), np.zeros(40)], 1)
    calib = ood.calibrate(seen, heldout, "val")
    assert calib["confidence_split"] == "val" and 0.5 < calib["confidence_threshold"] < 0.6
    flags, reasons = ood.flag_tiles(calib, np.array([[0.45, 0.3, 0.25], [0.95, 0.03, 0.02]]), seen[:2])
    assert flags.tolist() == [True, False] and "lower than the model gives its own val tiles" in reasons[0]
    assert ood.flag_tiles(None, heldout, None) is None


def test_shipped_model_card_round_trips_and_is_offered(shipped_model):
    card = json.loads(shipped_model.with_suffix(".json").read_text())
    for key in (
        "arch",
        "classes",
        "input_size",
        "in_channels",
        "field_of_view",
        "stain",
        "training",
        "metrics",
        "real_tiles",
        "dataset",
    ):
        assert key in card, key
    loaded = load_model(shipped_model)
    assert list(loaded.meta.classes) == card["classes"] and loaded.meta.input_size == card["input_size"]
    assert loaded.meta.stain == card["stain"] and loaded.meta.field_um == card["field_of_view"]["field_um"]
    assert loaded.meta.ood is not None
    entries = [e for e in list_models() if e.kind == "shipped"]
    assert card["name"] in [e.name for e in entries] and all(e.cv_accuracy for e in entries)
    from pages.ui.classify import model_label

    assert all(" · ready-made · " in model_label(e) for e in entries)
    assert load_model(card["name"]).source == str(shipped_model.resolve())  # by name, as predict takes it
    assert paths.shipped_weights_dir() == shipped_model.parent
