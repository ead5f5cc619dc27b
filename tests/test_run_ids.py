"""Run ids: stamp, name, architecture and dataset, without repeating a word the name already has."""

from __future__ import annotations

import re

from histo_core.runs import new_run_id


def test_run_id_does_not_repeat_the_architecture_or_dataset():
    rid = new_run_id("cnn3-noise0.2-fixed", "cnn3", "pathmnist")
    assert re.fullmatch(r"\d{8}-\d{6}-cnn3-noise0-2-fixed-pathmnist-[0-9a-f]{4}", rid), rid
    assert "-resnet9-pathmnist-" in new_run_id("", "resnet9", "/data/pathmnist.npz")
    assert "-my-run-on-pathmnist-resnet9-" in new_run_id("my run on pathmnist", "resnet9", "pathmnist")
