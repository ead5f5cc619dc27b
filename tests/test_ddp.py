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
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "histo_core",
        "train",
        "--dataset",
        "synthetic",
        "--arch",
        "simplecnn",
        "--epochs",
        "3",
        "--threads",
        "1",
        "--batch-size",
        "64",
        "--json",
    ]
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_localhost_rank0_writes_and_shards_are_disjoint(tmp_path):
    """Two torchrun launches (one process each) meet through a c10d rendezvous, as two machines would."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    if not torchrun:
        pytest.skip("torchrun not installed")
    port = _free_port()
    procs, logs = [], []
    for node in (0, 1):
        runs, shards = tmp_path / f"node{node}-runs", tmp_path / f"node{node}-shards"
        shards.mkdir()
        env = {**os.environ, "HISTO_RUNS_DIR": str(runs), "HISTO_SHARD_LOG": str(shards), "OMP_NUM_THREADS": "1"}
        cmd = [
            str(torchrun),
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "histo-two-nodes",
            "-m",
            "histo_core",
            "train",
            "--dataset",
            "synthetic",
            "--arch",
            "simplecnn",
            "--epochs",
            "2",
            "--threads",
            "1",
            "--batch-size",
            "64",
            "--json",
        ]
        out, err = open(tmp_path / f"node{node}.out", "w+"), open(tmp_path / f"node{node}.err", "w+")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err))
        logs.append((out, err))
    try:
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = []
    for (out, err), p in zip(logs, procs):
        out.seek(0), err.seek(0)
        texts.append((out.read(), err.read()))
        assert p.returncode == 0, texts[-1][1][-3000:]
    # rank 0 alone created a run folder and printed the result; the other node's runs dir stays empty
    made = [
        n
        for n in (0, 1)
        if (tmp_path / f"node{n}-runs").exists()
        and [d for d in (tmp_path / f"node{n}-runs").iterdir() if not d.name.startswith(".")]
    ]
    assert len(made) == 1
    leader = made[0]
    assert json.loads(texts[leader][0])["state"] == "completed"
    assert texts[1 - leader][0].strip() == ""
    assert "(2 processes)" in texts[leader][1]
    runs = [d for d in (tmp_path / f"node{leader}-runs").iterdir() if not d.name.startswith(".")]
    assert len(runs) == 1 and [r["epoch"] for r in RunDir(runs[0]).metrics()] == [1, 2]
    # each rank logged the tiles it trained on: per epoch the two shards are disjoint and cover the epoch
    seen = {}
    for node in (0, 1):
        files = list((tmp_path / f"node{node}-shards").glob("rank*.txt"))
        assert len(files) == 1
        rank = int(files[0].stem[4:])
        for line in files[0].read_text().splitlines():
            epoch, positions = line.split(" ")
            seen.setdefault((rank, int(epoch)), []).extend(int(i) for i in positions.split(","))
    assert sorted(seen) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for epoch in (1, 2):
        a, b = seen[(0, epoch)], seen[(1, epoch)]
        assert len(a) == len(set(a)) == len(b) == len(set(b)) == 600  # 1200 training tiles, half each
        assert not set(a) & set(b)
    assert seen[(0, 1)] != seen[(0, 2)]  # a fresh shuffle every epoch
