"""Reliability across the product (issue #6): a killed trainer started from the CLI, an unusable runs
directory, safe server defaults, concurrent sessions that keep to themselves, and no growth with uploads."""

from __future__ import annotations

import gc
import io
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image
from streamlit.testing.v1 import AppTest

from histo_core import liveness
from histo_core.checkpoint import load_checkpoint
from histo_core.runs import list_runs

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "histo_core", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw
    )


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_from_the_cli():
    """A trainer started from the CLI is SIGKILLed mid-epoch: the run shows failed with the reason, its last
    checkpoint and earlier metrics are intact, and resuming reaches the same final number of epochs."""
    epochs = 3
    # resnet9 on one thread takes a few seconds per synthetic epoch, so the trainer's once-a-second progress
    # writes are seen mid-epoch (simplecnn finishes an epoch faster than that).
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "histo_core",
            "train",
            "--dataset",
            "synthetic",
            "--arch",
            "resnet9",
            "--epochs",
            str(epochs),
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--no-tta",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run = _wait(lambda: next(iter(list_runs()), None), 60, "the run directory")
        # Kill once an epoch is finished and the next one is under way (a mid-epoch step is recorded).
        _wait(
            lambda: len(run.metrics()) >= 1 and run.status().step > 0 and run.status().epoch >= 1,
            180,
            "epoch 1 to finish and epoch 2 to start",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows_before = run.metrics()
    status = liveness.refresh_status(run)
    assert status.state == "failed"
    assert "ended unexpectedly" in status.error and "resume" in status.error
    ckpt = load_checkpoint(run.last_ckpt)
    done = int(ckpt["epoch"])
    assert done >= 1
    assert [r["epoch"] for r in rows_before][:done] == list(range(1, done + 1))
    assert not list(run.path.glob(".*.tmp")), "a half-written file was left behind"

    out = _cli("train", "--run-dir", str(run.path), "--resume")
    assert out.returncode == 0, out.stderr[-2000:]
    assert run.status().state == "completed"
    assert [r["epoch"] for r in run.metrics()] == list(range(1, epochs + 1))
    results = run.results()
    assert results["epochs_run"] == epochs and 0.0 <= results["test"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_unusable_runs_directory_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the runs directory should be")
    out = _cli("train", "--dataset", "synthetic", "--epochs", "1", "--runs-dir", str(blocker / "runs"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot create a run directory" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_server_defaults_are_safe():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True
    assert 1 <= server["maxUploadSize"] <= 1024
    assert config["browser"]["gatherUsageStats"] is False


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28, 3), color, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PAGE = str(ROOT / "pages" / "5_Classify.py")


def test_two_sessions_classifying_at_once_keep_their_own_results():
    from tests.runfiles import write_run

    write_run("completed")
    first = AppTest.from_file(PAGE, default_timeout=120).run()
    second = AppTest.from_file(PAGE, default_timeout=120).run()
    first.file_uploader(key="classify_files").set_value([("alpha.png", _png((250, 240, 245)), "image/png")])
    second.file_uploader(key="classify_files").set_value(
        [("beta.png", _png((80, 40, 120)), "image/png"), ("gamma.png", _png((230, 150, 190)), "image/png")]
    )
    first.run()
    second.run()
    assert not first.exception and not second.exception
    assert list(first.dataframe[0].value["file"]) == ["alpha.png"]
    assert list(second.dataframe[0].value["file"]) == ["beta.png", "gamma.png"]
    first.run()  # a rerun of one session does not pick up the other's uploads
    assert list(first.dataframe[0].value["file"]) == ["alpha.png"]


@pytest.mark.slow
def test_repeated_uploads_and_cams_do_not_grow_memory():
    from histo_core.explain import compute_cams, hook_count
    from histo_core.model_cache import load_model
    from histo_core.uploads import classify_uploads
    from tests.runfiles import write_run

    run = write_run("completed")
    loaded = load_model(str(run.path))
    assert load_model(str(run.path)) is loaded  # one cached model per file
    rng = np.random.default_rng(0)
    files = [(f"t{i}.png", _png(tuple(int(v) for v in rng.integers(0, 255, 3)))) for i in range(20)]

    def one_round():
        results = classify_uploads(loaded, files)
        tiles = np.stack([r.tile for r in results])
        compute_cams(loaded.model, loaded.meta, tiles, "GradCAM")

    for _ in range(3):  # warm-up: caches, CAM objects, allocator pools
        one_round()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(15):
        one_round()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert hook_count(loaded.model) == 0, "CAM hooks left on the model"
    assert grown < 2 * 1024 * 1024, f"Python heap grew by {grown / 1e6:.1f} MB over 15 upload rounds"
