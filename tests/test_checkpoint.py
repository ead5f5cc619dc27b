"""Model files: the format round-trips, and every kind of bad file is refused with a specific message."""

from __future__ import annotations

import pickle

import pytest
import torch

from histo_core.checkpoint import FORMAT_VERSION, load_checkpoint, model_from_checkpoint, save_checkpoint
from histo_core.errors import ModelFileError
from histo_core.models import build_model

META = {
    "arch": "simplecnn",
    "num_classes": 4,
    "in_channels": 3,
    "input_size": 28,
    "classes": ["a", "b", "c", "d"],
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
}


def _saved(tmp_path, **overrides):
    model = build_model("simplecnn", 4, 3, 28)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, {**META, **overrides}, epoch=3)
    return path, model


def test_round_trip_gives_identical_outputs(tmp_path):
    path, model = _saved(tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["classes"] == META["classes"]
    loaded = model_from_checkpoint(ckpt, path)
    x = torch.rand(2, 3, 28, 28)
    model.eval()
    assert torch.allclose(model(x), loaded(x))
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temp file"


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty file"):
        load_checkpoint(tmp_path / "empty.pt")


def test_text_file_is_not_a_checkpoint(tmp_path):
    p = tmp_path / "notes.pt"
    p.write_text("hello, I am not a model\n" * 20)
    with pytest.raises(ModelFileError, match="not a (readable )?PyTorch checkpoint"):
        load_checkpoint(p)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_needing_code_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": "histo-explorer", "payload": Evil()}, p)
    with pytest.raises(ModelFileError, match="refused"):
        load_checkpoint(p)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelFileError):
        load_checkpoint(raw)


def test_plain_state_dict_is_not_ours(tmp_path):
    p = tmp_path / "sd.pt"
    torch.save(build_model("simplecnn", 4).state_dict(), p)
    with pytest.raises(ModelFileError, match="not a Histo Explorer checkpoint"):
        load_checkpoint(p)


def test_older_format_version_is_named(tmp_path):
    path, _ = _saved(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["format_version"] = 0
    torch.save(ckpt, path)
    with pytest.raises(ModelFileError, match=f"format version 0.*reads version {FORMAT_VERSION}"):
        load_checkpoint(path)


def test_weights_for_other_classes_or_channels(tmp_path):
    path, _ = _saved(tmp_path)
    ckpt = load_checkpoint(path)
    with pytest.raises(ModelFileError, match="do not fit simplecnn with 9 classes"):
        model_from_checkpoint({**ckpt, "num_classes": 9}, path)
    with pytest.raises(ModelFileError, match="1 channels"):
        model_from_checkpoint({**ckpt, "in_channels": 1}, path)
