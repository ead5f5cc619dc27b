"""The curation loop on the pages (AppTest): marks made on the Review page (suspected label errors of the training
set, validation mistakes), listed, exported and undone on the Curation page, and picked on the Train page."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from histo_core.corrections import corrections_path, dataset_identity, load_corrections
from histo_core.datasets import open_dataset

ROOT = Path(__file__).resolve().parent.parent
REVIEW, CURATION, TRAIN = (str(ROOT / "pages" / f) for f in ("6_Review.py", "10_Curation.py", "2_Train.py"))


@pytest.fixture
def run_with_label_errors():
    """A synthetic run (no training) with a label-error report over 30 training rows, most suspicious = row 29."""
    from histo_core.label_errors import LabelErrorReport, save_label_errors
    from tests.runfiles import write_run

    run = write_run("completed", skill=1.0, seed=3)
    train_labels = open_dataset("synthetic").split("train").labels
    rows = np.arange(30)
    given = train_labels[rows]
    probs = np.full((30, 6), 0.02, np.float32)
    suggested = (given + 1) % 6
    probs[rows, suggested] = np.linspace(0.5, 0.9, 30)  # lower p(given) further down: row 29 ranks first
    probs[rows, given] = np.linspace(0.4, 0.01, 30)
    save_label_errors(
        run,
        LabelErrorReport(
            classes=list(open_dataset("synthetic").info.classes),
            indices=rows,
            given=given,
            probs=probs,
            flagged=rows >= 20,
            thresholds=np.full(6, 0.5),
            info={"folds": 2, "epochs": 1, "arch": "simplecnn", "seconds": 1.0, "sampled": False}
            | {"training_tiles": 1200, "computed_at": "now"},
        ),
    )
    from histo_core.fsutil import savez_atomic
    from histo_core.metrics import per_sample_loss

    val_labels = open_dataset("synthetic").split("val").labels
    val_probs = np.eye(6, dtype=np.float32)[val_labels] * 0.9 + 0.1 / 6
    val_probs[:4] = np.roll(val_probs[:4], 1, axis=1)  # four validation mistakes
    savez_atomic(
        run.predictions_path("val"),
        probs=val_probs,
        labels=val_labels,
        indices=np.arange(len(val_labels)),
        loss=per_sample_loss(val_probs, val_labels),
    )
    return run, given, suggested


def test_review_marks_then_curation_lists_exports_and_undoes(run_with_label_errors):
    run, given, suggested = run_with_label_errors
    path = corrections_path(dataset_identity(open_dataset("synthetic")))
    at = AppTest.from_file(REVIEW, default_timeout=60).run()
    assert not at.exception, at.exception
    assert len(at.multiselect(key="review_le_mark_tiles").options) == 10  # the flagged tiles only
    at.number_input(key="review_le_mark_k").set_value(3).run()
    at.button(key="review_le_mark_topk").click().run()
    assert not at.exception and not at.error
    corr = load_corrections(path)
    assert {t: (m["action"], m["label"]) for t, m in corr.marks.items()} == {
        f"train:{r}": ("relabel", int(suggested[r])) for r in (29, 28, 27)
    }
    assert corr.marks["train:29"]["run"] == run.id

    at.multiselect(key="review_le_mark_tiles").set_value(["train:20"])
    at.radio(key="review_le_mark_action").set_value("exclude").run()
    at.button(key="review_le_mark_save").click().run()
    assert load_corrections(path).marks["train:20"]["action"] == "exclude"

    # the test split's mistakes are never marked; validation mistakes are
    assert any("Test labels are never corrected" in c.value for c in at.caption)
    at.selectbox(key="review_split").set_value("val").run()
    assert not at.exception, at.exception
    val_tiles = at.multiselect(key="review_mark_tiles").options
    assert sorted(t.split(" ")[0] for t in val_tiles) == ["val:0", "val:1", "val:2", "val:3"]

    cur = AppTest.from_file(CURATION, default_timeout=60).run()
    assert not cur.exception, cur.exception
    assert [m.value for m in cur.metric] == ["3", "1", "0"]
    table = cur.dataframe[0].value
    assert sorted(table["tile"]) == ["train:20", "train:27", "train:28", "train:29"]
    rows = list(csv.DictReader(io.StringIO(load_corrections(path).to_csv().decode())))
    assert {r["tile"]: r["action"] for r in rows} == dict(zip(table["tile"], table["action"]))
    assert cur.get("download_button")  # the CSV download is offered
    cur.multiselect(key="curation_undo").set_value(["train:29", "train:20"]).run()
    cur.button(key="curation_undo_button").click().run()
    assert not cur.exception
    assert sorted(load_corrections(path).marks) == ["train:27", "train:28"]
    assert sorted(cur.dataframe[0].value["tile"]) == ["train:27", "train:28"]


def test_curation_page_without_marks_says_where_to_make_them():
    at = AppTest.from_file(CURATION, default_timeout=60).run()
    assert not at.exception and "mark a run's suspected label errors" in at.info[0].value


def test_train_page_picks_the_datasets_corrections(monkeypatch):
    from histo_core import jobs
    from histo_core.corrections import add_marks

    started = []
    monkeypatch.setattr(jobs, "_start_training_process", lambda run, resume: started.append(run) or 0)
    ident = dataset_identity(open_dataset("synthetic"))
    path = corrections_path(ident)
    at = AppTest.from_file(TRAIN, default_timeout=90).run()
    assert not at.exception, at.exception
    assert not [c for c in at.checkbox if c.key == "train.use_corrections"]  # nothing marked: nothing to pick
    add_marks(path, ident, [{"tile": "train:1", "action": "exclude"}])
    at.run()
    box = at.checkbox(key="train.use_corrections")
    assert "1 excluded" in box.label
    box.check().run()
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception and not at.error
    assert [r.config()["corrections"] for r in started] == [str(path)]
