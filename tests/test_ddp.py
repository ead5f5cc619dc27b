"""DistributedDataParallel on CPU: two gloo processes started by torchrun train one model on sharded epochs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from histo_core import paths
from histo_core.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_a_working_model():
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    if not torchrun:
        pytest.skip("torchrun not installed")
    env = {**os.environ, "HISTO_RUNS_DIR": str(paths.runs_dir()), "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "histo_core", "train", "--dataset", "synthetic",
           "--arch", "simplecnn", "--epochs", "3", "--threads", "1", "--batch-size", "64", "--json"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)  # rank 0 alone prints the JSON document
    assert doc["state"] == "completed"
    assert doc["test"]["accuracy"] > 0.6  # 6 classes: chance is 0.17
    runs = [d for d in paths.runs_dir().iterdir() if not d.name.startswith(".")]
    assert len(runs) == 1  # only rank 0 created a run
    run = RunDir(doc["run_dir"])
    # each rank trained on half of the 1200 training tiles per epoch
    assert run.status().steps_per_epoch == math.ceil(600 / 64)
    assert [r["epoch"] for r in run.metrics()] == [1, 2, 3]
    assert "(2 processes)" in p.stderr
