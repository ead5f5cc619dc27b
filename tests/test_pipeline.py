"""The device data pipeline: conversion, augmentations, epoch orders, tile sources (in memory and lazy)."""

import h5py
import numpy as np
import pytest
import torch

from histo_core import augment as A
from histo_core import pipeline as P
from histo_core.config import Augment
from histo_core.datasets import Split


def _tiles(n=16, size=12, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, c), dtype=np.uint8)


def test_to_model_input_numpy_and_torch_agree_and_normalise():
    b = _tiles()
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.125]
    x = P.to_model_input(b, mean, std, "cpu")
    y = P.to_model_input(torch.from_numpy(b), mean, std, "cpu", channels_last=True)
    assert x.shape == (16, 3, 12, 12) and x.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x, y)
    expected = (b[3, 5, 7, 2] / 255.0 - 0.3) / 0.125
    assert float(x[3, 2, 5, 7]) == pytest.approx(expected, rel=1e-5)


def test_to_model_input_grayscale_and_resize():
    b = _tiles(c=1)[..., 0]  # (N, H, W)
    x = P.to_model_input(b, [0.5], [0.5], "cpu", size=24)
    assert x.shape == (16, 1, 24, 24)
    assert float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 1e-6


def test_to_model_input_rejects_float_input():
    with pytest.raises(TypeError):
        P.to_model_input(np.zeros((1, 4, 4, 3), np.float32), [0], [1], "cpu")


def _dihedral(img):
    out = []
    for k in range(4):
        r = torch.rot90(img, k, (1, 2))
        out += [r, r.flip(2)]
    return out


def test_flips_and_rot90_are_exact_symmetries_of_each_tile():
    x = P.to_float01(_tiles(64), "cpu")
    gen = torch.Generator().manual_seed(0)
    y = A.augment_batch(x, Augment(flip=True, rot90=True), gen)
    assert y.shape == x.shape and y.dtype == x.dtype
    changed = 0
    for a, b in zip(x, y):
        assert any(torch.equal(b, v) for v in _dihedral(a))  # a permutation of pixels, values untouched
        changed += not torch.equal(a, b)
    assert changed > 40  # 7/8 of the tiles should move


def test_no_augmentation_is_identity():
    x = P.to_float01(_tiles(), "cpu")
    aug = Augment(flip=False, rot90=False)
    assert not A.augmentation_active(aug)
    assert torch.equal(A.augment_batch(x, aug, torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize(
    "aug",
    [
        Augment(flip=False, rot90=False, rotate=15),
        Augment(flip=False, rot90=False, resized_crop=True, crop_scale=0.5),
        Augment(flip=False, rot90=False, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1),
        Augment(rotate=10, resized_crop=True, brightness=0.2, hue=0.05),
    ],
)
def test_augmentations_keep_shape_dtype_range_and_are_seeded(aug):
    x = P.to_float01(_tiles(32, 20), "cpu")
    a = A.augment_batch(x, aug, torch.Generator().manual_seed(5))
    b = A.augment_batch(x, aug, torch.Generator().manual_seed(5))
    c = A.augment_batch(x, aug, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, x)


def test_colour_jitter_on_grayscale_skips_colour_ops():
    x = P.to_float01(_tiles(8, c=1), "cpu")
    y = A.color_jitter(x, torch.Generator().manual_seed(0), saturation=0.5, hue=0.2)
    assert torch.equal(x, y)


def test_hue_zero_rotation_is_identity():
    x = P.to_float01(_tiles(4), "cpu")
    y = A.color_jitter(x, torch.Generator().manual_seed(0), hue=1e-9)
    assert torch.allclose(x, y, atol=1e-5)


def test_dihedral_views_are_eight_distinct():
    x = P.to_float01(_tiles(2), "cpu")
    views = A.dihedral_views(x)
    assert len(views) == 8
    assert len({v.numpy().tobytes() for v in views}) == 8


def test_epoch_permutation_and_shards():
    a = P.epoch_permutation(10, seed=1, epoch=0)
    assert sorted(a) == list(range(10)) and (a == P.epoch_permutation(10, 1, 0)).all()
    assert (a != P.epoch_permutation(10, 1, 1)).any()
    shards = [P.shard(a, r, 3) for r in range(3)]
    assert {len(s) for s in shards} == {4}  # padded so every rank runs as many steps
    assert set(np.concatenate(shards)) == set(range(10))


def test_batch_slices_drop_a_trailing_single_sample():
    assert [(s.start, s.stop) for s in P.batch_slices(9, 4)] == [(0, 4), (4, 8)]
    assert [(s.start, s.stop) for s in P.batch_slices(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert [(s.start, s.stop) for s in P.batch_slices(1, 4)] == [(0, 1)]


def test_chunk_order_visits_every_index_once_chunk_by_chunk():
    chunks = P.chunk_order(10_000, seed=0, epoch=2, chunk=4096)
    assert [len(c) for c in sorted(chunks, key=lambda c: c.min())] == [4096, 4096, 1808]
    for c in chunks:
        assert c.max() - c.min() < 4096 and c.min() % 4096 == 0
    assert sorted(np.concatenate(chunks)) == list(range(10_000))


def test_tile_source_in_memory_resident_and_gathered():
    imgs, labels = _tiles(20), np.arange(20) % 4
    split = Split("train", imgs, labels)
    resident = P.TileSource(split, "cpu")
    streamed = P.TileSource(split, "cpu", resident_max_bytes=0)
    assert resident.resident and not streamed.resident and not streamed.streamed
    idx = np.array([5, 1, 19, 1])
    assert np.array_equal(resident.gather(idx).numpy(), imgs[idx])
    assert np.array_equal(streamed.gather(idx).numpy(), imgs[idx])
    sub = P.TileSource(split, "cpu", indices=np.array([2, 4, 6]))
    assert len(sub) == 3 and np.array_equal(sub.gather([2]).numpy(), imgs[[6]])
    assert sub.labels.tolist() == [2, 0, 2]


class _CountingDataset:
    """An h5py dataset that records every read, to check that lazy sources read whole chunks."""

    def __init__(self, ds):
        self.ds, self.reads = ds, []
        self.shape = ds.shape

    def __getitem__(self, idx):
        self.reads.append(idx)
        return self.ds[idx]


def test_lazy_source_reads_contiguous_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "LAZY_CHUNK", 64)
    n = 200
    imgs = _tiles(n, 8)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = imgs
    with h5py.File(tmp_path / "x.h5", "r") as f:
        counting = _CountingDataset(f["x"])
        split = Split("train", counting, np.zeros(n), lazy=True)
        src = P.TileSource(split, "cpu")
        assert not src.resident and src.streamed
        order = np.concatenate(P.chunk_order(n, 0, 0, chunk=64))
        got = np.concatenate([src.gather(order[s : s + 16]).numpy() for s in range(0, n, 16)])
        assert np.array_equal(got, imgs[order])
        assert all(isinstance(r, slice) for r in counting.reads)  # sequential reads only
        assert len(counting.reads) == 4  # each of the 4 chunks read once
        assert not src._chunks  # every chunk dropped once all its tiles were served: nothing held after the epoch


def test_memmap_source_is_streamed_with_file_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "LAZY_CHUNK", 50)
    n = 130
    imgs = _tiles(n, 8)
    header = 1000  # data at an offset that is not a multiple of the page size, as inside an HDF5 file
    path = tmp_path / "tiles.bin"
    with open(path, "wb") as fh:
        fh.write(b"\0" * header)
        fh.write(imgs.tobytes())
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=header, shape=imgs.shape)
    split = Split("train", mm, np.arange(n) % 2)
    src = P.TileSource(split, "cpu")
    assert src.streamed and not src.resident and src.file_rows is not None
    assert np.array_equal(src.read_range(45, 105).numpy(), imgs[45:105])
    order = np.concatenate(P.chunk_order(n, 1, 0, chunk=50))
    got = np.concatenate([src.gather(order[s : s + 32]).numpy() for s in range(0, n, 32)])
    assert np.array_equal(got, imgs[order])
    assert np.array_equal(np.concatenate([b.numpy() for _, b in src.iter_sequential(40)]), imgs)
    # grayscale expanded to RGB on the way out
    gray = np.memmap(path, dtype=np.uint8, mode="r", offset=header, shape=(n, 8, 8))
    gsrc = P.TileSource(Split("train", gray, np.zeros(n), expand_to_rgb=True), "cpu")
    assert gsrc.read_range(0, 3).shape == (3, 8, 8, 3)


def test_to_float01_gives_contiguous_nchw_in_one_copy():
    tiles = _tiles(5, 6)
    x = P.to_float01(tiles, "cpu")
    assert x.is_contiguous() and x.shape == (5, 3, 6, 6)
    assert torch.equal(x, torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0)


def test_ood_colour_features_blockwise_and_from_uint8(monkeypatch):
    from histo_core import ood

    tiles = _tiles(70, 8)
    x01 = P.to_float01(tiles, "cpu")
    whole = ood.colour_features(x01)
    monkeypatch.setattr(ood, "COLOUR_BLOCK", 16)
    np.testing.assert_allclose(ood.colour_features(x01), whole, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ood.colour_features_uint8(tiles, None, None)[0], whole, rtol=1e-6, atol=1e-9)
    a = ood.calibrate(x01, None, "")
    b = ood.calibrate(None, None, "", features=ood.colour_features_uint8(tiles, None, None)[0])
    assert a["colour_threshold"] == pytest.approx(b["colour_threshold"])


def test_to_float01_channels_last_is_the_same_batch_in_the_models_memory_order():
    tiles = _tiles(6)
    plain = P.to_float01(tiles, "cpu")
    cl = P.to_float01(tiles, "cpu", channels_last=True)
    assert torch.equal(plain, cl) and plain.is_contiguous()
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    resized = P.to_float01(tiles, "cpu", 16, channels_last=True)
    assert resized.shape[-1] == 16 and resized.is_contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(3)
    flipped = A.augment_batch(cl, Augment(flip=True), gen)
    assert torch.equal(flipped, A.augment_batch(plain, Augment(flip=True), torch.Generator().manual_seed(3)))
