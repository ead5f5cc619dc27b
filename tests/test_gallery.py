"""Misclassification queries: filters, sorts, paging over thousands of tiles, pairs, side-by-side, CSV, tiles."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from histo_core import paths
from histo_core.datasets.synthetic import CLASSES, open_synthetic
from histo_core.errors import HistoError
from histo_core.fsutil import savez_atomic, write_json_atomic
from histo_core.review import (
    RunTiles,
    confused_pairs,
    confusion,
    load_predictions,
    paginate,
    prediction_splits,
    query,
    side_by_side,
    table,
    to_csv,
)
from histo_core.runs import RunDir

K = len(CLASSES)


def make_run(n=3000, seed=0) -> tuple[RunDir, np.ndarray, np.ndarray]:
    """A synthetic run whose test predictions are known: labels uniform, predictions right 80% of the time."""
    rng = np.random.default_rng(seed)
    run = RunDir(paths.runs_dir() / "r")
    run.path.mkdir(parents=True)
    write_json_atomic(run.config_path, {"dataset": "synthetic", "arch": "simplecnn", "size": 28})
    write_json_atomic(run.dataset_path, {"classes": CLASSES, "synthetic": True})
    labels = rng.integers(0, K, n)
    pred = np.where(rng.random(n) < 0.8, labels, rng.integers(0, K, n))
    logits = rng.normal(0, 1, (n, K))
    logits[np.arange(n), pred] += 3
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    pred = probs.argmax(1)  # the noise may overturn a few
    loss = -np.log(probs[np.arange(n), labels])
    indices = rng.permutation(n)
    savez_atomic(run.predictions_path("test"), probs=probs, labels=labels, indices=indices, loss=loss)
    return run, labels, pred


def test_load_and_basic_properties():
    run, labels, pred = make_run()
    p = load_predictions(run, "test")
    assert p.classes == CLASSES and len(p) == 3000
    np.testing.assert_array_equal(p.pred, pred)
    assert p.wrong.sum() == (pred != labels).sum()
    assert prediction_splits(run) == ["test"]
    with pytest.raises(HistoError, match=r"r: no saved val predictions \(predictions_val.npz\); available: test"):
        load_predictions(run, "val")


def test_filters_and_sorts():
    run, labels, pred = make_run()
    p = load_predictions(run)
    everything = query(p)
    assert set(everything) == set(np.flatnonzero(pred != labels))
    assert np.all(np.diff(p.loss[everything]) <= 0)  # worst first
    by_conf = query(p, sort="confidence")
    assert np.all(np.diff(p.confidence[by_conf]) <= 0)
    by_index = query(p, sort="index")
    assert np.all(np.diff(p.indices[by_index]) > 0)
    assert np.all(np.diff(p.loss[query(p, sort="loss", descending=False)]) >= 0)
    tumour, stroma = CLASSES.index("tumour"), CLASSES.index("stroma")
    cell = query(p, true_class=tumour, pred_class=stroma)
    assert len(cell) == ((labels == tumour) & (pred == stroma)).sum() > 0
    assert set(p.labels[cell]) == {tumour} and set(p.pred[cell]) == {stroma}
    assert len(query(p, true_class=tumour, pred_class=tumour)) == 0  # diagonal: no mistakes
    assert len(query(p, true_class=tumour, errors_only=False)) == (labels == tumour).sum()
    with pytest.raises(HistoError, match="sort must be one of"):
        query(p, sort="random")


def test_paging():
    pos = np.arange(100)
    page, pages = paginate(pos, 1, 24)
    assert pages == 5 and list(page) == list(range(24))
    last, _ = paginate(pos, 5, 24)
    assert list(last) == [96, 97, 98, 99]
    clamped, _ = paginate(pos, 99, 24)
    assert list(clamped) == list(last)
    assert paginate(np.arange(0), 1, 24)[1] == 1
    run, _, _ = make_run()
    p = load_predictions(run)
    rows = query(p)
    seen = np.concatenate([paginate(rows, i, 50)[0] for i in range(1, paginate(rows, 1, 50)[1] + 1)])
    np.testing.assert_array_equal(seen, rows)  # pages cover every row exactly once, in order


def test_table_and_csv():
    run, _, _ = make_run()
    p = load_predictions(run)
    rows = query(p)[:10]
    df = table(p, rows)
    assert list(df.columns) == ["index", "true", "predicted", "confidence", "p_true", "loss"]
    assert (df["true"] != df["predicted"]).all() and list(df["index"]) == list(p.indices[rows])
    back = pd.read_csv(io.BytesIO(to_csv(df)))
    assert len(back) == 10 and list(back["index"]) == list(df["index"])
    assert table(p, np.zeros(0, np.int64)).empty


def test_confused_pairs_match_the_confusion_matrix():
    run, labels, pred = make_run()
    p = load_predictions(run)
    cm = confusion(p)
    assert cm.sum() == 3000 and np.trace(cm) == (labels == pred).sum()
    pairs = confused_pairs(p)
    counts = [c["count"] for c in pairs]
    assert counts == sorted(counts, reverse=True) and sum(counts) == (labels != pred).sum()
    top = pairs[0]
    assert top["count"] == cm[top["true_index"], top["pred_index"]] and top["true"] != top["predicted"]
    assert len(confused_pairs(p, top=3)) == 3


def test_side_by_side_examples():
    run, _, _ = make_run()
    p = load_predictions(run)
    rows = side_by_side(p)
    assert len(rows) == K
    for r in rows:
        t, m = r["true_index"], r["mistaken_for_index"]
        assert p.labels[r["misclassified"]] == t and p.pred[r["misclassified"]] == m != t
        assert p.loss[r["misclassified"]] == p.loss[p.wrong & (p.labels == t)].max()
        assert p.labels[r["correct_true"]] == t == p.pred[r["correct_true"]]
        assert p.labels[r["correct_mistaken"]] == m == p.pred[r["correct_mistaken"]]


def test_run_tiles_reopens_the_dataset():
    run, _, _ = make_run(n=300)
    p = load_predictions(run)
    tiles = RunTiles(run).get("test", p.indices[:5])
    np.testing.assert_array_equal(tiles, open_synthetic(28).split("test").get(p.indices[:5]))
    with pytest.raises(HistoError, match="refer to row 999"):
        RunTiles(run).get("test", np.array([999]))


def test_trained_run(trained_pathmnist_run):
    p = load_predictions(trained_pathmnist_run, "test")
    assert len(p) == 40 and p.probs.shape == (40, 9) and p.classes[0] == "adipose"
    rows = query(p)
    tiles = RunTiles(trained_pathmnist_run).get("test", p.indices[rows])
    assert tiles.shape == (len(rows), 28, 28, 3)
    assert sorted(prediction_splits(trained_pathmnist_run)) == ["test", "val"]


def test_run_tiles_of_the_training_set_follow_train_splits():
    """Bug: a train+val run's training rows run past the train split; the lookup must serve them from val."""
    run, _, _ = make_run(n=300)
    ds = open_synthetic(28)
    n_train = len(ds.split("train"))
    write_json_atomic(
        run.config_path, {"dataset": "synthetic", "arch": "simplecnn", "size": 28, "train_splits": "train+val"}
    )
    tiles = RunTiles(run).training(np.array([3, n_train + 7]))
    np.testing.assert_array_equal(tiles[0], ds.split("train").get(np.array([3]))[0])
    np.testing.assert_array_equal(tiles[1], ds.split("val").get(np.array([7]))[0])
    with pytest.raises(HistoError, match="training set \\(train\\+val\\)"):
        RunTiles(run).training(np.array([n_train + len(ds.split("val"))]))
    write_json_atomic(
        run.config_path, {"dataset": "synthetic", "arch": "simplecnn", "size": 28, "train_splits": "train"}
    )
    with pytest.raises(HistoError, match="refer to row"):
        RunTiles(run).training(np.array([n_train + 7]))
