"""benchmarks/clean_default.py: its readouts, the translation patch and the pooled score it tabulates."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import clean_default  # noqa: E402


def test_shifted_moves_tiles_and_reflects_at_the_border():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    down = clean_default.shifted(x, 1, 0)
    assert down.shape == x.shape
    assert (down[:, 1:] == x[:, :-1]).all() and (down[:, 0] == x[:, 1]).all()  # row 0 is row 1 reflected
    left = clean_default.shifted(x, 0, -1)
    assert (left[:, :, :-1] == x[:, :, 1:]).all()
    assert (clean_default.shifted(x, 0, 0) == x).all()


def test_score_pools_the_out_of_fold_tiles_with_the_mean_test_accuracy():
    # two folds of 3 held-out tiles + 2 test tiles; fold 0 gets 2/3 and 1/2 right, fold 1 gets 3/3 and 2/2
    eye = np.eye(3).tolist()
    rows = [
        {"cv_n": 3, "test_n": 2, "truth": [0, 1, 2, 0, 1], "probs": {"tta": [eye[0], eye[1], eye[0], eye[0], eye[0]]}},
        {"cv_n": 3, "test_n": 2, "truth": [2, 2, 1, 0, 1], "probs": {"tta": [eye[2], eye[2], eye[1], eye[0], eye[1]]}},
    ]
    s = clean_default.score(rows, lambda r: r["probs"]["tta"])
    assert s["cv"] == 5 / 6 and s["test"] == 0.75
    assert s["all"] == (5 + 0.75 * 2) / (6 + 2)


def test_a_fit_gives_every_readout_and_puts_the_augmentation_back():
    from histo_core import augment
    from histo_core.config import TrainConfig

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    y = np.arange(24) % 9
    cfg = TrainConfig(dataset="arrays", arch="simplecnn", epochs=2, batch_size=8, tta=True, threads=1)
    original = augment.augment_batch
    res = clean_default.fit_and_read(cfg, 16, 2, x, y, x[:5])
    assert augment.augment_batch is original  # the translation patch is undone
    assert set(res["probs"]) == set(clean_default.READOUTS) and res["seconds"] > 0
    for p in res["probs"].values():
        assert p.shape == (5, 9) and np.allclose(p.sum(1), 1, atol=1e-3)
