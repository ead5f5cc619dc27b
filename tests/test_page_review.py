"""Review page (AppTest): mistakes grid with filters, confusion cells, sorting, paging, CAM toggles, CSV,
confused pairs, side-by-side examples, and the suspected-label-errors section of a fixed-noise run."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from histo_core import liveness, paths, task_folders
from histo_core.review import load_predictions, query
from tests.taskfiles import wait_for_task

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "6_Review.py")


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [w.value for w in at.warning] + [e.value for e in at.error] + [s.value for s in at.success]
    return "\n".join(str(p) for p in parts)


def captions(at: AppTest) -> list[str]:
    return [c for img in at.get("image") for c in img.captions]


def test_no_runs():
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and "No completed run with saved predictions" in at.info[0].value


@pytest.fixture
def synthetic_run():
    """A synthetic-data run written without training (predictions over the real synthetic test split)."""
    from tests.runfiles import write_run

    return write_run("completed", skill=1.0, seed=3)


def test_mistakes_grid_filters_sort_and_paging(synthetic_run):
    preds = load_predictions(synthetic_run, "test")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, at.exception
    assert "SYNTHETIC DEMO DATA" in texts(at)
    wrong = int(preds.wrong.sum())
    assert f"{len(preds)} test tiles · {wrong} misclassified" in texts(at)
    assert f"{wrong} misclassified tile(s) match" in texts(at)
    cards = [m for m in at.markdown if m.value.startswith("**#")]
    assert len(cards) == 12  # first page
    worst = query(preds)[0]
    assert cards[0].value.startswith(f"**#{preds.indices[worst]}**")
    listed = at.dataframe[0].value
    assert len(listed) == min(500, wrong) and (listed["true"] != listed["predicted"]).all()
    assert at.get("download_button")[0].proto.label == "Download the listed tiles (CSV)"

    # pick a confusion-matrix cell: both class filters follow
    cell = at.selectbox(key="review_cell").options[1]
    at.selectbox(key="review_cell").select(cell).run()
    t, p = at.selectbox(key="review_true").value, at.selectbox(key="review_pred").value
    expected = len(query(preds, t, p))
    assert t >= 0 and p >= 0 and f"{expected} misclassified tile(s) match" in texts(at)
    shown = [m.value for m in at.markdown if m.value.startswith("**#")]
    assert all(f"true **{preds.classes[t]}** → **{preds.classes[p]}**" in v for v in shown)

    at.selectbox(key="review_true").set_value(-1).run()
    at.selectbox(key="review_pred").set_value(-1).run()
    at.selectbox(key="review_sort").set_value("index").run()
    first = [m.value for m in at.markdown if m.value.startswith("**#")][0]
    assert first.startswith(f"**#{preds.indices[query(preds, sort='index')[0]]}**")
    pages = at.get("pagination")[0]
    assert pages.num_pages == -(-wrong // 12)
    pages.set_value(pages.num_pages).run()
    assert len([m for m in at.markdown if m.value.startswith("**#")]) == wrong - 12 * (pages.num_pages - 1)


def test_cam_toggles(synthetic_run):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not any(c and "GradCAM for" in c for c in captions(at))
    toggles = [t for t in at.toggle if t.key and t.key.startswith("review_cam_test_")]
    assert len(toggles) == 12
    toggles[0].set_value(True).run(timeout=120)
    assert not at.exception, at.exception
    cams = [c for c in captions(at) if "GradCAM for" in c] + [w.value for w in at.warning if "Flat GradCAM" in w.value]
    assert len(cams) == 1
    at.toggle(key="review_cam_all").set_value(True).run(timeout=120)
    cams = [c for c in captions(at) if "GradCAM for" in c] + [w.value for w in at.warning if "Flat GradCAM" in w.value]
    assert len(cams) == 12
    # "CAM on all" leaves no per-card toggle greyed out beside a map it cannot turn off
    assert not [t for t in at.toggle if t.key and t.key.startswith("review_cam_test_")]
    at.toggle(key="review_cam_all").set_value(False).run(timeout=120)
    assert len([t for t in at.toggle if t.key and t.key.startswith("review_cam_test_")]) == 12


def test_pairs_and_side_by_side(synthetic_run):
    preds = load_predictions(synthetic_run, "test")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    pairs = at.dataframe[1].value
    assert list(pairs.columns) == ["true", "predicted", "tiles", "share of the true class"]
    assert pairs["tiles"].is_monotonic_decreasing and pairs["tiles"].iloc[0] >= 1
    side = [c for c in captions(at) if c.startswith("misclassified: ")]
    assert len(side) == len({int(t) for t in preds.labels[preds.wrong]})


def test_real_run_with_label_errors(trained_pathmnist_run):
    run = trained_pathmnist_run
    (paths.runs_dir() / run.id).symlink_to(run.path)
    run.label_errors_path.unlink(missing_ok=True)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["run"] = run.id
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="review_run").value == run.id
    assert "SYNTHETIC" not in texts(at)
    at.selectbox(key="review_split").set_value("val").run()
    assert "40 val tiles" in texts(at)
    at.number_input(key="review_le_folds").set_value(2)
    at.number_input(key="review_le_epochs").set_value(2)
    at.button(key="review_le_start").click().run(timeout=120)
    assert not at.exception, at.exception
    # the search runs as a background task (never in the server process); the page shows it when it is done
    (task,) = task_folders.list_tasks(kind="label-errors")
    status = wait_for_task(task)
    assert status.state == "completed", (status, liveness.log_tail(task))
    at.run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Training tiles checked"] == "160"
    assert metrics["Known flipped labels flagged"].endswith("/ 16")
    assert "This run trained with fixed label noise: 16 training labels were flipped" in texts(at)
    assert run.label_errors_path.exists()
    suspicious = [c for c in captions(at) if " given " in c and "looks like" in c]
    assert len(suspicious) == 12
    at.toggle(key="review_le_flips").set_value(True).run()
    flipped = [c for c in captions(at) if ", really " in c]
    assert len(flipped) == 16 and all(c.endswith(("flagged", "missed")) for c in flipped)
    # a fresh session shows the cached result without recomputing
    again = AppTest.from_file(PAGE, default_timeout=60)
    again.query_params["run"] = run.id
    again.run()
    assert {m.label: m.value for m in again.metric}["Training tiles checked"] == "160"
    assert again.button(key="review_le_start").label == "Recompute"  # other folds/epochs: no task for these yet


def test_stale_cell_after_switching_runs_does_not_crash():
    """Bug: a cell picked on one run, then another run where that cell has another count: the browser sends
    back the old display label, and any widget change raised ValueError in apply_cell (int() on the label)."""
    from histo_core.review import confused_pairs
    from tests.runfiles import write_run

    a = write_run("completed", skill=1.0, seed=3, run_id="run-a")
    b = write_run("completed", skill=1.5, seed=8, run_id="run-b")

    def count(run):
        return {
            f"{p['true_index']}>{p['pred_index']}": p["count"] for p in confused_pairs(load_predictions(run, "test"))
        }

    ca, cb = count(a), count(b)
    cell = next(k for k in ca if k in cb and ca[k] != cb[k])
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["run"] = "run-a"
    at.run()
    at.selectbox(key="review_cell").set_value(cell).run()
    assert not at.exception, at.exception
    shown_label = at.selectbox(key="review_cell")._widget_state.string_value
    at.selectbox(key="review_run").set_value("run-b").run()
    assert not at.exception, at.exception
    # the browser keeps sending the label it displayed for run-a, which run-b's options do not contain
    _browser_sends(at.selectbox(key="review_cell"), shown_label)
    at.selectbox(key="review_sort").set_value("index").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="review_cell").value == "any"
    # the cell selector still works on the new run
    other = next(k for k in cb if k != cell)
    at.selectbox(key="review_cell").set_value(other).run()
    assert not at.exception, at.exception
    t, p = (int(v) for v in other.split(">"))
    assert (at.selectbox(key="review_true").value, at.selectbox(key="review_pred").value) == (t, p)


def _browser_sends(element, string_value: str) -> None:
    """Make AppTest send `string_value` for this selectbox, as a browser does for the label it shows."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    class Stale(type(element)):
        @property
        def _widget_state(self):
            return WidgetState(id=self.id, string_value=string_value)

    element.__class__ = Stale


def test_label_errors_of_a_train_val_run_show_their_tiles():
    """Bug: on a run trained on train+val (the default for small sets) the suspected label errors (rows past
    the train split) and "Show the flipped tiles" failed with "saved predictions refer to row ..."."""
    import json

    import numpy as np

    from histo_core.datasets.synthetic import open_synthetic
    from histo_core.label_errors import LabelErrorReport, save_label_errors
    from tests.runfiles import write_run

    run = write_run("completed", skill=1.0, seed=3)
    cfg = json.loads(run.config_path.read_text())
    cfg["train_splits"] = "train+val"
    run.config_path.write_text(json.dumps(cfg))
    ds = open_synthetic(28)
    n = len(ds.split("train")) + len(ds.split("val"))
    rng = np.random.default_rng(0)
    rows = np.arange(n - 40, n)  # all in the val part
    k = 6
    given = rng.integers(0, k, len(rows))
    probs = rng.dirichlet(np.ones(k), len(rows)).astype(np.float32)
    flipped = np.zeros(len(rows), bool)
    flipped[:5] = True
    save_label_errors(
        run,
        LabelErrorReport(
            classes=[f"c{i}" for i in range(k)],
            indices=rows,
            given=given,
            probs=probs,
            flagged=np.ones(len(rows), bool),
            thresholds=np.full(k, 0.5),
            flipped=flipped,
            clean=(given + 1) % k,
            info={
                "folds": 2,
                "epochs": 1,
                "arch": "simplecnn",
                "seconds": 1.0,
                "sampled": False,
                "training_tiles": n,
                "computed_at": "now",
            },
        ),
    )
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, at.exception
    assert not [e.value for e in at.error if "refer to row" in e.value]
    assert len([c for c in captions(at) if "looks like" in c]) == 12
    at.toggle(key="review_le_flips").set_value(True).run()
    assert not at.exception and not at.error
    assert len([c for c in captions(at) if ", really " in c]) == 5
