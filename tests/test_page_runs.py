"""Runs page (AppTest): table, curves/confusion/ROC/reliability of a completed run, failed and queued runs,
delete with confirmation, export form."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import plotly.io
import pytest
from streamlit.testing.v1 import AppTest

from histo_core import paths
from histo_core.runs import RunDir
from tests.runfiles import CLASSES, write_run

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "3_Runs.py")


def _app(run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    if run_id:
        at.query_params["run"] = run_id
    return at.run()


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [w.value for w in at.warning]
    parts += [i.value for i in at.info] + [s.value for s in at.success] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def _plotly_titles(at: AppTest) -> list[str]:
    titles = []
    for chart in at.get("plotly_chart"):
        fig = json.loads(chart.proto.spec)
        titles.append(fig["layout"].get("title", {}).get("text", ""))
    return titles


def _figure(at: AppTest, title: str):
    for chart in at.get("plotly_chart"):
        fig = plotly.io.from_json(chart.proto.spec)
        if fig.layout.title.text == title:
            return fig
    raise AssertionError(f"no figure titled {title!r} in {_plotly_titles(at)}")


def _array(v) -> np.ndarray:
    """Plotly serialises numpy arrays as {"dtype", "bdata" (base64), "shape"}."""
    if isinstance(v, dict) and "bdata" in v:
        shape = tuple(int(x) for x in str(v.get("shape", "-1")).split(","))
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).reshape(shape)
    return np.asarray(v, dtype=float)


def test_empty_runs_dir_points_to_train():
    at = _app()
    assert not at.exception
    assert "No runs" in _texts(at)


def test_completed_run_shows_table_curves_and_test_report():
    done = write_run("completed", name="clean-baseline", epochs=3)
    write_run("failed", error="CUDA out of memory", seed=1)
    at = _app(done.id)
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["state"]) == {"completed", "failed"}
    row = table[table["run id"] == done.id].iloc[0]
    assert row["architecture"] == "simplecnn" and row["dataset"].count("SYNTHETIC") == 1 and row["epoch"] == "3/3"
    assert row["test acc"] == done.results()["test"]["accuracy"]
    assert at.selectbox(key="runs_select").value == done.id

    titles = _plotly_titles(at)
    assert {"loss per epoch", "accuracy per epoch", "AUC per epoch"} <= set(titles)
    assert "Confusion matrix (counts)" in titles and "ROC curves" in titles
    assert any(t.startswith("Reliability diagram (ECE") for t in titles)
    assert any("Completed 3 epochs" in s.value for s in at.success)
    assert any("SYNTHETIC" in w.value for w in at.warning)
    # the per-class table lists every class with its support
    per_class = [d.value for d in at.dataframe if "precision" in d.value.columns][0]
    assert list(per_class["class"]) == CLASSES and per_class["tiles"].sum() == 60

    # the confusion matrix's counts sum to the test set; row-normalised rows sum to 1
    cm = _figure(at, "Confusion matrix (counts)")
    assert _array(cm.data[0].z).sum() == 60
    at.toggle(key=f"norm-test-{done.id}").set_value(True).run()
    cm = _figure(at, "Confusion matrix (row-normalised)")
    assert np.allclose(_array(cm.data[0].z).sum(axis=1), 1.0)


def test_failed_run_shows_error_and_log_tail():
    run = write_run("failed", error="CUDA out of memory while allocating 2.00 GiB", epochs_done=1)
    at = _app(run.id)
    assert not at.exception
    assert any("Run failed: CUDA out of memory" in e.value for e in at.error)
    assert any("RuntimeError: CUDA out of memory" in c.value for c in at.code)
    assert at.button(key=f"resume-{run.id}")  # failed runs offer resume


def test_resume_starts_the_failed_run_again_once(monkeypatch):
    import os

    from histo_core import jobs

    run = write_run("failed", error="killed", epochs=5, epochs_done=2)
    started = []

    def fake_start(r, resume):
        started.append(resume)
        r.update_status(pid=os.getpid())
        return os.getpid()

    monkeypatch.setattr(jobs, "_start_training_process", fake_start)
    monkeypatch.setattr("histo_core.liveness._is_run_process", lambda pid, r, s: True)
    at = _app(run.id)
    at.button(key=f"resume-{run.id}").click().run()
    assert not at.exception, at.exception
    assert started == [True] and RunDir(run.path).status().state == "queued"
    assert any(f"resuming {run.id} from epoch 2 of 5" in s.value for s in at.success)
    assert at.button(key=f"cancel-{run.id}") and not any(b.key == f"resume-{run.id}" for b in at.button)


def test_resume_can_lower_the_batch_size_after_running_out_of_memory(monkeypatch):
    import os

    from histo_core import jobs

    run = write_run("failed", error="out of GPU memory at batch 3 of epoch 3: lower --batch-size (now 64)", epochs=5)
    started = []

    def fake_start(r, resume):
        started.append((resume, RunDir(r.path).config()["batch_size"]))  # config.json changed before the start
        r.update_status(pid=os.getpid())
        return os.getpid()

    monkeypatch.setattr(jobs, "_start_training_process", fake_start)
    monkeypatch.setattr("histo_core.liveness._is_run_process", lambda pid, r, s: True)
    at = _app(run.id)
    assert at.number_input(key=f"resume-batch-{run.id}").value == 64  # the run's own
    at.number_input(key=f"resume-batch-{run.id}").set_value(16)
    at.button(key=f"resume-{run.id}").click().run()
    assert not at.exception, at.exception
    assert started == [(True, 16)] and RunDir(run.path).config()["batch_size"] == 16
    assert any("with batch size 16 (was 64; the epoch restarts at its first batch)" in s.value for s in at.success)


def test_dead_running_run_is_marked_failed_on_view():
    run = write_run("running", pid=2**22 + 12345)  # no such process
    at = _app(run.id)
    assert not at.exception
    assert any("ended unexpectedly" in e.value for e in at.error)
    assert RunDir(run.path).status().state == "failed"


def test_queued_run_says_it_waits_for_a_slot(monkeypatch):
    import os

    run = write_run("queued", pid=os.getpid(), epochs_done=0)
    # our own pid is alive but its cmdline is pytest's: give the check something that names this run
    monkeypatch.setattr("histo_core.liveness._is_run_process", lambda pid, r, s: True)
    at = _app(run.id)
    assert not at.exception, at.exception
    assert "waiting for a free" in _texts(at)
    assert at.button(key=f"cancel-{run.id}")


def test_delete_needs_confirmation():
    keep = write_run("completed", seed=1)
    gone = write_run("cancelled", seed=2)
    at = _app(gone.id)
    at.button(key=f"delete-{gone.id}").click().run()
    assert gone.path.exists()
    at.button(key=f"delete-no-{gone.id}").click().run()
    assert gone.path.exists()
    at.button(key=f"delete-{gone.id}").click().run()
    at.button(key=f"delete-yes-{gone.id}").click().run()
    assert not at.exception
    assert not gone.path.exists() and keep.path.exists()
    assert any(f"deleted {gone.id}" in s.value for s in at.success)


def test_export_form_writes_weights():
    run = write_run("completed", name="for export")
    at = _app(run.id)
    form_inputs = [t for t in at.text_input if t.label == "Export name"]
    form_inputs[0].set_value("my-model")
    at.button[[b.label for b in at.button].index("Export")].click().run()
    assert not at.exception
    assert (paths.weights_dir() / "my-model.pt").exists()
    assert any("Exported to" in s.value for s in at.success)


@pytest.mark.slow
def test_a_real_trained_run_renders(tmp_path):
    """The page against what the trainer really writes (not the test helper's imitation)."""
    import torch

    from histo_core.config import TrainConfig
    from histo_core.training import prepare_run, run_training

    threads = torch.get_num_threads()
    try:
        run = prepare_run(
            TrainConfig(
                dataset="synthetic",
                arch="simplecnn",
                epochs=2,
                batch_size=32,
                max_train_samples=128,
                device="cpu",
                threads=1,
                tta=False,
                name="real",
            )
        )
        assert run_training(run)["state"] == "completed"
    finally:
        torch.set_num_threads(threads)
    at = _app(run.id)
    assert not at.exception, at.exception
    titles = _plotly_titles(at)
    assert {"loss per epoch", "accuracy per epoch", "AUC per epoch", "Confusion matrix (counts)", "ROC curves"} <= set(
        titles
    )
    cm = _figure(at, "Confusion matrix (counts)")
    assert _array(cm.data[0].z).sum() == run.results()["test"]["n"]
    roc = _figure(at, "ROC curves")
    assert len([t for t in roc.data if t.name != "chance"]) == len(run.dataset()["classes"])
    table = at.dataframe[0].value
    assert table.iloc[0]["epoch"] == "2/2" and table.iloc[0]["test acc"] == run.results()["test"]["accuracy"]


# -- figures (pages/ui/charts.py) ------------------------------------------------------------------------


def test_reliability_figure_skips_empty_bins():
    from pages.ui.charts import reliability_figure

    rel = {
        "bin_edges": [0.0, 0.25, 0.5, 0.75, 1.0],
        "confidence": [None, 0.4, None, 0.9],
        "accuracy": [None, 0.3, None, 0.8],
        "count": [0, 5, 0, 20],
    }
    fig = reliability_figure(rel, ece=0.07)
    bars = fig.data[0]
    assert list(bars.x) == [0.375, 0.875] and list(bars.y) == [0.3, 0.8]
    assert fig.layout.title.text == "Reliability diagram (ECE 0.070); tiles per bin above the bars"
    assert list(bars.text) == ["5", "20"]


def test_curve_figure_train_vs_validation():
    from pages.ui.charts import curve_figure

    rows = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "val_auc": 0.8},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.9, "val_auc": 0.9},
    ]
    fig = curve_figure(rows, "loss")
    assert [t.name for t in fig.data] == ["train", "validation"]
    assert list(fig.data[1].y) == [1.2, 0.9]
    assert [t.name for t in curve_figure(rows, "auc").data] == ["validation"]  # no train AUC is logged


def test_lr_find_figure_marks_the_suggestion_on_a_log_axis():
    from pages.ui.charts import lr_find_figure

    fig = lr_find_figure([1e-5, 1e-3, 1e-1], [2.0, 1.0, 4.0], suggested_lr=1e-3)
    assert fig.layout.xaxis.type == "log"
    # shapes take data values on a log axis (annotations take log10): a vline at -3 stretched the axis to 1e-60
    assert fig.layout.shapes[0].x0 == pytest.approx(1e-3)
    assert list(fig.layout.xaxis.range) == pytest.approx([-5.0, -1.0])
    assert "suggested 0.001" in fig.layout.annotations[0].text


def test_running_run_shows_live_progress_and_validation(monkeypatch):
    import os

    run = write_run("running", epochs=5, epochs_done=2, pid=os.getpid())
    monkeypatch.setattr("histo_core.liveness._is_run_process", lambda pid, r, s: True)
    at = _app(run.id)
    assert not at.exception, at.exception
    bar = at.get("progress")[0]
    assert "epoch 2/5 · batch 3/10 · train" in bar.proto.text and bar.proto.value == 46  # (2 + 3/10) / 5
    assert any("Validation after epoch 2" in m.value for m in at.markdown)
    assert {"loss per epoch", "Confusion matrix (counts)"} <= set(_plotly_titles(at))
    assert [m.value for m in at.metric][:2] == ["900", "20 s"]  # images/s and ETA
    assert at.button(key=f"cancel-{run.id}") and not any(b.key == f"delete-{run.id}" for b in at.button)


def test_run_without_validation_shows_what_exists():
    """A train+val run (the default on small sets): no empty AUC chart, no validation option, no "best epoch",
    one line saying why; the test report is shown."""
    import json

    run = write_run("completed", epochs=2)
    rows = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in run.metrics()]
    run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = run.results()
    results["val"] = None
    run.results_path.write_text(json.dumps(results))
    run.val_latest_path.unlink()
    at = _app(run.id)
    assert not at.exception, at.exception
    titles = _plotly_titles(at)
    assert "AUC per epoch" not in titles and {"loss per epoch", "accuracy per epoch"} <= set(titles)
    assert not [r for r in at.radio if r.key == f"split-{run.id}"]
    assert any("No validation split" in i.value for i in at.info)
    assert not any("best epoch" in s.value for s in at.success)
    assert any("**test set** (60 tiles, final model)" in m.value for m in at.markdown)
    assert "Confusion matrix (counts)" in titles


@pytest.mark.slow
def test_evaluate_on_another_dataset_from_the_page(monkeypatch, shared_data):
    """The class-map editor lists the dataset's classes against the model's, pre-filled by known words (Kather's
    01_TUMOR is the synthetic model's tumour) and says which stay unscored; saved evaluations are listed with
    their report."""
    from histo_core.evaluation import evaluate

    run = write_run("completed")
    started = []
    monkeypatch.setattr(
        "histo_core.evaluation.start_evaluation",
        lambda r, spec, split, mapping, name: started.append((r.id, spec, split, mapping, name)) or "x",
    )
    at = _app(run.id)
    at.session_state[f"evaluate_open_{run.id}"] = True  # the panel is built while open
    at.run()
    key = f"evaluate_ds_{run.id}"
    at.selectbox(key=f"{key}_choice").set_value("__path__").run()
    folder = shared_data / "tiles" / "kather2016"
    at.text_input(key=f"{key}_path").set_value(str(folder)).run()
    assert not at.exception, at.exception
    editor = [d for d in at.dataframe if "dataset class" in d.value.columns]
    assert editor, "class-map editor missing"
    table = editor[0].value
    assert list(table["dataset class"])[:2] == ["01_TUMOR", "02_STROMA"]
    prefilled = dict(zip(table["dataset class"], table["model class"]))
    assert prefilled["01_TUMOR"] == "tumour" and prefilled["04_LYMPHO"] == "LYM · lymphocytes"
    assert (
        prefilled["08_EMPTY"] == "BACK · background" and prefilled["03_COMPLEX"] == "(no counterpart: reported apart)"
    )
    assert not at.error  # bug: an error showed before any edit
    assert any("Not scored" in c.value and "03_COMPLEX" in c.value for c in at.caption)
    # NCT's abbreviations match the model's PathMNIST-style names without a map
    nct = shared_data / "tiles" / "crc-he" / "NCT-CRC-HE-100K-NONORM"
    at.text_input(key=f"{key}_path").set_value(str(nct)).run()
    table = [d for d in at.dataframe if "dataset class" in d.value.columns][0].value
    assert dict(zip(table["dataset class"], table["model class"]))["ADI"] == "ADI · adipose"
    at.button(key=f"evaluate_start_{run.id}").click().run()
    assert started == [(run.id, str(nct), "all", {"STR": "stroma", "TUM": "tumour"}, None)]  # by known words
    # a saved evaluation is listed, with its report
    evaluate(str(run.path), "synthetic", "val", name="own-val")
    at.run()
    assert any("own-val" in str(d.value.get("name", [])) for d in at.dataframe if "name" in d.value.columns)


def test_confusion_figure_cells_are_clickable():
    from pages.ui.charts import confusion_figure, selected_cell

    fig = confusion_figure([[5, 1], [2, 7]], ["a", "b"], clickable=True)
    cells = fig.data[1]
    assert [list(c[:2]) for c in cells.customdata] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert list(cells.x) == ["a", "b", "a", "b"] and list(cells.y) == ["a", "a", "b", "b"]
    # Bug: the click targets skipped hover, so the heat map under them took the click and nothing was selected.
    # The click targets carry the hover (with the cell's names and count); the heat map has none.
    assert fig.data[0].hoverinfo == "skip" and cells.hoverinfo != "skip"
    assert "%{customdata[2]}" in cells.hovertemplate and list(cells.customdata[1][2:]) == ["a", "b", "1"]
    assert fig.layout.clickmode == "event+select"
    event = {"selection": {"points": [{"x": "b", "y": "a", "customdata": [0, 1, "a", "b", "1"]}]}}
    assert selected_cell(event) == (0, 1)
    assert selected_cell({"selection": {"points": [{"customdata": ["a", "b"]}]}}) is None  # the heat map's
    assert selected_cell({"selection": {"points": []}}) is None and selected_cell(None) is None


def test_runs_table_refreshes_while_a_run_is_active(monkeypatch):
    """Bug: the table was drawn once, so it went stale while a run trained (0%, epoch 0/60 while the run's
    panel said 4/60) and a queued run stayed "queued" after the run ahead finished. While a run is queued or
    running the table is a fragment re-run every LIVE_REFRESH_S; with none active it is drawn once."""
    import os

    import streamlit

    import pages.ui.live
    from pages.ui.live import LIVE_REFRESH_S

    fragments: list[float | None] = []
    bodies: list[str] = []
    real_fragment, real_live = streamlit.fragment, pages.ui.live.live

    def spy_fragment(func=None, *, run_every=None):
        fragments.append(run_every)
        return real_fragment(func, run_every=run_every)

    def spy_live(active, body):  # the one poller: which part of the page it keeps live
        bodies.append(getattr(body, "__name__", ""))
        return real_live(active, body)

    monkeypatch.setattr(streamlit, "fragment", spy_fragment)
    monkeypatch.setattr(pages.ui.live, "live", spy_live)
    done = write_run("completed")
    at = _app(done.id)
    assert not at.exception, at.exception
    assert "live_runs_table" not in bodies and not fragments
    running = write_run("running", epochs=5, epochs_done=2, pid=os.getpid())
    monkeypatch.setattr("histo_core.liveness._is_run_process", lambda pid, r, s: True)
    at = _app(running.id)
    assert not at.exception, at.exception
    assert "live_runs_table" in bodies and LIVE_REFRESH_S in fragments
    assert any("1 queued or running" in c.value for c in at.caption)


def test_compact_confusion_matrix_for_side_by_side():
    """Compare's matrices were unreadable side by side: 4 px numbers, a colour bar taking a third."""
    from pages.ui.charts import confusion_figure

    fig = confusion_figure([[5, 1], [2, 7]], ["a", "b"], compact=True)
    heat = fig.data[0]
    assert heat.showscale is False and heat.textfont.size >= 12
    assert confusion_figure([[5, 1], [2, 7]], ["a", "b"]).data[0].showscale is not False  # the single view keeps it
