"""Studies: the grid, the recommendation (noisy validation, never test), the Studies page (AppTest), the CLI's
checks, and a real 2 methods x 2 noise levels x 2 seeds study that survives a cancel and a resume (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import plotly.io
import pytest
from streamlit.testing.v1 import AppTest

from histo_core import liveness, paths
from histo_core import study as S
from histo_core.config import TrainConfig
from histo_core.fsutil import savez_atomic, write_json_atomic
from histo_core.runs import RunStatus
from histo_core.task_folders import TASKS_FOLDER, TaskDir, refresh_task
from tests.runfiles import write_run
from tests.train_page import train_page

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "9_Studies.py")


def fake_study(
    skills: dict[str, float], noises=(0.0, 0.4), seeds: int = 2, state: str = "completed", compare: bool = False
) -> TaskDir:
    """A finished study folder whose runs are written directly (no training): method m's runs predict with
    `skills[m]` (higher = more accurate), less so under noise; with `compare`, every cell also with corrections
    (skill + 1)."""
    spec = S.StudySpec(
        archs=["simplecnn"], noises=list(noises), methods=list(skills), seeds=seeds, compare_corrections=compare
    )
    task = TaskDir(paths.runs_dir() / TASKS_FOLDER / "20260101-000000-study-abc123")
    task.path.mkdir(parents=True)
    base = TrainConfig(corrections="/data/corrections/synthetic-0123.json" if compare else "")
    write_json_atomic(
        task.task_path,
        {"kind": "study", "params": {"spec": S.asdict(spec), "base": base.to_dict()}, "key": "k"},
    )
    task.write_status(RunStatus(state=state, step=1000, steps_per_epoch=1000, phase="done"))
    mapping = {}
    for i, cell in enumerate(S.cells(spec)):
        skill = (skills[cell["method"]] + (0.0 if cell.get("as_labelled", True) else 1.0)) * (1.0 - cell["noise"])
        run = write_run(
            "completed", name=f"{cell['method']}-{cell['noise']:g}", skill=skill, seed=i, noise=cell["noise"]
        )
        rng = np.random.default_rng(100 + i)
        labels = np.repeat(np.arange(9), 10)
        logits = rng.normal(0, 1, (90, 9))
        logits[np.arange(90), labels] += skill
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        savez_atomic(run.predictions_path("val"), probs=probs.astype(np.float32), labels=labels)
        mapping[cell["key"]] = str(run.path)
    write_json_atomic(task.path / S.RUNS_FILE, mapping)
    return task


def test_grid_and_configs_give_every_method_the_same_noise():
    spec = S.StudySpec(archs=["simplecnn"], noises=[0.0, 0.4], methods=["ce", "elr+mixup"], seeds=2).validate()
    grid = S.cells(spec)
    assert spec.size() == len(grid) == 8 and len({c["key"] for c in grid}) == 8
    base = TrainConfig(dataset="synthetic", train_splits="train+val")
    a = S.cell_config(base, spec, {"arch": "simplecnn", "noise": 0.4, "method": "ce", "seed": 1})
    b = S.cell_config(base, spec, {"arch": "simplecnn", "noise": 0.4, "method": "elr+mixup", "seed": 1})
    # noise, mode and seed (what fixes the flipped labels) are the same; only the method differs
    assert (a.noise, a.noise_mode, a.seed) == (b.noise, b.noise_mode, b.seed) == (0.4, "fixed", 1)
    assert (a.loss, a.mixup) == ("ce", 0.0) and (b.loss, b.mixup) == ("elr", 0.4)
    assert a.train_splits == "train"  # a validation split to choose on


def test_a_study_takes_codivide_by_default_and_by_name():
    import argparse

    from histo_core.commands import study as study_command
    from histo_core.config import networks_of

    assert "codivide" in S.StudySpec(archs=["simplecnn"], noises=[0.4]).methods  # --methods defaults to every method
    parser = argparse.ArgumentParser()
    study_command.register(parser.add_subparsers())
    assert "codivide" in parser.parse_args(["study"]).methods.split(",")  # the command line's default too
    spec = S.StudySpec(archs=["simplecnn"], noises=[0.4], methods=["ce", "codivide"], seeds=1).validate()
    base = TrainConfig(dataset="synthetic")
    cfg = S.cell_config(base, spec, {"arch": "simplecnn", "noise": 0.4, "method": "codivide", "seed": 0})
    assert cfg.loss == "codivide" and networks_of(cfg) == 2


def test_a_studys_time_counts_each_method_by_its_passes_over_the_training_tiles():
    """One place (config.training_passes) says how much longer a method's run takes; the Train page's total and
    the command line's use it: two networks for codivide, plus a prediction pass (a third of an epoch) per epoch of
    the divide losses' averaging window (epochs 16-30 of 60; 24-45 of 90)."""
    from histo_core.config import training_passes, with_method

    base = TrainConfig(dataset="synthetic", epochs=60)
    assert training_passes(base) == 60 and training_passes(with_method(base, "mixup")) == 60
    assert training_passes(with_method(base, "divide")) == pytest.approx(60 + 15 / 3)
    assert training_passes(with_method(base, "codivide")) == pytest.approx(2 * (60 + 15 / 3))  # 130: 2.2 x ce
    assert training_passes(with_method(base.replace(epochs=90), "codivide")) == pytest.approx(2 * (90 + 22 / 3))
    spec = S.StudySpec(archs=["simplecnn"], noises=[0.0, 0.2, 0.4], methods=["ce", "codivide"], seeds=2)
    assert spec.time_in_runs(base) == pytest.approx(6 * (60 + 130) / 60)  # 12 runs, the time of 19 ce runs
    assert spec.weights_note(base) == "counting each method's passes over the training tiles: a codivide run as 2.2"
    from_codivide = with_method(base, "codivide")  # the estimated run may itself be the slower one
    assert spec.time_in_runs(from_codivide) == pytest.approx(6 * (60 + 130) / 130)
    assert "a ce run as 0.5" in spec.weights_note(from_codivide)
    assert S.StudySpec(archs=["simplecnn"], noises=[0.4], methods=["ce", "gce"]).weights_note(base) == ""


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"methods": ["ce", "coteach"]}, "--methods must be among"),
        ({"noises": [0.0, 0.95]}, "--noise levels must be between 0 and 0.9"),
        ({"archs": ["resnet1000"]}, "--arch must be among"),
        ({"seeds": 0}, "--seeds must be between 1 and 20"),
    ],
)
def test_bad_spec_names_the_option(changes, message):
    from histo_core.errors import ConfigError

    kwargs = {"archs": ["simplecnn"], "noises": [0.0], "methods": ["ce"], **changes}
    with pytest.raises(ConfigError, match=message):
        S.StudySpec(**kwargs).validate()


def test_cli_refuses_a_bad_method_in_one_line():
    import contextlib
    import io

    from histo_core.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["study", "--dataset", "synthetic", "--methods", "ce,nope", "--noise", "0"])
    assert (
        code == 2 and err.getvalue().startswith("error: --methods must be among") and "Traceback" not in err.getvalue()
    )


def test_cli_start_line_gives_the_time_in_runs_as_the_page_does(monkeypatch):
    import contextlib
    import io

    from histo_core import launch
    from histo_core.cli import main

    monkeypatch.setattr(launch, "start_process", lambda folder, kind, *args: 0)  # the driver is not started
    err = io.StringIO()
    args = ["--methods", "ce,codivide", "--noise", "0.4", "--seeds", "1", "--epochs", "60", "--detach"]
    with contextlib.redirect_stderr(err):
        code = main(["study", "--dataset", "synthetic", "--arch", "simplecnn", *args])
    assert code == 0, err.getvalue()
    # 60 + 130 epochs' passes over the training tiles: the time of 3.17 ce runs, not 3 ("codivide counts twice")
    assert (
        "study of 2 runs started, about the training time of 3.17 runs of these settings (counting each "
        in (err.getvalue())
        and "a codivide run as 2.2)" in err.getvalue()
    ), err.getvalue()


def test_recommendation_follows_noisy_validation_not_test():
    rows = []
    for seed in range(3):
        # "testwin" is best on test but worst on noisy validation: the recommendation must not see the test split
        rows.append(
            {
                "arch": "a",
                "method": "testwin",
                "noise": 0.4,
                "seed": seed,
                "test": {"accuracy": 0.9},
                "val_noisy_acc": 0.5,
            }
        )
        rows.append(
            {
                "arch": "a",
                "method": "valwin",
                "noise": 0.4,
                "seed": seed,
                "test": {"accuracy": 0.6},
                "val_noisy_acc": 0.6 + 0.01 * seed,
            }
        )
    rec = S.recommend(rows)["0.4"]
    assert rec["method"] == "valwin" and rec["runner_up"]["method"] == "testwin"
    assert rec["certainty"] == 1.0  # better on every seed


def test_results_summary_ci_and_csv():
    task = fake_study({"ce": 2.5, "gce": 1.0})
    res = S.study_results(task)
    assert len(res["runs"]) == 8 and all(r["state"] == "completed" for r in res["runs"])
    by = {(r["method"], r["noise"]): r for r in res["summary"]}
    assert set(by) == {("ce", 0.0), ("ce", 0.4), ("gce", 0.0), ("gce", 0.4)}
    ce = by[("ce", 0.0)]
    accs = [r["test"]["accuracy"] for r in res["runs"] if (r["method"], r["noise"]) == ("ce", 0.0)]
    assert ce["accuracy_mean"] == pytest.approx(np.mean(accs)) and ce["seeds"] == 2
    assert min(accs) - 1e-9 <= ce["accuracy_ci_low"] <= ce["accuracy_ci_high"] <= max(accs) + 1e-9
    assert res["recommended"]["0"]["method"] == "ce"  # the far more skilled method on the validation split
    csv = S.results_csv(res).splitlines()
    assert csv[0].startswith("arch,method,noise,seeds,accuracy_mean") and len(csv) == 5


def test_studies_page_draws_lines_table_and_recommendation():
    task = fake_study({"ce": 2.5, "gce": 1.0})
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="study_id").value == task.id
    fig = plotly.io.from_json(at.get("plotly_chart")[0].proto.spec)
    assert {t.name for t in fig.data} == {"ce", "gce"}
    assert all(list(t.x) == [0.0, 0.4] for t in fig.data)
    ce_clean = next(r for r in S.study_results(task)["summary"] if (r["method"], r["noise"]) == ("ce", 0.0))
    ce_line = next(t for t in fig.data if t.name == "ce")
    assert ce_line.y[0] == pytest.approx(ce_clean["accuracy_mean"])
    assert ce_line.error_y.array[0] == pytest.approx(ce_clean["accuracy_sd"])
    low, high = ce_clean["accuracy_ci_low"], ce_clean["accuracy_ci_high"]
    assert f"95% bootstrap CI {100 * low:.1f}%-{100 * high:.1f}%" in ce_line.customdata[0]  # accuracies as %
    assert fig.layout.shapes[0].y0 == pytest.approx(ce_clean["accuracy_mean"])  # the clean baseline
    texts = [t.value for t in at.text]
    assert any(t.startswith("noise 0.4: ") for t in texts) and any(t.startswith("noise 0: ce") for t in texts)
    table = at.dataframe[0].value
    assert len(table) == 4 and {"accuracy_mean", "accuracy_sd", "accuracy_ci_low"} <= set(table.columns)
    assert table["ci"].iloc[0] == f"{100 * low:.1f}%-{100 * high:.1f}%"  # the table's 95% CI column, ce at noise 0
    for metric in ("auc", "macro_f1"):  # the table follows the chosen metric
        at.radio(key="study_metric").set_value(metric).run()
        assert not at.exception, at.exception
    # a finished study: Cancel is off, Delete removes it and all its runs
    assert at.button(key="study_cancel").disabled
    runs = list(S.study_runs(task).values())
    at.button(key="study_delete").click().run()
    assert not at.exception and not task.path.exists() and not any(r.path.exists() for r in runs)


def test_studies_page_without_studies_says_how_to_start_one():
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and "python -m histo_core study" in at.info[0].value


def _histo(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "histo_core", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )


@pytest.mark.slow
def test_a_study_runs_to_completion_through_a_cancel_and_a_resume():
    args = ["--dataset", "synthetic", "--arch", "simplecnn", "--noise", "0,0.4", "--methods", "ce,gce", "--seeds", "2"]
    args += ["--find-errors"]
    tiny = ["--epochs", "1", "--max-train-samples", "64", "--batch-size", "32", "--threads", "1", "--no-tta"]
    started = _histo("study", *args, *tiny, "--detach", "--json")
    assert started.returncode == 0, started.stderr
    sid = json.loads(started.stdout)["study"]
    task = S.study_by_id(sid)
    deadline = time.monotonic() + 600
    while not any(liveness.refresh_status(r).state == "completed" for r in S.study_runs(task).values()):
        assert time.monotonic() < deadline and refresh_task(task).state in liveness.ACTIVE_STATES
        time.sleep(0.5)
    # never all at once: one run of the study queued or running at a time (--parallel 1)
    assert sum(liveness.refresh_status(r).state in liveness.ACTIVE_STATES for r in S.study_runs(task).values()) <= 1
    S.cancel_study(task)
    while refresh_task(task).state in liveness.ACTIVE_STATES:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert refresh_task(task).state == "cancelled"
    first = {k: r.path for k, r in S.study_runs(task).items() if liveness.refresh_status(r).state == "completed"}
    assert first and len(S.study_runs(task)) < 8
    S.resume_study(task)
    while refresh_task(task).state in liveness.ACTIVE_STATES:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    shown = _histo("study", "--show", sid, "--json")
    assert shown.returncode == 0, shown.stderr
    res = json.loads(shown.stdout)
    assert res["state"] == "completed" and len(res["runs"]) == 8
    assert all(r["state"] == "completed" and r["test"]["accuracy"] is not None for r in res["runs"])
    assert {(r["method"], r["noise"], r["seed"]) for r in res["runs"]} == {
        (m, n, s) for m in ("ce", "gce") for n in (0.0, 0.4) for s in (0, 1)
    }
    for key, path in first.items():  # runs finished before the cancel were kept, not retrained
        assert str(S.study_runs(task)[key].path) == str(path)
    assert set(res["recommended"]) == {"0", "0.4"} and all(
        r["method"] in ("ce", "gce") for r in res["recommended"].values()
    )
    # every method trained on the same flipped labels for a given seed and noise level
    for seed in (0, 1):
        flips = [
            np.load(Path(r["run_dir"]) / "noise.npz")["noisy_labels"]
            for r in res["runs"]
            if r["noise"] == 0.4 and r["seed"] == seed
        ]
        assert len(flips) == 2 and np.array_equal(flips[0], flips[1])
    # --find-errors: the label errors of ce's noisy runs were searched, scored against the injected flips
    [det] = res["detection"]
    assert (det["method"], det["noise"], det["seeds"]) == ("ce", 0.4, 2) and 0 <= det["average_precision"] <= 1
    assert res["per_class"] and {r["noise"] for r in res["per_class"]} == {0.0, 0.4}
    # its view renders: lines, tables and the three CSV downloads
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, at.exception
    assert {t.name for t in plotly.io.from_json(at.get("plotly_chart")[0].proto.spec).data} == {"ce", "gce"}
    assert len(at.get("download_button")) == 3
    S.delete_study(task)
    assert not task.path.exists() and not any(Path(r["run_dir"]).exists() for r in res["runs"])


def test_train_page_starts_the_form_as_a_study_with_its_count(monkeypatch):
    """The Train page's study panel: the number of runs, then one study of the form's settings (the driver
    process itself is replaced by a recorder; the real one runs in the slow test above)."""
    calls = []

    def fake_start(spec, config, runs_root=None, started_by=None):
        spec.validate()
        calls.append((spec, config))
        return fake_study({"ce": 2.5}, noises=(0.0,), seeds=1, state="running")

    monkeypatch.setattr(S, "start_study", fake_start)
    at = train_page().run()
    assert not at.exception, at.exception
    at.multiselect(key="train.study.noises").set_value([0.0, 0.4])
    at.multiselect(key="train.study.methods").set_value(["ce", "mixup"])
    at.number_input(key="train.study.seeds").set_value(2)
    at.run()
    assert any(c.value.startswith("8 runs of ") for c in at.caption)
    at.button(key="train.study.start").click().run()
    assert not at.exception, at.exception
    assert len(calls) == 1
    spec, config = calls[0]
    assert (spec.noises, spec.methods, spec.seeds, spec.noise_mode) == ([0.0, 0.4], ["ce", "mixup"], 2, "fixed")
    assert spec.archs == [config.arch] and config.dataset == "synthetic"
    assert any("Started study" in s.value for s in at.success)
    at.button(key="train.study.start").click().run()  # the same settings while it runs: not a second study
    assert len(calls) == 1 and any("already running" in i.value for i in at.info)


def _save_search(run, flipped: np.ndarray, order: np.ndarray, flagged: np.ndarray) -> None:
    """A label-error report whose ranking (most suspicious first) is `order` over len(flipped) training tiles."""
    from histo_core.label_errors import LabelErrorReport, save_label_errors

    n, k = len(flipped), 3
    probs = np.full((n, k), 0.1, np.float32)
    given = np.zeros(n, np.int64)
    probs[order, 0] = np.linspace(0.05, 0.8, n)  # self-confidence rises along `order`
    save_label_errors(
        run,
        LabelErrorReport(
            classes=["a", "b", "c"],
            indices=np.arange(n),
            given=given,
            probs=probs,
            flagged=flagged,
            thresholds=np.full(k, 0.5),
            flipped=flipped,
            clean=np.ones(n, np.int64),
            info={"folds": 2, "epochs": 1, "arch": "simplecnn", "seconds": 1.0, "sampled": False},
        ),
    )


def test_per_class_and_detection_quality_tables_and_csv():
    task = fake_study({"ce": 2.5, "gce": 1.0})
    runs = S.study_runs(task)
    # seed 0: a perfect ranking (AP 1); seed 1: flips ranked 1st and 3rd of 4 (AP (1 + 2/3) / 2)
    flipped = np.array([True, True, False, False])
    _save_search(runs["simplecnn|0.4|ce|0"], flipped, np.array([0, 1, 2, 3]), np.array([True, True, True, False]))
    _save_search(runs["simplecnn|0.4|ce|1"], flipped, np.array([0, 2, 1, 3]), np.array([True, False, False, False]))
    res = S.study_results(task)
    [det] = res["detection"]
    assert (det["method"], det["noise"], det["seeds"], det["labels"]) == ("ce", 0.4, 2, "as labelled")
    assert det["precision"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert det["recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert det["average_precision"] == pytest.approx((1.0 + (1 + 2 / 3) / 2) / 2)
    # per class: the mean over seeds of each class's test recall
    tumour = [r for r in res["per_class"] if (r["method"], r["noise"], r["class"]) == ("gce", 0.4, CLASS)]
    recalls = [
        next(c["recall"] for c in run.results()["test"]["per_class"] if c["class"] == CLASS)
        for key, run in runs.items()
        if key.startswith("simplecnn|0.4|gce|")
    ]
    assert len(tumour) == 1 and tumour[0]["accuracy_mean"] == pytest.approx(np.mean(recalls))
    per_class_csv = S.results_csv(res, "per_class").splitlines()
    assert per_class_csv[0] == "arch,method,labels,noise,class,seeds,accuracy_mean,accuracy_sd"
    n_classes = len(runs["simplecnn|0|ce|0"].results()["test"]["per_class"])
    assert len(per_class_csv) == 1 + 2 * 2 * n_classes
    assert S.results_csv(res, "detection").splitlines()[1].startswith("ce,as labelled,0.4,2,2.0,")


CLASS = "tumour"


def test_compare_corrections_runs_every_cell_twice_and_only_the_labels_differ():
    spec = S.StudySpec(archs=["simplecnn"], noises=[0.4], methods=["ce"], seeds=1, compare_corrections=True)
    base = TrainConfig(dataset="synthetic", arch="simplecnn", corrections="/c.json")
    plain_cell, corrected_cell = S.cells(spec)
    assert spec.size() == 2 and corrected_cell["key"] == plain_cell["key"] + "|corrected"
    plain, corrected = S.cell_config(base, spec, plain_cell), S.cell_config(base, spec, corrected_cell)
    assert plain.corrections == "" and corrected.corrections == "/c.json"
    assert plain.replace(corrections="/c.json") == corrected
    with pytest.raises(S.ConfigError, match="--compare-corrections .* give one"):
        S.start_study(spec, base.replace(corrections=""))


def test_studies_page_compares_labels_and_shows_per_class_and_detection():
    task = fake_study({"ce": 2.5, "gce": 1.0}, compare=True)
    runs = S.study_runs(task)
    _save_search(runs["simplecnn|0.4|ce|0"], np.array([True, False]), np.array([0, 1]), np.array([True, False]))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, at.exception
    fig = plotly.io.from_json(at.get("plotly_chart")[0].proto.spec)
    assert {t.name for t in fig.data} == {"ce (as labelled)", "ce (with corrections)", "gce (as labelled)"} | {
        "gce (with corrections)"
    }
    tables = [d.value for d in at.dataframe]
    pair = next(t for t in tables if "difference" in t.columns)
    summary = {(r["method"], r["noise"], r["labels"]): r["accuracy_mean"] for r in S.study_results(task)["summary"]}
    row = pair[(pair["method"] == "ce") & (pair["noise"] == 0.4)].iloc[0]
    assert row["difference"] == pytest.approx(
        summary[("ce", 0.4, "with corrections")] - summary[("ce", 0.4, "as labelled")]
    )
    per_class = next(t for t in tables if "class" in t.columns)
    assert list(per_class.columns) == ["class", "noise 0", "noise 0.4"] and CLASS in set(per_class["class"])
    detection = next(t for t in tables if "average_precision" in t.columns)
    assert detection["average_precision"].tolist() == [1.0]
    keys = {b.proto.id.split("-")[-1] for b in at.get("download_button")}
    assert len(at.get("download_button")) == 3, keys  # summary, per class, detection


def test_train_page_starts_a_study_with_find_errors_and_compare_corrections(monkeypatch):
    """The Train page's study panel offers `study --find-errors` and `--compare-corrections`: a tiny study
    launched from the page records both in its parameters (the task folder is written as the CLI writes it; only
    the driver process is not started)."""
    from histo_core import launch
    from histo_core.corrections import add_marks, corrections_path, dataset_identity
    from histo_core.datasets import open_dataset

    monkeypatch.setattr(launch, "start_process", lambda folder, kind, *args: 0)  # the driver is not started
    ident = dataset_identity(open_dataset("synthetic"))
    path = corrections_path(ident)
    at = train_page(timeout=90).run()
    assert not at.exception, at.exception
    assert at.checkbox(key="train.study.compare_corrections").disabled  # no corrections ticked: nothing to compare
    add_marks(path, ident, [{"tile": "train:1", "action": "exclude"}])
    at.run()
    at.checkbox(key="train.use_corrections").check().run()
    at.number_input(key="train.epochs").set_value(1)
    at.multiselect(key="train.study.noises").set_value([0.2])
    at.multiselect(key="train.study.methods").set_value(["ce"])
    at.number_input(key="train.study.seeds").set_value(1)
    at.checkbox(key="train.study.find_errors").check()
    at.checkbox(key="train.study.compare_corrections").check()
    at.run()
    assert any(c.value.startswith("2 runs of ") for c in at.caption)  # as labelled and with the corrections
    at.button(key="train.study.start").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    [task] = S.list_studies()
    params = task.task()["params"]
    spec, base = params["spec"], params["base"]
    assert spec["find_errors"] is True and spec["compare_corrections"] is True
    assert (spec["noises"], spec["methods"], spec["seeds"]) == ([0.2], ["ce"], 1)
    assert base["corrections"] == str(path) and base["epochs"] == 1
    assert S.StudySpec(**spec).size() == 2
    view = AppTest.from_file(PAGE, default_timeout=60).run()  # the Studies page says what the study measures
    assert not view.exception, view.exception
    header = view.caption[0].value
    assert "1 architecture × 1 noise level × 1 method × 1 seed," in header, header
    assert "label-error search measured" in header and "as labelled and with corrections" in header


def test_train_page_study_counts_one_run_in_the_singular(monkeypatch):
    at = train_page(timeout=90).run()
    at.multiselect(key="train.study.noises").set_value([0.0])
    at.multiselect(key="train.study.methods").set_value(["ce"])
    at.number_input(key="train.study.seeds").set_value(1)
    at.run()
    assert not at.exception, at.exception
    assert any(c.value.startswith("1 run of ") for c in at.caption)


def test_train_page_study_total_counts_each_method_by_its_passes_over_the_tiles(monkeypatch):
    """The study panel's total is the estimate of one run times each run's training passes over the estimated
    run's: at 60 epochs a codivide run is 2 x (60 + 15/3) = 130 epochs' passes (two networks, and a prediction pass
    of the training tiles, a third of an epoch, after each of the 15 epochs of its averaging window), 130/60 of a
    ce run. ce + codivide at one noise level and one seed: 60 s + 130 s, not the 180 s of "codivide counts twice"."""
    from pages.ui.runs import fmt_duration
    from tests.taskfiles import instant_submit

    est = {"total_s": 60.0, "epochs": 60, "per_epoch_s": 1.0, "train_tiles": 100, "train_images_per_s": 10.0}
    instant_submit(monkeypatch, {"estimate": {**est, "warmup_batches": 1, "val_tiles": 10, "fixed_s": 0.0}})
    at = train_page(timeout=90).run()
    at.number_input(key="train.epochs").set_value(60).run()  # the estimate is of the form's config: set it first
    at.button[[b.label for b in at.button].index("Estimate the training time")].click().run()
    at.multiselect(key="train.study.noises").set_value([0.2])
    at.number_input(key="train.study.seeds").set_value(1)

    def total(methods: list[str]) -> str:
        at.multiselect(key="train.study.methods").set_value(methods).run()
        assert not at.exception, at.exception
        [caption] = [c.value for c in at.caption if " in all at the estimate of one run" in c.value]
        return caption

    assert f"about {fmt_duration(60)} in all" in total(["ce"]) and "passes" not in total(["ce"])
    both = total(["ce", "codivide"])
    assert "2 runs of" in both and f"about {fmt_duration(190)} in all" in both, both
    assert "a codivide run as 2.2" in both, both  # the user is told why the total is not 2 x 60 s
