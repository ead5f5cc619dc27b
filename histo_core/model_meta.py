"""What a trained model is: its card (`ModelMeta`: classes, input geometry, normalisation, scale, stain, OOD
calibration) and a loaded model with it (`LoadedModel`, what `model_cache.load_model` returns).

    loaded = load_model("pathmnist-resnet9")      # histo_core.model_cache
    loaded.meta.classes, loaded.meta.input_size, loaded.meta.field_um
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from histo_core.datasets.sources import source_scale


@dataclass(frozen=True)
class ModelMeta:
    """What a caller needs to feed a model: classes, input geometry, normalisation, provenance."""

    arch: str
    classes: tuple[str, ...]
    input_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: dict = field(default_factory=dict, hash=False, compare=False)  # name, title, source, synthetic
    native_tile_px: int | None = None  # source pixels one training tile covered, when known
    source_mpp: float | None = None  # µm per pixel of those source pixels, when known
    stain: dict | None = field(default=None, hash=False, compare=False)  # stain reference (histo_core.stain)
    tta: bool = False  # the run evaluated with flip/rotation TTA
    ood: dict | None = field(default=None, hash=False, compare=False)  # "unlike the training tiles" calibration

    @property
    def field_um(self) -> float | None:
        """The width of tissue one model tile covers, in µm, when the training data's scale is known."""
        if self.native_tile_px and self.source_mpp:
            return float(self.native_tile_px * self.source_mpp)
        return None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def synthetic(self) -> bool:
        return bool(self.dataset.get("synthetic"))

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], dataset: dict | None = None, ood: dict | None = None) -> ModelMeta:
        ds = dict(ckpt.get("dataset") or {})
        ds.update(
            {k: v for k, v in (dataset or {}).items() if k in ("name", "title", "source", "synthetic", "extra", "size")}
        )
        native_px, mpp = source_scale(ds)
        return cls(
            arch=str(ckpt["arch"]),
            classes=tuple(str(c) for c in ckpt["classes"]),
            input_size=int(ckpt["input_size"]),
            in_channels=int(ckpt["in_channels"]),
            mean=tuple(float(v) for v in np.asarray(ckpt["mean"]).reshape(-1)),
            std=tuple(float(v) for v in np.asarray(ckpt["std"]).reshape(-1)),
            dataset=ds,
            native_tile_px=native_px,
            source_mpp=mpp,
            stain=ckpt.get("stain") or None,
            tta=bool(ckpt.get("tta", False)),
            ood=ood or ckpt.get("ood") or None,
        )


@dataclass
class LoadedModel:
    model: nn.Module  # eval mode, on `device`
    meta: ModelMeta
    source: str  # the checkpoint file
    label: str = ""  # for display: run id or export name
    device: str = "cpu"
