"""User exports to weights/ stay out of git; the shipped model, its card and the folder's README stay tracked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ignored(path: str) -> bool:
    p = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, capture_output=True)
    if p.returncode not in (0, 1):
        pytest.skip(f"git check-ignore failed: {p.stderr.decode()[:200]}")
    return p.returncode == 0


@pytest.mark.slow
def test_exports_ignored_shipped_files_kept():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert _ignored("weights/my-export.pt") and _ignored("weights/my-export.json")
    for kept in (
        "weights/pathmnist-resnet9.pt",
        "weights/pathmnist-resnet9.json",
        "weights/README.md",
        "weights/pathmnist-resnet9-macenko.pt",
        "weights/pathmnist-resnet9-macenko.json",
    ):
        assert not _ignored(kept), kept
