"""How the pages write numbers and tables (issue 24, "Confusing or untidy"): an accuracy is a percentage wherever it
shows (text, tables, chart axes), a missing value is "-" (never "None"), and a count takes the right plural."""

from __future__ import annotations

import json
import re
from pathlib import Path

import plotly.io
from streamlit.testing.v1 import AppTest

from histo_core.config import TrainConfig
from histo_core.fsutil import write_json_atomic
from histo_core.runs import RunStatus, create_run_dir
from pages.ui import charts
from pages.ui.formats import MISSING, num, pct, plural
from tests.runfiles import write_run

ROOT = Path(__file__).resolve().parent.parent


def test_one_format_for_accuracies_scores_and_counts():
    assert pct(0.2083) == "20.8%" and pct(1) == "100.0%" and pct(None) == MISSING and pct(float("nan")) == MISSING
    assert num(0.85531) == "0.855" and num(None) == MISSING
    assert plural(1, "run") == "1 run" and plural(3, "run") == "3 runs" and plural(0, "run") == "0 runs"
    assert plural(2, "class", "classes") == "2 classes"


def test_every_table_of_the_pages_goes_through_show_table():
    """show_table (pages/ui/common.py) is what makes a missing cell "-": a page that called st.dataframe itself
    would show Streamlit's "None" again."""
    offenders = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in sorted((ROOT / "pages").rglob("*.py"))
        if path.name != "common.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.dataframe\(", line)
    ]
    assert not offenders, f"tables drawn without show_table: {offenders}"


def _sparse_run(name: str):
    """A finished run that records only its test accuracy: no AUC, ECE, best epoch or duration."""
    run = create_run_dir(run_id=f"20260101-000000-{name}")
    write_json_atomic(run.config_path, TrainConfig(dataset="synthetic", arch="cnn3", name=name).to_dict())
    write_json_atomic(run.dataset_path, {"title": "Synthetic H&E demo (SYNTHETIC, 28 px)"})
    run.write_status(RunStatus(state="completed", epoch=2, epochs=2))
    write_json_atomic(run.results_path, {"test": {"accuracy": 0.875}})
    return run


def _assert_missing_cells_show_a_dash(at: AppTest) -> int:
    """Every rendered table with a missing cell asks Streamlit to draw it as "-"; returns how many had one."""
    with_missing = 0
    for frame in at.dataframe:
        if frame.value.isna().to_numpy().any():
            with_missing += 1
            assert frame.proto.placeholder == MISSING, f"missing cells show as 'None' in {list(frame.value.columns)}"
    return with_missing


def test_missing_values_show_as_a_dash_on_home_and_compare():
    write_run("completed", name="full")
    _sparse_run("sparse")
    home = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not home.exception, home.exception
    compare = AppTest.from_file(str(ROOT / "pages" / "4_Compare.py"), default_timeout=60).run()
    assert not compare.exception, compare.exception
    assert _assert_missing_cells_show_a_dash(home) >= 1  # the runs table: no AUC for "sparse"
    table = compare.dataframe[0].value  # the comparison, a column per run: no AUC, ECE, best epoch for "sparse"
    assert [table.loc[k, "sparse"] for k in ("test AUC", "test ECE", "best epoch")] == [MISSING] * 3
    assert not table.isna().to_numpy().any() and "None" not in table.to_numpy()


def _percent_columns(frame) -> set[str]:
    config = json.loads(frame.proto.columns or "{}")
    return {c for c, v in config.items() if (v.get("type_config") or {}).get("format") == "percent"}


def test_accuracy_is_a_percentage_on_runs_compare_and_review():
    a = write_run("completed", name="a", seed=1)
    write_run("completed", name="b", seed=2)
    accuracy = a.results()["test"]["accuracy"]

    runs = AppTest.from_file(str(ROOT / "pages" / "3_Runs.py"), default_timeout=60)
    runs.query_params["run"] = a.id
    runs.run()
    assert not runs.exception, runs.exception
    assert "test acc" in _percent_columns(runs.dataframe[0])
    assert pct(accuracy) in [m.value for m in runs.metric]
    accuracy_chart = next(
        plotly.io.from_json(c.proto.spec)
        for c in runs.get("plotly_chart")
        if "accuracy per epoch" in plotly.io.from_json(c.proto.spec).layout.title.text
    )
    assert accuracy_chart.layout.yaxis.tickformat == ".0%"

    compare = AppTest.from_file(str(ROOT / "pages" / "4_Compare.py"), default_timeout=60).run()
    assert not compare.exception, compare.exception
    assert compare.dataframe[0].value.loc["test acc", "a"] == pct(accuracy)  # a column per run, written out

    review = AppTest.from_file(str(ROOT / "pages" / "6_Review.py"), default_timeout=60)
    review.query_params["run"] = a.id
    review.run()
    assert not review.exception, review.exception
    captions = " ".join(c.value for c in review.caption)
    assert re.search(r"accuracy \d+\.\d%", captions), captions
    assert not re.search(r"accuracy 0\.\d{3}", captions), captions


def test_accuracy_axes_and_bars_are_percentages():
    rows = [{"epoch": 1, "train_acc": 0.5, "val_acc": 0.45}, {"epoch": 2, "train_acc": 0.6, "val_acc": 0.55}]
    assert charts.curve_figure(rows, "accuracy").layout.yaxis.tickformat == ".0%"
    assert charts.curve_figure(rows, "loss").layout.yaxis.tickformat is None
    assert charts.overlay_figure({"a": rows}, "val_acc").layout.yaxis.tickformat == ".0%"
    bars = charts.metrics_bar_figure({"a": {"accuracy": 0.2083, "AUC": 0.8553}})
    assert list(bars.data[0].text) == ["20.8%", "0.855"]
    study = charts.study_figure(
        [{"arch": "simplecnn", "method": "ce", "noise": 0.2, "accuracy_mean": 0.8, "accuracy_sd": 0.01, "seeds": 3}]
    )
    assert study.layout.yaxis.tickformat == ".0%"


def test_count_charts_tick_whole_numbers_only():
    """A confusion matrix of counts (its colour bar) never ticks at 0.5."""
    small = charts.confusion_figure([[1, 0], [1, 0]], ["a", "b"])
    assert (small.data[0].colorbar.dtick, small.data[0].colorbar.tickformat) == (1, "d")
    assert charts.confusion_figure([[40, 3], [2, 55]], ["a", "b"]).data[0].colorbar.tickformat == ",d"
    assert charts.confusion_figure([[1, 0], [1, 0]], ["a", "b"], normalize=True).data[0].colorbar.dtick is None


def test_train_form_help_names_widgets_not_command_line_flags():
    """The option table's help is shared with the CLI; on the page "stop when --monitor has not improved for
    --patience epochs" names the widgets instead."""
    from tests.train_page import train_page

    at = train_page(timeout=90).run()
    assert not at.exception, at.exception
    helps = {
        w.key: w.help
        for kind in ("selectbox", "number_input", "checkbox", "text_input")
        for w in at.get(kind)
        if getattr(w, "key", "") and str(w.key).startswith("train.") and getattr(w, "help", None)
    }
    assert helps and not [k for k, h in helps.items() if re.search(r"--[a-z]", h)], helps
    assert "'Monitor" in helps["train.early_stopping"]


def test_compare_says_training_accuracy_is_on_the_labels_trained_on():
    """A noisy run's training accuracy is measured against its noisy labels: Compare's curve says so, in the same
    words as the Runs page's charts (it said "training accuracy")."""
    write_run("completed", name="clean", seed=1)
    write_run("completed", name="noisy", seed=2, noise=0.4)
    at = AppTest.from_file(str(ROOT / "pages" / "4_Compare.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    at.selectbox(key="compare_metric").set_value("train_acc").run()
    title = plotly.io.from_json(at.get("plotly_chart")[0].proto.spec).layout.title.text
    assert "labels trained on" in title and "noisy ones included" in title, title
