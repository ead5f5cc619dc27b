"""Shared fixtures. Tests never touch the user's ~/.medmnist or the project's runs/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    """Each test gets its own runs/, data and weights directories."""
    base = tmp_path_factory.mktemp("histo")
    for var, sub in (("HISTO_RUNS_DIR", "runs"), ("HISTO_DATA_DIR", "data"), ("HISTO_WEIGHTS_DIR", "weights")):
        (base / sub).mkdir()
        monkeypatch.setenv(var, str(base / sub))
    return base


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, the real sample files; tests using it skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED


@pytest.fixture
def pathmnist_mini(shared_data) -> Path:
    p = shared_data / "pathmnist-mini" / "pathmnist.npz"
    if not p.exists():
        pytest.skip(f"{p} is absent")
    return p
