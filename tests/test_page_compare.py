"""Compare page (AppTest): overlaid curves and the settings/results table with CSV download."""

from __future__ import annotations

from pathlib import Path

import plotly.io
from streamlit.testing.v1 import AppTest

from pages.ui.formats import num, pct
from tests.runfiles import write_run

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "4_Compare.py")


def _app() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60).run()


def test_needs_two_runs():
    write_run("completed")
    at = _app()
    assert not at.exception
    assert any("at least two runs" in i.value for i in at.info)


def test_two_runs_table_curves_and_csv():
    a = write_run("completed", name="clean", epochs=3, lr=1e-3, seed=1)
    b = write_run("completed", name="noisy", epochs=2, lr=3e-3, noise=0.4, seed=2)
    at = _app()
    assert not at.exception, at.exception
    assert set(at.multiselect(key="compare_runs").value) == {a.id, b.id}

    table = at.dataframe[0].value  # one row per setting, one column per run: it fits beside the sidebar
    assert list(table.columns) == ["clean", "noisy"] or list(table.columns) == ["noisy", "clean"]
    assert table.loc["run id", "clean"] == a.id and table.loc["run id", "noisy"] == b.id
    assert table.loc["lr", "clean"] == "0.001" and table.loc["lr", "noisy"] == "0.003"
    assert table.loc["noise", "clean"] == "0" and table.loc["noise", "noisy"] == "0.4 batch"
    assert table.loc["epochs", "clean"] == "3/3" and table.loc["epochs", "noisy"] == "2/2"
    for setting in (
        "arch",
        "optimizer",
        "batch",
        "schedule",
        "augmentation",
        "loss",
        "train splits",
        "seed",
        "TTA",
        "test acc",
        "test AUC",
        "test ECE",
        "time (s)",
    ):
        assert setting in table.index
    assert table.loc["test acc", "clean"] == pct(a.results()["test"]["accuracy"])
    assert table.loc["test ECE", "noisy"] == num(b.results()["test"]["ece"])

    fig = plotly.io.from_json(at.get("plotly_chart")[0].proto.spec)
    assert {t.name for t in fig.data} == {"clean", "noisy"}
    lengths = {t.name: len(t.x) for t in fig.data}
    assert lengths == {"clean": 3, "noisy": 2}

    at.selectbox(key="compare_metric").set_value("train_loss").run()
    fig = plotly.io.from_json(at.get("plotly_chart")[0].proto.spec)
    assert fig.layout.title.text == "training loss per epoch"

    csv = at.get("download_button")[0]
    assert csv.proto.label == "Download the table as CSV" and csv.proto.url.endswith(".csv")


def test_deselecting_all_runs_asks_for_a_pick():
    write_run("completed", seed=1)
    write_run("failed", seed=2, error="x")
    at = _app()
    at.multiselect(key="compare_runs").set_value([]).run()
    assert not at.exception
    assert any("Pick runs" in i.value for i in at.info)


def test_runs_without_validation_side_by_side_test_metrics_colours_and_evaluations():
    import json

    from histo_core.evaluation import evaluate

    runs = [write_run("completed", name=f"r{i}", seed=i) for i in range(3)]
    for run in runs:  # trained on train+val: no validation curves
        rows = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in run.metrics()]
        run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate(str(runs[0].path), "synthetic", "val", name="own-val")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="compare_metric").value == "train_acc"
    assert "val_acc" not in at.selectbox(key="compare_metric").options
    figs = [plotly.io.from_json(c.proto.spec) for c in at.get("plotly_chart")]
    curve_colours = [t.line.color for t in figs[0].data]
    assert len(set(curve_colours)) == 3
    bars = figs[1]
    assert {t.name for t in bars.data} == {"r0", "r1", "r2"} and list(bars.data[0].x) == ["accuracy", "AUC", "macro F1"]
    assert [t.marker.color for t in bars.data] == curve_colours  # one colour per run across charts
    assert sum(f.layout.title.text.startswith(("r0", "r1", "r2")) for f in figs) == 3  # confusion matrices
    table = at.dataframe[0].value
    assert sorted(table.columns) == ["r0", "r1", "r2"] and list(table.index[:3]) == ["test acc", "test AUC", "test ECE"]
    evals = at.dataframe[1].value
    assert list(evals["evaluation"]) == ["own-val"] and evals["tiles scored"].iloc[0] == 300


def test_overlay_axis_titles_are_words_not_column_names():
    """Bug: axis titles read `train_acc`; a noisy run's training accuracy is against the noisy labels."""
    from pages.ui.charts import overlay_figure

    fig = overlay_figure({"a": [{"epoch": 1, "train_acc": 0.5}]}, "train_acc")
    assert fig.layout.yaxis.title.text.startswith("training accuracy (on the labels trained on")
    assert "train_acc" not in fig.layout.title.text
