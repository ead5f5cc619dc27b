"""`python -m histo_core runs ...`: list, show, cancel, resume, delete, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from histo_core import jobs, paths
from histo_core.cli import main
from tests.runfiles import write_run

ROOT = Path(__file__).resolve().parent.parent


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_text_and_json(capsys):
    done = write_run("completed", name="baseline", noise=0.3)
    failed = write_run("failed", error="boom", seed=1)
    code, out, _ = cli(capsys, "runs", "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2
    line = next(ln for ln in lines if done.id in ln)
    assert "completed" in line and "3/3 ep" in line and "simplecnn" in line and line.count("SYNTHETIC") == 1
    assert "noise 0.30 batch" in line and f"{done.results()['test']['accuracy']:.3f}" in line

    code, out, _ = cli(capsys, "runs", "list", "--json")
    rows = json.loads(out)
    assert {r["id"]: r["state"] for r in rows} == {done.id: "completed", failed.id: "failed"}


def test_list_empty(capsys):
    code, out, _ = cli(capsys, "runs", "list")
    assert code == 0 and "no runs in" in out


def test_show_text_and_json(capsys):
    run = write_run("completed", epochs=2)
    code, out, _ = cli(capsys, "runs", "show", run.id)
    assert code == 0
    assert "epoch 1: train loss" in out and "epoch 2:" in out
    test = run.results()["test"]
    assert f"test: n {test['n']}  accuracy {test['accuracy']:.3f}" in out
    assert "tumour: precision" in out

    code, out, _ = cli(capsys, "runs", "show", run.id, "--json")
    doc = json.loads(out)
    assert doc["summary"]["id"] == run.id and doc["config"]["epochs"] == 2
    assert len(doc["metrics"]) == 2 and doc["results"]["test"]["n"] == test["n"]


def test_show_failed_run_prints_its_error(capsys):
    run = write_run("failed", error="disk full while writing the run")
    code, out, _ = cli(capsys, "runs", "show", run.id)
    assert code == 0 and "error: disk full while writing the run" in out


@pytest.mark.slow
def test_unknown_run_is_one_line_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "histo_core", "runs", "show", "no-such-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no-such-run: no such run" in proc.stderr


@pytest.mark.slow
def test_cancel_queued_run_and_refuse_finished(capsys):
    run = write_run("queued", epochs_done=0)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", run.id])
    try:
        run.update_status(pid=proc.pid)
        code, out, _ = cli(capsys, "runs", "cancel", run.id)
        assert code == 0 and f"{run.id}: cancelled" in out
        assert proc.wait(timeout=10) < 0
    finally:
        proc.kill()
    code, _, err = cli(capsys, "runs", "cancel", run.id)
    assert code == 2 and "only a queued or running run can be cancelled" in err


def test_resume_refuses_completed(capsys):
    run = write_run("completed")
    code, _, err = cli(capsys, "runs", "resume", run.id)
    assert code == 2 and "has completed" in err


def test_resume_starts_a_process(capsys, monkeypatch):
    started = []
    monkeypatch.setattr(jobs, "_start_training_process", lambda run, resume: started.append(resume) or 1)
    run = write_run("cancelled", epochs=4, epochs_done=2)
    code, out, _ = cli(capsys, "runs", "resume", run.id)
    assert code == 0 and "from epoch 2 of 4" in out and started == [True]


def test_export_and_overwrite(capsys):
    run = write_run("completed")
    code, out, _ = cli(capsys, "runs", "export", run.id, "--name", "cli-model", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["path"] == str(paths.weights_dir() / "cli-model.pt") and Path(doc["card"]).exists()
    code, _, err = cli(capsys, "runs", "export", run.id, "--name", "cli-model")
    assert code == 2 and "exists" in err
    code, out, _ = cli(capsys, "runs", "export", run.id, "--name", "cli-model", "--overwrite")
    assert code == 0 and "exported" in out
    code, _, err = cli(capsys, "runs", "export", run.id, "--name", "../bad")
    assert code == 2 and "letters, digits" in err


def test_delete_needs_yes_when_not_interactive(capsys, monkeypatch):
    run = write_run("failed", error="x")
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    code, _, err = cli(capsys, "runs", "delete", run.id)
    assert code == 2 and "add --yes" in err and run.path.exists()
    code, out, _ = cli(capsys, "runs", "delete", run.id, "--yes")
    assert code == 0 and not run.path.exists()


@pytest.mark.parametrize("argv", [["runs"], ["runs", "bogus"], ["runs", "export", "x"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
