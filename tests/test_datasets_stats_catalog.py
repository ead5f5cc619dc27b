"""Pixel statistics on bounded samples, per-class sample picking, and the catalog of available datasets."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from histo_core.datasets import Split, open_dataset
from histo_core.datasets.catalog import (
    CATALOG_FILE,
    add_local_dataset,
    available_datasets,
    default_dataset_spec,
    local_datasets,
    remove_local_dataset,
)
from histo_core.datasets.stats import class_sample_indices, pixel_stats, sample_indices, samples_per_class
from histo_core.errors import DatasetError
from tests.test_datasets_sources import make_class_folders, write_medmnist_npz


class CountingArray:
    """An array that counts how many tiles were read (to prove nothing decodes a whole split)."""

    def __init__(self, array):
        self.array, self.shape, self.rows_read = array, array.shape, 0

    def __getitem__(self, idx):
        out = self.array[idx]
        self.rows_read += out.shape[0] if out.ndim == 4 else 1
        return out


def test_pixel_stats_exact_on_small_split():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    stats = pixel_stats(Split("train", images, np.zeros(50)))
    flat = images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(stats.mean, flat.mean(axis=0) / 255, rtol=1e-12)
    np.testing.assert_allclose(stats.std, flat.std(axis=0) / 255, rtol=1e-9)
    hist = np.asarray(stats.histograms)
    assert hist.shape == (3, 256) and (hist.sum(axis=1) == 50 * 64).all()
    assert hist[1, 17] == (images[..., 1] == 17).sum()
    assert not stats.sampled and stats.n_tiles == 50


def test_pixel_stats_reads_a_bounded_seeded_sample():
    images = np.zeros((20000, 4, 4, 1), np.uint8)
    images[10000:] = 200
    counting = CountingArray(images)
    stats = pixel_stats(Split("train", counting, np.zeros(20000)), max_tiles=1000, seed=1)
    assert counting.rows_read == 1000 and stats.sampled and stats.n_total == 20000
    assert 0.3 < stats.mean[0] / (200 / 255) < 0.7  # about half the sample from each half
    again = pixel_stats(Split("train", images, np.zeros(20000)), max_tiles=1000, seed=1)
    assert again.mean == stats.mean


def test_sample_indices_and_class_samples_come_from_labels_only():
    assert sample_indices(10, 100).tolist() == list(range(10))
    idx = sample_indices(100000, 500, seed=3)
    assert len(idx) == 500 and len(set(idx.tolist())) == 500 and (np.diff(idx) > 0).all()
    labels = np.arange(1000) % 4
    picked = class_sample_indices(labels, 2, 10, seed=0)
    assert len(picked) == 10 and (labels[picked] == 2).all()
    assert class_sample_indices(labels, 2, 10, seed=1).tolist() != picked.tolist()
    assert len(class_sample_indices(labels, 3, 10000)) == 250
    counting = CountingArray(np.zeros((1000, 2, 2, 3), np.uint8))
    per_class = samples_per_class(Split("val", counting, labels), 6)
    assert sorted(per_class) == [0, 1, 2, 3] and counting.rows_read == 0


def test_available_datasets_default_is_synthetic_without_real_data(tmp_path):
    found = available_datasets(tmp_path)
    assert [d.spec for d in found] == ["synthetic"] and found[0].synthetic
    assert default_dataset_spec(tmp_path) == "synthetic"


def test_available_datasets_lists_downloads_and_added_paths(tmp_path):
    write_medmnist_npz(tmp_path / "tissuemnist_64.npz", size=64, channels=1, classes=8)
    write_medmnist_npz(tmp_path / "tissuemnist.npz", channels=1, classes=8)
    write_medmnist_npz(tmp_path / "chestmnist.npz")  # multi-label set: never offered
    make_class_folders(tmp_path / "folder", classes=("ADI", "TUM"), per_class=3)
    add_local_dataset(tmp_path / "folder", tmp_path)
    found = {d.spec: d for d in available_datasets(tmp_path)}
    assert list(found) == ["synthetic", "tissuemnist", str(tmp_path / "folder")]
    assert found["tissuemnist"].sizes == (28, 64) and found["tissuemnist"].channels == 1
    folder = found[str(tmp_path / "folder")]
    assert folder.user_added and folder.source == "folder" and None in folder.sizes
    assert default_dataset_spec(tmp_path) == "tissuemnist"


def test_add_local_dataset_validates_and_persists(tmp_path):
    write_medmnist_npz(tmp_path / "a.npz")
    ds = add_local_dataset(str(tmp_path / "a.npz"), tmp_path)
    assert ds.split_sizes()["train"] == 12
    stored = json.loads((tmp_path / CATALOG_FILE).read_text())
    assert stored["datasets"][0]["path"] == str(tmp_path / "a.npz")
    add_local_dataset(tmp_path / "a.npz", tmp_path)  # adding twice keeps one entry
    assert local_datasets(tmp_path) == [str(tmp_path / "a.npz")]
    with pytest.raises(DatasetError, match="no such file or folder"):
        add_local_dataset(tmp_path / "missing", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        add_local_dataset(tmp_path / "empty", tmp_path)
    assert local_datasets(tmp_path) == [str(tmp_path / "a.npz")]
    assert remove_local_dataset(tmp_path / "a.npz", tmp_path) and local_datasets(tmp_path) == []
    assert not remove_local_dataset(tmp_path / "a.npz", tmp_path)


def test_added_csv_keeps_its_column_options(tmp_path):
    make_class_folders(tmp_path / "imgs", classes=("ADI", "TUM"), per_class=3)
    rows = ["f,dx"] + [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted((tmp_path / "imgs").rglob("*.*"))]
    (tmp_path / "m.csv").write_text("\n".join(rows))
    add_local_dataset(f"{tmp_path / 'm.csv'}?image=f&label=dx", tmp_path)
    spec = local_datasets(tmp_path)[0]
    assert spec == f"{tmp_path / 'm.csv'}?image=f&label=dx"
    assert open_dataset(spec, data_dir=tmp_path).info.classes == ["ADI", "TUM"]


def test_moved_local_dataset_is_not_offered(tmp_path):
    write_medmnist_npz(tmp_path / "a.npz")
    add_local_dataset(tmp_path / "a.npz", tmp_path)
    os.rename(tmp_path / "a.npz", tmp_path / "b.npz")
    assert [d.spec for d in available_datasets(tmp_path)] == ["synthetic"]
    assert local_datasets(tmp_path) == [str(tmp_path / "a.npz")]
