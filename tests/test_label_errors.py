"""Suspected label errors: the confident-learning flags, cross-validated ranking of planted flips, run cache."""

from __future__ import annotations

import numpy as np
import pytest

from histo_core.config import TrainConfig
from histo_core.datasets.synthetic import CLASSES, open_synthetic
from histo_core.errors import HistoError
from histo_core.label_errors import (
    confident_thresholds,
    cross_val_probs,
    find_label_errors,
    flag_label_errors,
    load_label_errors,
)
from histo_core.noise import fixed_noise


def test_thresholds_and_flags_by_hand():
    given = np.array([0, 0, 1, 1, 1])
    probs = np.array(
        [
            [0.9, 0.1],  # confidently 0, labelled 0
            [0.7, 0.3],  # below both thresholds: no confident class, not flagged
            [0.2, 0.8],  # confidently 1, labelled 1
            [0.9, 0.1],  # labelled 1 but confidently 0: flagged
            [0.5, 0.5],
        ]
    )  # p1 = 0.5 reaches t1 = 0.467, p0 = 0.5 misses t0 = 0.8: its own label
    t = confident_thresholds(probs, given)
    np.testing.assert_allclose(t, [0.8, (0.8 + 0.1 + 0.5) / 3])
    flagged, _ = flag_label_errors(probs, given)
    assert flagged.tolist() == [False, False, False, True, False]


def synthetic_probs(n: int, k: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-sample probabilities of a decent model (the true class usually, not always, on top) and given
    labels with `noise` of them flipped."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1.0, (n, k))
    logits[np.arange(n), true] += rng.uniform(1.0, 5.0, n)  # about 85% right
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    flipped = rng.random(n) < noise
    given = true.copy()
    given[flipped] = (true[flipped] + rng.integers(1, k, flipped.sum())) % k
    return probs, given, flipped


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.2])
def test_flagged_share_tracks_the_estimated_noise_rate(noise):
    """Bug: every tile whose confident class differed was flagged: half the tiles of a 20%-noise run and over a
    quarter of a clean one. The flags are now as many as the estimated share of wrong labels, the top of the
    ranking."""
    from histo_core.label_errors import LabelErrorReport, estimate_noise

    probs, given, flipped = synthetic_probs(2000, 6, noise, seed=1)
    flagged, thresholds = flag_label_errors(probs, given)
    rate, count = estimate_noise(probs, given)
    assert flagged.sum() == count
    assert abs(flagged.mean() - noise) <= 0.05, (flagged.mean(), rate)
    self_conf = probs[np.arange(len(given)), given]
    assert self_conf[flagged].max(initial=0) <= np.quantile(self_conf, 0.5)  # the least confident are flagged
    if noise:
        assert (flagged & flipped).sum() >= 0.5 * flagged.sum()  # precision
    report = LabelErrorReport(["c"] * 6, np.arange(len(given)), given, probs, flagged, thresholds, flipped)
    assert report.summary()["estimated_noise"] == pytest.approx(rate)


def test_a_class_without_tiles_never_attracts_flags():
    given = np.array([0, 0, 1])
    probs = np.array([[0.2, 0.1, 0.7], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
    flagged, t = flag_label_errors(probs, given)
    assert t[2] == 1.0 and not flagged[0]


@pytest.mark.slow
def test_planted_flips_rank_high_on_synthetic():
    train = open_synthetic(28).split("train")
    idx = np.random.default_rng(0).choice(len(train), 300, replace=False)
    images, clean = train.get(idx), train.labels[idx]
    noisy, flipped = fixed_noise(clean, 0.1, len(CLASSES), seed=0)
    cfg = TrainConfig(dataset="synthetic", arch="simplecnn", batch_size=32, lr=3e-3, threads=2, device="cpu")
    steps = []
    probs = cross_val_probs(cfg, images, noisy, CLASSES, folds=3, epochs=6, progress=lambda f, m: steps.append(f))
    assert probs.shape == (300, 6) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert steps[0] == 0.0 and steps[-1] == 1.0 and len(steps) == 4
    self_conf = probs[np.arange(300), noisy]
    n_flips = int(flipped.sum())
    top = np.argsort(self_conf)[:n_flips]
    assert flipped[top].sum() >= 0.7 * n_flips  # flips fill most of the top ranks (base rate: 10%)
    flagged, _ = flag_label_errors(probs, noisy)
    hits = int((flagged & flipped).sum())
    assert hits >= 0.6 * n_flips and hits >= 0.4 * flagged.sum()


def test_too_few_tiles_per_class():
    cfg = TrainConfig(dataset="synthetic", arch="simplecnn")
    images = np.zeros((5, 28, 28, 3), np.uint8)
    with pytest.raises(HistoError, match="at least 2 tiles of every labelled class"):
        cross_val_probs(cfg, images, np.array([0, 0, 0, 0, 1]), ["a", "b"], folds=3, epochs=1)


@pytest.mark.slow
def test_run_with_fixed_noise(trained_pathmnist_run):
    run = trained_pathmnist_run
    with np.load(run.noise_path) as z:
        noisy, flipped = z["noisy_labels"], z["flipped"]
    messages = []
    report = find_label_errors(run, folds=2, epochs=2, progress=lambda f, m: messages.append(m))
    assert messages[0].startswith("reading") and messages[-1] == "done"
    assert len(report.given) == 160 and report.probs.shape == (160, 9)
    np.testing.assert_array_equal(report.given, noisy)  # judged against the labels the run trained on
    np.testing.assert_array_equal(report.flipped, flipped)
    summary = report.summary()
    assert summary["flipped"] == 16 and summary["tiles"] == 160
    assert 0 <= summary["flipped_flagged"] <= summary["flagged"]
    assert summary["folds"] == 2 and summary["epochs"] == 2
    df = report.table()
    assert list(df.columns[:6]) == ["index", "given", "suggested", "p_given", "p_suggested", "flagged"]
    assert "flipped" in df and df["p_given"].is_monotonic_increasing
    assert run.label_errors_path.exists()
    again = load_label_errors(run)
    np.testing.assert_array_equal(again.probs, report.probs)
    assert again.summary() == summary and again.classes == report.classes


def test_load_missing_or_corrupt(tmp_path):
    from histo_core.runs import RunDir

    run = RunDir(tmp_path)
    assert load_label_errors(run) is None
    run.label_errors_path.write_bytes(b"junk")
    assert load_label_errors(run) is None
