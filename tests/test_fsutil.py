"""The one atomic writer (histo_core.fsutil.atomic_file): all or nothing, and durable once it returns."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from histo_core import fsutil
from histo_core.datasets.npzio import write_npz_atomic


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_failed_write_leaves_the_target_unchanged_and_no_temp_file(tmp_path):
    target = tmp_path / "status.json"
    fsutil.write_json_atomic(target, {"state": "running"})
    before = target.read_bytes()

    with pytest.raises(ValueError, match="boom"), fsutil.atomic_file(target) as fh:
        fh.write(b'{"state": "half')
        raise ValueError("boom")
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []

    with pytest.raises(TypeError):  # a value json cannot write: the old file stays, no temp file is left
        fsutil.write_json_atomic(target, {"state": object()})
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_a_write_replaces_the_file_and_fsyncs_it_and_its_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", spy)
    target = tmp_path / "a.npz"
    target.write_bytes(b"old")
    write_npz_atomic(target, x=np.arange(3))  # the npz cache writer goes through the same path
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert synced == ["file", "dir"]  # the data, then the rename
    assert leftovers(tmp_path) == []
