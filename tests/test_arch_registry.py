"""Adding an architecture is one registry entry: a tiny one registered here is offered on the Train page, a run
can be started with it, and the Classify page classifies a tile with a checkpoint of it and shows its CAM."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest
from torch import nn

from histo_core import jobs
from histo_core.errors import ConfigError
from histo_core.explain import compute_cams, hook_count
from histo_core.model_meta import ModelMeta
from histo_core.models import ARCHITECTURES, ArchSpec, build_model, cam_target_layer, register_architecture
from histo_core.runs import list_runs
from tests.runfiles import write_run

PAGES = Path(__file__).resolve().parent.parent / "pages"


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, input_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


TINY = ArchSpec(
    name="tinynet",
    title="TinyNet (one conv, test only)",
    min_size=8,
    max_size=64,
    has_backbone=False,
    builder=lambda num_classes, in_channels, input_size, **_: TinyNet(num_classes, in_channels, input_size),
    head_attr="head",
    cam_layer=lambda model, size: model.features[1],
    description="A one-conv network registered by a test.",
)


@pytest.fixture
def tiny_arch():
    register_architecture(TINY)
    yield TINY
    ARCHITECTURES.pop(TINY.name, None)


def test_one_entry_makes_a_working_architecture(tiny_arch):
    model = build_model("tinynet", 3, 3, 16)
    assert cam_target_layer(model, "tinynet", 16) is model.features[1]
    with pytest.raises(ConfigError, match="takes tiles of 8..64 px"):
        build_model("tinynet", 3, 3, 128)  # the entry's input sizes are enforced
    with pytest.raises(ConfigError, match="already registered"):
        register_architecture(TINY)
    meta = ModelMeta(
        arch="tinynet", classes=("a", "b", "c"), input_size=16, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    tiles = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    cams = compute_cams(model.eval(), meta, tiles, "GradCAM")
    assert cams.shape == (2, 16, 16) and hook_count(model) == 0


def test_train_page_offers_it_and_starts_a_run_with_it(tiny_arch, monkeypatch):
    started = []
    monkeypatch.setattr(jobs, "_start_training_process", lambda run, resume: started.append(run) or 0)
    at = AppTest.from_file(str(PAGES / "2_Train.py"), default_timeout=60).run()
    arch = at.selectbox(key="train.arch")
    assert "TinyNet" in arch.options  # the title before its brackets; the rest is said under the choice
    arch.set_value("tinynet").run()
    assert any(c.value == TINY.description for c in at.caption)
    at.button[[b.label for b in at.button].index("Start training")].click().run()
    assert not at.exception, at.exception
    runs = list_runs()
    assert len(runs) == 1 and len(started) == 1 and runs[0].config()["arch"] == "tinynet"


def test_classify_page_classifies_and_explains_with_it(tiny_arch):
    torch.manual_seed(0)
    run = write_run(arch="tinynet", name="tiny")
    tile = np.random.default_rng(1).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="PNG")
    at = AppTest.from_file(str(PAGES / "5_Classify.py"), default_timeout=120).run()
    assert at.query_params["run"] == run.id
    at.file_uploader(key="classify_files").set_value([("tile.png", buf.getvalue(), "image/png")]).run(timeout=120)
    assert not at.exception, at.exception
    captions = [c for img in at.get("image") for c in img.captions]
    assert any(c.startswith("GradCAM for '") for c in captions), captions
    assert "1 of 1 file(s) classified" in "\n".join(c.value for c in at.caption)
