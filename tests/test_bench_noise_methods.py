"""benchmarks/noise_methods.py: its --augment option (what it sets, how its rows are named, what it refuses)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import noise_methods  # noqa: E402


def test_augment_sets_the_named_fields_with_their_kinds_and_names_the_rows():
    assert noise_methods.augmentation("") == ({}, "")
    changes, suffix = noise_methods.augmentation("stain_jitter=0.05, flip=0")
    assert changes == {"stain_jitter": 0.05, "flip": False}
    assert isinstance(changes["stain_jitter"], float) and suffix == "[stain_jitter=0.05,flip=False]"


@pytest.mark.parametrize("spec", ["stain=0.05", "stain_jitter", "stain_jitter=strong", "flip=yes", "epochs=5"])
def test_augment_refuses_an_unknown_name_or_a_value_of_the_wrong_kind(spec):
    with pytest.raises(SystemExit, match="--augment"):
        noise_methods.augmentation(spec)
