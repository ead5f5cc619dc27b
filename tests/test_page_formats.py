"""How the pages write numbers and tables (issue 24, "Confusing or untidy"): an accuracy is a percentage wherever it
shows (text, tables, chart axes), a missing value is "-" (never "None"), and a count takes the right plural."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from histo_core.config import TrainConfig
from histo_core.fsutil import write_json_atomic
from histo_core.runs import RunStatus, create_run_dir
from pages.ui import charts
from pages.ui.formats import MISSING, num, pct, plural

ROOT = Path(__file__).resolve().parent.parent


def test_one_format_for_accuracies_scores_and_counts():
    assert pct(0.2083) == "20.8%" and pct(1) == "100.0%" and pct(None) == MISSING and pct(float("nan")) == MISSING
    assert num(0.85531) == "0.855" and num(None) == MISSING
    assert plural(1, "run") == "1 run" and plural(3, "run") == "3 runs" and plural(0, "run") == "0 runs"
    assert plural(2, "class", "classes") == "2 classes"


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


def _percent_columns(frame) -> set[str]:
    config = json.loads(frame.proto.columns or "{}")
    return {c for c, v in config.items() if (v.get("type_config") or {}).get("format") == "percent"}


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
