"""Label noise: rates, modes, reproducibility, and that only training labels are ever touched."""

import numpy as np
import torch

from histo_core.noise import batch_noise, fixed_noise


def test_fixed_noise_flips_the_stated_fraction_to_other_classes():
    labels = np.repeat(np.arange(6), 200)
    noisy, flipped = fixed_noise(labels, 0.3, 6, seed=1)
    assert flipped.sum() == 360  # exactly round(0.3 * 1200)
    assert (noisy[flipped] != labels[flipped]).all()
    assert (noisy[~flipped] == labels[~flipped]).all()
    # symmetric: wrong labels spread over the other classes
    counts = np.bincount((noisy[flipped] - labels[flipped]) % 6, minlength=6)
    assert counts[0] == 0 and counts[1:].min() > 40
    again, _ = fixed_noise(labels, 0.3, 6, seed=1)
    other, _ = fixed_noise(labels, 0.3, 6, seed=2)
    assert (again == noisy).all() and (other != noisy).any()


def test_pair_noise_moves_k_to_k_plus_one():
    labels = np.repeat(np.arange(4), 50)
    noisy, flipped = fixed_noise(labels, 0.5, 4, seed=0, mode="pair")
    assert flipped.sum() == 100
    assert (noisy[flipped] == (labels[flipped] + 1) % 4).all()


def test_batch_noise_rate_and_freshness():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(100) % 5
    a = batch_noise(labels, 0.2, 5, gen)
    b = batch_noise(labels, 0.2, 5, gen)
    assert int((a != labels).sum()) == 20 and int((b != labels).sum()) == 20
    assert not torch.equal(a != labels, b != labels)  # a fresh draw each batch
    assert torch.equal(labels, torch.arange(100) % 5)  # input untouched
    assert torch.equal(batch_noise(labels, 0.0, 5, gen), labels)


def test_fixed_noise_in_a_run_touches_only_train_labels(tmp_path):
    from histo_core.config import TrainConfig
    from histo_core.datasets import open_dataset
    from histo_core.training import build_train_data

    cfg = TrainConfig(dataset="synthetic", noise=0.4, noise_mode="fixed", seed=3)
    ds = open_dataset("synthetic")
    data = build_train_data(cfg, ds, "cpu")
    clean = ds.split("train").labels
    assert data.noise_flipped.sum() == round(0.4 * len(clean))
    assert (data.train_labels.numpy() != clean).sum() == data.noise_flipped.sum()
    assert (data.val.labels.numpy() == ds.split("val").labels).all()
    assert (data.test.labels.numpy() == ds.split("test").labels).all()
