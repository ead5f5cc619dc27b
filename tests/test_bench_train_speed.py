"""benchmarks/train_speed.py: the CUDA configuration builds without a GPU (--dry-run); the CPU path in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import train_speed  # noqa: E402


@pytest.mark.slow
def test_dry_run_builds_the_cuda_configuration_without_a_gpu():
    torch.set_num_threads(1)
    [plan] = train_speed.dry_run(["simplecnn"], "cuda", 1, False)
    assert plan["device"] == "cuda" and plan["built_on"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert plan["ours"]["amp"] == "bfloat16" and plan["ours"]["channels_last"] and plan["ours"]["fused"]
    assert plan["ours"]["batch_shape"] == [128, 3, 28, 28] and plan["reference"]["pin_memory"] is True
    assert plan["params"] == plan["reference"]["params"] > 0


def test_cuda_without_a_gpu_is_one_line_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert train_speed.main(["--device", "cuda", "--archs", "simplecnn"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err


@pytest.mark.slow
def test_ours_runs_for_the_given_time_and_counts_steps():
    row = train_speed.run_ours("simplecnn", "cpu", 1, 0.5, False)
    assert row["steps"] >= 1 and row["images"] == 128 * row["steps"] and row["seconds"] >= 0.5
