"""Process set-up before torch loads: thread count from the CPU affinity and training slots, passive OpenMP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from histo_core import procs, runtime

ROOT = Path(__file__).resolve().parent.parent
CORES = len(os.sched_getaffinity(0))


def test_default_threads_share_the_available_cores_among_training_slots():
    assert runtime.available_cores() == CORES
    assert runtime.default_threads({}) == CORES
    assert runtime.default_threads({"HISTO_MAX_RUNS_CPU": "2"}) == max(1, CORES // 2)
    assert runtime.default_threads({"HISTO_MAX_RUNS_CPU": str(CORES * 4)}) == 1  # never 0
    assert runtime.default_threads({"OMP_NUM_THREADS": "3"}) == 3  # the user's choice is kept
    # torchrun sets OMP_NUM_THREADS=1 for every process: the per-process share is computed instead
    assert runtime.default_threads({"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "1"}) == CORES
    assert runtime.default_threads({"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}) == max(1, CORES // 2)


def test_thread_env_sets_a_short_spin_and_keeps_the_users_policy():
    env = runtime.thread_env({"HISTO_MAX_RUNS_CPU": "2"})
    assert env["GOMP_SPINCOUNT"] == runtime.SPIN_COUNT and "OMP_WAIT_POLICY" not in env  # a set policy wins
    assert env["OMP_NUM_THREADS"] == str(max(1, CORES // 2))
    for users in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "50"}):
        env = runtime.thread_env(users)
        assert {k: env.get(k) for k in users} == users and len({"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(env)) == 1


def test_job_launcher_child_env_has_threads_and_wait_policy(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("HISTO_MAX_RUNS_CPU", "2")
    env = procs.child_env()
    assert env["GOMP_SPINCOUNT"] == runtime.SPIN_COUNT and env["OMP_NUM_THREADS"] == str(max(1, CORES // 2))


@pytest.mark.slow
def test_runtime_does_not_import_torch():
    code = "import sys, histo_core.runtime; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# Runs `python -m histo_core train` with an import hook that reports the environment at torch's first import.
PROBE = """
import builtins, os, runpy, sys
real = builtins.__import__
def probe(name, *args, **kwargs):
    if name == "torch" and "torch" not in sys.modules:
        print("AT_TORCH", os.environ.get("GOMP_SPINCOUNT"), os.environ.get("OMP_NUM_THREADS"), flush=True)
    return real(name, *args, **kwargs)
builtins.__import__ = probe
sys.argv = ["histo_core"] + sys.argv[1:]
runpy.run_module("histo_core", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_cli_sets_threads_and_wait_policy_before_torch_loads(tmp_path):
    drop = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["HISTO_MAX_RUNS_CPU"] = "2"
    cmd = [
        sys.executable,
        "-c",
        PROBE,
        "train",
        "--dataset",
        "synthetic",
        "--arch",
        "simplecnn",
        "--epochs",
        "1",
        "--max-train-samples",
        "64",
        "--threads",
        "1",
        "--no-tta",
        "--runs-dir",
        str(tmp_path),
        "--json",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    first = p.stdout.splitlines()[0]
    assert first == f"AT_TORCH {runtime.SPIN_COUNT} {max(1, CORES // 2)}"


def test_tune_malloc_fixes_the_thresholds_unless_the_user_set_them():
    import platform

    from histo_core import runtime

    assert runtime.tune_malloc({"MALLOC_MMAP_THRESHOLD_": "65536"}) is False
    assert runtime.tune_malloc({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}) is False
    if platform.libc_ver()[0] == "glibc":
        assert runtime.tune_malloc({}) is True


def test_trainer_keeps_small_tile_activations_in_the_heap(monkeypatch):
    """A CPU trainer re-tunes malloc for its tile size: 32/64 MB thresholds up to 32 px, 8/32 MB above."""
    from histo_core import runtime
    from histo_core import training as T
    from tests.test_train import _trainer, quick_config

    seen = []
    monkeypatch.setattr(runtime, "tune_malloc", lambda env=None, tile_px=None: seen.append(tile_px) or True)
    _trainer(quick_config(max_train_samples=32, batch_size=16))
    assert seen and seen[-1] == 28 and T.Trainer is not None

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

        gnu_get_libc_version = None

    monkeypatch.undo()
    import ctypes

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    assert runtime.tune_malloc({}, tile_px=28) is True
    assert runtime.tune_malloc({}, tile_px=96) is True
    assert runtime.tune_malloc({}) is True
    assert calls == [(-3, 32 << 20), (-1, 64 << 20), (-3, 8 << 20), (-1, 32 << 20), (-3, 8 << 20), (-1, 32 << 20)]


# `python -m histo_core` skips the interpreter's teardown (runtime.exit_without_teardown): what the teardown would
# have done for the user must still happen.
EXIT_PROBE = """
import atexit, pathlib, runpy, sys, threading, time
out = pathlib.Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(4)  # longer than the command
    (out / "thread").write_text("ran")
threading.Thread(target=late).start()  # not a daemon: the interpreter would wait for it
sys.argv = ["histo_core"] + sys.argv[2:]
runpy.run_module("histo_core", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_cli_exit_keeps_output_exit_code_atexit_handlers_and_threads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout to a pipe is block-buffered
    env["HISTO_DATA_DIR"] = str(tmp_path / "data")
    cmd = [sys.executable, "-c", EXIT_PROBE, str(tmp_path), "datasets", "--json"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    import json

    assert p.stdout.endswith("}\n")  # all of it reached the pipe: stdout was flushed before os._exit
    listed = json.loads(p.stdout)
    assert any(d.get("name") == "synthetic" for d in listed["datasets"])
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "ran"
    # A command's own exit status passes through unchanged.
    for f in ("atexit", "thread"):
        (tmp_path / f).unlink()
    bad = subprocess.run(
        [*cmd[:4], "datasets", "--info", str(tmp_path / "missing.npz")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
