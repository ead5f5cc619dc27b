"""Label corrections: the file (round trip, undo, CSV, refusals), and what a run trains on with it: the training
labels and the training tiles change as marked, and nothing else does."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from histo_core import paths
from histo_core.config import TrainConfig
from histo_core.corrections import (
    add_marks,
    apply_corrections,
    corrections_path,
    dataset_identity,
    list_corrections,
    load_corrections,
    remove_marks,
)
from histo_core.datasets import open_dataset
from histo_core.errors import ConfigError, HistoError


@pytest.fixture
def synthetic():
    ds = open_dataset("synthetic")
    ident = dataset_identity(ds)
    return ds, ident, corrections_path(ident)


def test_marks_round_trip_undo_and_csv(synthetic):
    ds, ident, path = synthetic
    assert path.parent == paths.data_dir() / "corrections" and path.name.startswith("synthetic-")
    add_marks(path, ident, [{"tile": "train:5", "action": "relabel", "label": 2, "given": 0}], run="r1", source="x")
    add_marks(path, ident, [{"tile": "train:7", "action": "exclude"}, {"tile": "val:3", "action": "confirm"}])
    corr = load_corrections(path)
    assert corr.counts() == {"relabel": 1, "exclude": 1, "confirm": 1}
    assert corr.marks["train:5"]["label"] == 2 and corr.marks["train:5"]["run"] == "r1"
    assert [c.path for c in list_corrections()] == [path]
    rows = list(csv.DictReader(io.StringIO(corr.to_csv().decode())))
    assert [(r["tile"], r["action"], r["given"], r["label"]) for r in rows] == [
        ("train:5", "relabel", "adipose", "lymphocytes"),
        ("train:7", "exclude", "", ""),
        ("val:3", "confirm", "", ""),
    ]
    add_marks(path, ident, [{"tile": "train:5", "action": "exclude"}])  # marked again: the last mark holds
    assert load_corrections(path).marks["train:5"]["action"] == "exclude"
    remove_marks(path, ["train:5", "val:3"])
    assert set(load_corrections(path).marks) == {"train:7"}
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temp file left behind


@pytest.mark.parametrize(
    "mark, message",
    [
        ({"tile": "test:1", "action": "exclude"}, "test labels are never corrected"),
        ({"tile": "train:99999", "action": "exclude"}, "the train split has 1200 tiles"),
        ({"tile": "train:1", "action": "relabel", "label": 6}, "class index from 0 to 5"),
        ({"tile": "train:1", "action": "delete"}, "must be one of relabel, exclude, confirm"),
        ({"tile": "../x", "action": "exclude"}, "not a tile id"),
    ],
)
def test_bad_marks_are_refused_with_one_line(synthetic, mark, message):
    _, ident, path = synthetic
    with pytest.raises(HistoError, match=message):
        add_marks(path, ident, [mark])
    assert not path.exists()


def test_a_file_for_another_dataset_or_not_a_corrections_file_is_refused(synthetic, tmp_path):
    from histo_core.corrections import check_corrections

    _, ident, path = synthetic
    add_marks(path, ident, [{"tile": "train:1", "action": "exclude"}])
    from histo_core.datasets.synthetic import open_synthetic

    other = dataset_identity(open_synthetic(seed=1))  # other tiles, other labels
    with pytest.raises(ConfigError, match="made for another dataset"):
        check_corrections(path, other)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": ident, "marks": {"train:1": {"action": "relabel", "label": 9}}}))
    with pytest.raises(ConfigError, match="relabel needs a class index"):
        check_corrections(bad, ident)
    with pytest.raises(ConfigError, match="no such corrections file"):
        check_corrections(tmp_path / "missing.json", ident)


def test_apply_maps_train_plus_val_rows_and_ignores_tiles_not_trained_on(synthetic):
    _, ident, path = synthetic
    corr = add_marks(
        path,
        ident,
        [
            {"tile": "train:0", "action": "relabel", "label": 4},
            {"tile": "val:1", "action": "exclude"},
            {"tile": "train:2", "action": "confirm"},
            {"tile": "train:900", "action": "exclude"},  # not among the rows below
        ],
    )
    rows = np.array([0, 1, 2, 1200, 1201])  # train+val rows: 1200 and 1201 are val:0 and val:1
    labels, keep, applied = apply_corrections(corr, rows, np.array([1, 1, 1, 1, 1]), train_len=1200)
    assert labels.tolist() == [4, 1, 1, 1, 1]
    assert keep.tolist() == [True, True, True, True, False]
    assert (applied["relabelled"], applied["excluded"], applied["confirmed"], applied["marks"]) == (1, 1, 1, 4)


def test_corrections_change_the_training_labels_and_nothing_else(synthetic):
    """The data a run trains on: relabelled tiles carry the new class, excluded tiles are gone, every other
    training tile keeps its (noisy) label, and val/test tiles and labels are untouched."""
    from histo_core.training import build_train_data

    ds, ident, path = synthetic
    base = TrainConfig(dataset="synthetic", noise=0.2, noise_mode="fixed", seed=0)
    plain = build_train_data(base, ds, "cpu")
    flips = np.flatnonzero(plain.noise_flipped)[:10]
    marks = [{"tile": f"train:{r}", "action": "relabel", "label": int(plain.clean_train_labels[r])} for r in flips]
    marks += [{"tile": "train:3", "action": "exclude"}, {"tile": "train:4", "action": "confirm"}]
    marks += [{"tile": "val:0", "action": "relabel", "label": (int(ds.split("val").labels[0]) + 1) % 6}]
    add_marks(path, ident, marks)
    fixed = build_train_data(base.replace(corrections=str(path)), ds, "cpu")

    expected_rows = np.delete(plain.train_indices, 3)
    assert fixed.train_indices.tolist() == expected_rows.tolist()
    expected = plain.train_labels.numpy().copy()
    expected[flips] = plain.clean_train_labels[flips]
    assert fixed.train_labels.numpy().tolist() == np.delete(expected, 3).tolist()
    assert fixed.noise_flipped.sum() == plain.noise_flipped.sum() - 10 - int(plain.noise_flipped[3])
    assert (fixed.clean_train_labels == np.delete(plain.clean_train_labels, 3)).all()
    for split in ("val", "test"):  # never corrected, not even the marked val tile (this run trains on train)
        assert (getattr(fixed, split).labels.numpy() == ds.split(split).labels).all()
    assert fixed.mean == plain.mean and fixed.std == plain.std
    assert fixed.corrections["relabelled"] == 10 and fixed.corrections["excluded"] == 1
    assert fixed.corrections["file"] == str(path)


def test_train_with_corrections_records_them_and_refuses_a_bad_file(synthetic, tmp_path, capsys, monkeypatch):
    from histo_core.cli import main
    from histo_core.runs import RunDir

    monkeypatch.setenv("HISTO_EMBED_AFTER_TRAINING", "0")
    _, ident, path = synthetic
    add_marks(
        path, ident, [{"tile": "train:1", "action": "exclude"}, {"tile": "train:2", "action": "relabel", "label": 0}]
    )
    args = ["train", "--dataset", "synthetic", "--arch", "simplecnn", "--epochs", "1", "--batch-size", "256"]
    assert main([*args, "--json", "--corrections", str(path)]) == 0
    out = capsys.readouterr()
    run = RunDir(json.loads(out.out)["run_dir"])
    assert run.config()["corrections"] == str(path)
    recorded = run.results()["corrections"]
    assert recorded["file"] == str(path) and recorded["marks"] == 2
    from histo_core.export import export_run
    from histo_core.fsutil import read_json

    card = read_json(export_run(run, "corrected").with_suffix(".json"))
    assert card["corrections"] == recorded and card["training_config"]["corrections"] == str(path)
    assert f"corrections {path.name}" in out.err and "1 relabelled, 1 excluded" in out.err
    assert main([*args, "--corrections", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --corrections: {tmp_path / 'nope.json'}: no such corrections file"]
