"""CLI `train`, `evaluate`, `lr-find`: flags generated from the config, one-line errors with exit 2 and no run
directory, --json documents, background-style --run-dir execution."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from histo_core import paths
from histo_core.cli import build_parser, main
from histo_core.config import Augment, TrainConfig
from histo_core.train_options import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
QUICK = [
    "--dataset",
    "synthetic",
    "--arch",
    "simplecnn",
    "--epochs",
    "1",
    "--max-train-samples",
    "128",
    "--threads",
    "1",
    "--batch-size",
    "64",
]


def _runs() -> list[Path]:
    root = paths.runs_dir()
    return [p for p in root.iterdir() if not p.name.startswith(".")] if root.exists() else []


def test_every_config_field_is_a_flag_with_help():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions}
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "augment"]
    fields += [f.name for f in dataclasses.fields(Augment)]
    assert set(fields) <= dests
    assert all(a.help for a in train._actions if a.dest in fields)
    assert {a.dest: a.help for a in train._actions}["epochs"] == OPTIONS["epochs"].help_text()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--noise", "1.5"], "--noise must be between 0 and 0.9, got 1.5"),
        (["--arch", "vgg"], "--arch must be one of"),
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--size", "4"], "simplecnn takes tiles of 8..512 px, got 4 px"),
        (["--optimizer", "lbfgs"], "--optimizer must be one of adam, adamw, sgd"),
        (["--pretrained"], "--pretrained loads ImageNet weights"),
        (["--arch", "cnn3", "--mode", "frozen"], "--mode frozen needs a backbone"),
        (["--hue", "0.7"], "--hue must be between 0 and 0.5"),
        (["--early-stopping", "--train-splits", "train+val"], "--early-stopping needs a validation split"),
        (["--dataset", "/no/such.npz"], "not a registered dataset and no such file"),
        (["--epochs", "two"], "invalid int value: 'two'"),
    ],
)
def test_invalid_options_exit_2_with_one_line_and_no_run_dir(argv, message, capsys):
    assert _exit_code(["train", *QUICK, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert _runs() == []


@pytest.mark.parametrize("old,new", [("finetune", "all-layers"), ("fine_tune", "head-then-all")])
def test_old_mode_names_are_accepted_as_the_new_ones(old, new):
    from histo_core.commands.train import config_from_args

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    args = train.parse_args([*QUICK, "--arch", "resnet18", "--size", "16", "--epochs", "2", "--mode", old])
    assert config_from_args(args).mode == new


def test_a_flag_another_option_makes_irrelevant_is_noted_as_ignored(capsys):
    """`--sce-alpha` with `--loss ce` (the page greys it out) was silently ignored on the command line."""
    from histo_core.commands.train import config_from_args

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    config_from_args(train.parse_args([*QUICK, "--loss", "ce", "--sce-alpha", "0.5", "--step-size", "3"]))
    err = capsys.readouterr().err
    assert "note: --sce-alpha has no effect with these settings" in err and "ignored" in err
    assert "--step-size" in err  # the default schedule is not the step schedule
    config_from_args(train.parse_args([*QUICK, "--loss", "sce", "--sce-alpha", "0.5", "--flip"]))
    assert "note:" not in capsys.readouterr().err  # used: no note


def test_missing_dataset_and_cuda_absent(capsys):
    assert main(["train", "--epochs", "1"]) == 2
    assert "give --dataset" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main(["train", *QUICK, "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert _runs() == []


def test_run_dir_refuses_options_and_resume_needs_run_dir(tmp_path, capsys):
    assert main(["train", "--resume", *QUICK]) == 2
    assert "--resume needs --run-dir" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(tmp_path), "--epochs", "3"]) == 2
    assert "drop --epochs" in capsys.readouterr().err


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors (a non-number for a number)
        return int(exc.code)


@pytest.mark.slow
def test_train_json_evaluate_and_lr_find_in_a_subprocess(tmp_path):
    env = {**os.environ, "HISTO_RUNS_DIR": str(paths.runs_dir())}
    cmd = [sys.executable, "-m", "histo_core"]
    p = subprocess.run(
        [*cmd, "train", *QUICK, "--json", "--name", "cli"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["state"] == "completed" and Path(doc["run_dir"]).is_dir() and doc["test"]["n"] == 300
    assert "epoch 1/1" in p.stderr  # progress on stderr, JSON alone on stdout
    run_id = Path(doc["run_dir"]).name
    assert "-cli-" in run_id

    e = subprocess.run(
        [*cmd, "evaluate", run_id, "--split", "val", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert e.returncode == 0, e.stderr
    rep = json.loads(e.stdout)
    assert rep["split"] == "val" and rep["n"] == 300 and len(rep["confusion"]) == 6

    t = subprocess.run([*cmd, "evaluate", run_id], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert t.returncode == 0 and "accuracy" in t.stdout and "confusion" in t.stdout and "lymphocytes" in t.stdout

    bad = subprocess.run(
        [*cmd, "evaluate", "no-such-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a run directory, run id" in bad.stderr

    lf = subprocess.run(
        [*cmd, "lr-find", *QUICK, "--steps", "12", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert lf.returncode == 0, lf.stderr
    res = json.loads(lf.stdout)
    assert len(res["lrs"]) >= 6 and res["suggested_lr"] > 0


@pytest.mark.slow
def test_run_dir_executes_a_prepared_run_and_resumes(tmp_path):
    from histo_core.runs import RunDir
    from histo_core.training import prepare_run

    cfg = TrainConfig(dataset="synthetic", arch="simplecnn", epochs=2, max_train_samples=128, threads=1)
    run = prepare_run(cfg)
    assert main(["train", "--run-dir", str(run.path)]) == 0
    assert RunDir(run.path).status().state == "completed"
    assert [r["epoch"] for r in run.metrics()] == [1, 2]
    assert main(["train", "--run-dir", str(run.path), "--resume"]) == 0  # nothing left: completes again
    assert [r["epoch"] for r in run.metrics()] == [1, 2]


@pytest.mark.slow
def test_sigterm_cancels_at_a_safe_point_and_resume_finishes(tmp_path):
    """A real background process: SIGTERM after the first epoch -> cancelled with last.pt; --resume -> 1..N once."""
    import signal
    import time

    from histo_core.training import prepare_run

    cfg = TrainConfig(dataset="synthetic", arch="cnn3", epochs=4, threads=1, batch_size=32)
    run = prepare_run(cfg)
    env = {**os.environ, "HISTO_RUNS_DIR": str(paths.runs_dir())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "histo_core", "train", "--run-dir", str(run.path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not run.metrics() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    st = run.status()
    assert st.state == "cancelled" and run.last_ckpt.exists()
    done = len(run.metrics())
    assert 1 <= done < 4
    p = subprocess.run(
        [sys.executable, "-m", "histo_core", "train", "--run-dir", str(run.path), "--resume"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stderr
    assert [r["epoch"] for r in run.metrics()] == [1, 2, 3, 4]
    assert run.status().state == "completed"
