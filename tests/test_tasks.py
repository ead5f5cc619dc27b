"""Background tasks for page work (histo_core.tasks), the measured time estimate and the LR-finder chart."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from histo_core import kinds, launch, liveness, procs, task_folders, tasks
from histo_core.errors import HistoError
from tests.conftest import ROOT
from tests.taskfiles import make_task, wait_for_task


def small_config(**changes):
    from histo_core.training import default_config

    cfg = default_config("synthetic", device="cpu")
    cfg.epochs, cfg.max_train_samples, cfg.threads, cfg.batch_size = 3, 256, 1, 32
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg


# -- issue 14 bug 4: the LR-finder chart -------------------------------------------------------------------


def test_lr_finder_chart_spans_the_tested_rates_with_the_marker_at_the_suggestion():
    from pages.ui.charts import lr_find_figure

    lrs = list(np.geomspace(1e-6, 1.0, 50))
    fig = lr_find_figure(lrs, list(np.linspace(2, 1, 50)), 3e-3)
    assert fig.layout.xaxis.type == "log"
    assert list(fig.layout.xaxis.range) == pytest.approx([-6.0, 0.0])  # log10 of the tested range, not 1e-60
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == pytest.approx(3e-3)  # shapes take data values on a log axis
    assert fig.layout.annotations[0].x == pytest.approx(math.log10(3e-3))  # annotations take log10


# -- issue 14 bug 5: the time estimate --------------------------------------------------------------------


@pytest.mark.slow
def test_estimate_times_after_warm_up_and_counts_validation_and_fixed_costs(monkeypatch):
    """A deterministic clock: the first batches of a fresh process are slow (5 s, 2.5 s), then 0.1 s each;
    evaluation takes 1 ms per tile. The old estimate (one warm-up batch, no validation, no fixed costs) said
    "7 min" cold and "0 s per epoch" warm."""
    from histo_core import estimate
    from histo_core import training as T

    now = {"t": 0.0, "steps": 0}
    monkeypatch.setattr(estimate, "_clock", lambda: now["t"])
    real_step, real_predict = T.Trainer.train_step, T.Trainer.predict

    def step(self, x, y, *rest):
        now["steps"] += 1
        now["t"] += {1: 5.0, 2: 2.5}.get(now["steps"], 0.1)
        return real_step(self, x, y, *rest)

    def predict(self, source, *a, **k):
        now["t"] += 0.001 * len(source)
        return real_predict(self, source, *a, **k)

    monkeypatch.setattr(T.Trainer, "train_step", step)
    monkeypatch.setattr(T.Trainer, "predict", predict)
    from histo_core import checkpoint as ckpt_mod

    real_save = ckpt_mod.save_checkpoint

    def save(*a, **k):  # each checkpoint write takes 0.2 s (bug: "13 s" estimated for a 61 s run)
        now["t"] += 0.2
        return real_save(*a, **k)

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", save)
    cfg = small_config(train_splits="train")
    est = estimate.estimate_run_time(cfg, startup_s=3.0)
    assert est["checkpoint_s"] == pytest.approx(0.4)  # last.pt and best.pt, every epoch
    assert est["warmup_batches"] == 4  # warm once two consecutive batches agree
    assert est["train_images_per_s"] == pytest.approx(cfg.batch_size / 0.1)  # the cold batches are not averaged in
    assert est["val_tiles"] > 0 and est["eval_images_per_s"] == pytest.approx(1000)
    per_epoch = est["steps_per_epoch"] * 0.1 + est["val_tiles"] / 1000 + 0.4
    assert est["per_epoch_s"] == pytest.approx(per_epoch) and est["per_epoch_s"] > 1  # never "0 s per epoch"
    cold_extra = (5.0 + 2.5 + 0.1 + 0.1) - 4 * 0.1
    final_eval = (est["test_tiles"] + est["val_tiles"]) / 1000
    embed = (est["train_tiles"] + est["val_tiles"] + est["test_tiles"]) / 1000  # the feature map's pass
    assert est["fixed_s"] == pytest.approx(3.0 + cold_extra + final_eval + embed)  # start-up, warm-up, final test
    assert est["total_s"] == pytest.approx(est["fixed_s"] + 3 * per_epoch)


@pytest.mark.slow
def test_estimate_counts_the_divide_window_prediction_passes(monkeypatch):
    """divide predicts every training tile after each epoch of its averaging window (epochs 3-4 of 8): two passes
    over the training tiles at evaluation speed (1 ms per tile here), paid once in the run, as
    config.training_passes counts them for the study's total."""
    from histo_core import estimate
    from histo_core import training as T

    now = {"t": 0.0}
    monkeypatch.setattr(estimate, "_clock", lambda: now["t"])
    real_predict = T.Trainer.predict

    def predict(self, source, *a, **k):
        now["t"] += 0.001 * len(source)
        return real_predict(self, source, *a, **k)

    monkeypatch.setattr(T.Trainer, "predict", predict)
    est = estimate.estimate_run_time(small_config(train_splits="train", loss="divide", epochs=8), startup_s=0.0)
    assert est["window_s"] == pytest.approx(2 * est["train_tiles"] / 1000) and est["window_s"] > 0
    embed = (est["train_tiles"] + est["val_tiles"] + est["test_tiles"]) / 1000
    final_eval = (est["test_tiles"] + est["val_tiles"]) / 1000
    assert est["fixed_s"] == pytest.approx(final_eval + embed + est["window_s"], abs=1e-6)
    ce = estimate.estimate_run_time(small_config(train_splits="train", epochs=8), startup_s=0.0)
    assert ce["window_s"] == 0.0


# -- the task machinery -----------------------------------------------------------------------------------


def test_page_tasks_count_against_the_queue_cap(monkeypatch):
    monkeypatch.setenv("HISTO_MAX_QUEUED", "1")
    task = make_task("estimate", {"x": 1}, state="running")
    task.update_status(pid=os.getpid(), pid_start=procs.proc_start_time(os.getpid()))
    with pytest.raises(HistoError, match="HISTO_MAX_QUEUED=1"):
        launch.submit_task("lr-find", {"config": small_config().to_dict()})
    assert len(task_folders.list_tasks()) == 1


def test_latest_task_is_found_by_kind_and_parameters():
    a = make_task("lr-find", {"config": {"lr": 1}}, result={"lrs": []})
    make_task("lr-find", {"config": {"lr": 2}}, result={"lrs": []})
    assert task_folders.latest_task("lr-find", {"config": {"lr": 1}}).id == a.id
    assert task_folders.latest_task("estimate", {"config": {"lr": 1}}) is None


def test_every_kind_is_declared_once_with_a_runner_the_task_process_can_import():
    """The registry (histo_core.kinds) names each kind's function as "module:function"; a typo there would only
    show when a user starts that kind, so every declared runner is resolved here."""
    import inspect

    declared = kinds.KINDS
    assert {
        "train",
        "lr-find",
        "estimate",
        "label-errors",
        "slide",
        "study",
        "embed",
        "explain-quality",
        "evaluate",
    } <= set(declared)
    for name, kind in declared.items():
        assert kind.name == name and kind.label and kind.result
        if kind.is_task:
            runner = kind.run_function()
            assert list(inspect.signature(runner).parameters)[:2] == ["params", "progress"], name
    assert not declared["train"].is_task and declared["train"].command == ("train", "--run-dir")
    with pytest.raises(HistoError, match="unknown task kind 'train'; one of lr-find"):
        launch.submit_task("train", {})
    with pytest.raises(ValueError, match="module:function"):
        kinds.register_kind(kinds.ProcessKind("x", "x", "no_colon", "x"))


def test_a_new_kind_is_one_declaration(monkeypatch):
    """A kind registered from outside runs through the same task process: its function, its result file."""
    monkeypatch.setitem(kinds.KINDS, "echo", kinds.ProcessKind("echo", "echo", f"{__name__}:echo_runner", "the params"))
    monkeypatch.setattr(tasks.signal, "signal", lambda *args: None)  # run_task's SIGTERM hook: not in pytest
    task = make_task("echo", {"word": "hi"}, state="queued")
    assert tasks.run_task(task) == 0
    assert task.status().state == "completed" and task.result() == {"word": "hi", "seen": 0.5}


def echo_runner(params, progress):
    progress(0.5, "half way")
    return {"word": params["word"], "seen": 0.5}


def test_a_task_whose_process_died_is_noticed_by_the_one_liveness_check():
    """Tasks and runs share liveness.refresh_status and liveness.cancel; the task folder words the messages."""
    gone = 2**22 + 777  # above pid_max: no such process
    died = make_task("estimate", {"x": 2}, state="running")
    died.update_status(pid=gone, pid_start=1)
    status = task_folders.refresh_task(died)
    assert status.state == "failed" and status.error == "the task process ended unexpectedly"
    assert died.status().state == "failed"  # written to disk
    with pytest.raises(HistoError, match="the task is failed; only a queued or running task can be cancelled"):
        task_folders.cancel_task(died)
    asked = make_task("estimate", {"x": 3}, state="running")
    asked.update_status(pid=gone, pid_start=1)
    asked.cancel_path.touch()  # a cancel was asked for, and the process went: that is a cancel
    status = task_folders.refresh_task(asked)
    assert status.state == "cancelled" and status.error is None


def test_a_task_of_an_unknown_kind_fails_with_a_line_naming_the_kind(monkeypatch, capsys):
    monkeypatch.setattr(tasks.signal, "signal", lambda *args: None)  # run_task's SIGTERM hook: not in pytest
    task = make_task("no-such-kind", {}, state="queued")
    assert tasks.run_task(task) == 2
    status = task.status()
    assert status.state == "failed"
    assert "unknown task kind 'no-such-kind'" in status.error and "lr-find" in status.error
    assert "unknown task kind" in capsys.readouterr().err


@pytest.mark.slow
def test_estimate_task_runs_in_its_own_process_and_is_listed():
    task = launch.submit_task("estimate", {"config": small_config().to_dict()})
    status = wait_for_task(task, 240)
    assert status.state == "completed", (status, liveness.log_tail(task))
    assert status.pid != os.getpid()
    result = task.result()
    assert result["per_epoch_s"] > 0 and result["fixed_s"] > 0 and result["total_s"] > result["fixed_s"]
    proc = subprocess.run(
        [sys.executable, "-m", "histo_core", "tasks", "list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0 and f"{task.id}  estimate     completed 100%" in proc.stdout


@pytest.mark.slow
def test_a_task_can_be_cancelled_while_it_runs():
    cfg = small_config(max_train_samples=0)
    task = launch.submit_task("lr-find", {"config": cfg.to_dict(), "steps": 100000})
    deadline = time.monotonic() + 180
    while task_folders.refresh_task(task).step == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    status = task_folders.refresh_task(task)
    assert status.state == "running", (status, liveness.log_tail(task))
    proc = subprocess.run(
        [sys.executable, "-m", "histo_core", "tasks", "cancel", task.id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    status = wait_for_task(task, 60)
    assert status.state == "cancelled"
    deadline = time.monotonic() + 30
    while procs.pid_alive(status.pid) and time.monotonic() < deadline:  # it wrote "cancelled", then exits
        time.sleep(0.2)
    assert not procs.pid_alive(status.pid)
    assert task.result() is None
    assert (
        subprocess.run(
            [sys.executable, "-m", "histo_core", "tasks", "cancel", "../x"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ).returncode
        == 2
    )


def _panel_app():
    import streamlit as st

    from pages.ui.tasks import task_panel

    task_panel(
        "estimate",
        {"config": {"lr": 1}},
        start_label="Estimate",
        key="t",
        help="",
        render_result=lambda r: st.success(f"result {r['total_s']}"),
    )


@pytest.mark.slow
def test_the_panel_shows_a_running_task_again_with_cancel_then_its_result():
    from streamlit.testing.v1 import AppTest

    task = make_task("estimate", {"config": {"lr": 1}}, state="running")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands in for the task
    try:
        task.update_status(pid=sleeper.pid, pid_start=procs.proc_start_time(sleeper.pid), step=250)
        at = AppTest.from_function(_panel_app, default_timeout=60)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.button(key="t_start").disabled and at.get("progress")[0].proto.value == 25
        assert any(task.id in c.value for c in at.caption)
        at.button(key="t_cancel").click().run()
        assert task.cancel_requested() and sleeper.wait(timeout=10) == -15  # SIGTERM to the task's process
    finally:
        sleeper.kill()
    task.update_status(state="completed")
    from histo_core.fsutil import write_json_atomic

    write_json_atomic(task.result_path, {"total_s": 42})
    at.run()
    assert [s.value for s in at.success] == ["result 42"] and at.button(key="t_start").label == "Estimate again"


def test_durations_under_ten_seconds_keep_a_decimal():
    from pages.ui.runs import fmt_duration

    assert fmt_duration(0.4) == "0.4 s" and fmt_duration(3.26) == "3.3 s"  # bug: "0 s per epoch"
    assert fmt_duration(75) == "1 min 15 s" and fmt_duration(None) == "-"
