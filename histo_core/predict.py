"""The one batched forward pass: a model over uint8 tiles, in batches, as it was trained to see them.

    spec = InputSpec.of(meta)                                    # mean/std, input size, stain reference
    probs = predict_tiles(model, tiles_uint8, spec, tta=True)    # (N, K) float32
    probs, feats = predict_tiles(model, source, spec, features=True)
    for start, probs, feats in iter_predictions(model, source, spec, features=True): ...   # a batch at a time

    probs = predict(loaded, tiles_uint8, tta=True)               # a loaded model (model_cache.load_model)

Every prediction in histo_core goes through `iter_predictions`: a run's validation and test predictions
(`Trainer.predict`), `evaluate`, `predict` (a loaded model: uploads, large images, slides, the CLI),
`fit_arrays` models (label-error cross-validation) and embeddings (features and probabilities of every tile).
Each batch is resized to the model's input size, stain-normalised to its reference (when it has one),
mean/std-normalised, and with `tta` the softmax probabilities are averaged over the 8 flips/rotations of each
tile. Callers that share a model between threads (the app) hold `model_lock.model_lock(model)` around the
call; `predict` takes it itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from histo_core import augment, pipeline, stain
from histo_core.errors import DatasetError, HistoError
from histo_core.image_decode import gray_to_rgb
from histo_core.model_lock import model_lock
from histo_core.model_meta import LoadedModel, ModelMeta

EVAL_BATCH = 512
EVAL_PIXELS = 128 * 96 * 96  # per evaluation batch on CPU: large batches, bounded activation memory

Tiles = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class InputSpec:
    """What a model's input needs: normalisation, input size and stain reference (as in its checkpoint),
    and how to run it (channels-last memory format, autocast dtype)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    stain: dict[str, Any] | None = None
    channels_last: bool = False
    amp_dtype: torch.dtype | None = None

    @classmethod
    def of(cls, meta: Any, **run_options: Any) -> InputSpec:
        """From a `model_meta.ModelMeta`, a checkpoint or model-meta dict, or a training `TrainData`."""

        def get(key: str) -> Any:
            return meta.get(key) if isinstance(meta, dict) else getattr(meta, key, None)

        return cls(
            mean=tuple(float(v) for v in np.asarray(get("mean")).reshape(-1)),
            std=tuple(float(v) for v in np.asarray(get("std")).reshape(-1)),
            input_size=int(get("input_size")),
            stain=get("stain") or None,
            **run_options,
        )


def eval_batch_size(input_size: int, device: torch.device | str = "cpu", requested: int = EVAL_BATCH) -> int:
    """Evaluation batch: `requested`, but no more pixels than EVAL_PIXELS (x4 on a GPU) and at least 8 tiles."""
    budget = EVAL_PIXELS * (4 if torch.device(device).type == "cuda" else 1)
    return int(max(8, min(requested, budget // max(1, input_size * input_size))))


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# -- features --------------------------------------------------------------------------------------
def feature_layer(model: nn.Module) -> nn.Linear:
    """The classifier's last linear layer: its input is the penultimate-layer feature vector (every
    architecture in histo_core.models ends in one, with or without the frozen-mode MLP head); of an ensemble,
    its first member's (`models.first_member`)."""
    from histo_core.models import first_member

    last = None
    for m in first_member(model).modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise HistoError(f"{type(model).__name__}: no final linear layer to take features from")
    return last


def forward_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, softmax probabilities (N, K) float32) of a normalised batch, in one pass."""
    captured: list[torch.Tensor] = []
    hook = feature_layer(model).register_forward_pre_hook(lambda _m, inp: captured.append(inp[0].detach()))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return captured[-1].float().flatten(1), torch.softmax(logits.float(), dim=1)


# -- the loop --------------------------------------------------------------------------------------
def model_batch(tiles: Tiles, spec: InputSpec, device: torch.device | str) -> torch.Tensor:
    """A batch as the model takes it. `tiles`: uint8 NHWC (any size), or float NCHW in [0, 1] already
    stain-normalised (`model_input.model_view`), which is then only resized and mean/std-normalised."""
    if isinstance(tiles, torch.Tensor) and tiles.is_floating_point():
        x = tiles.to(device)
        if x.shape[-1] != spec.input_size or x.shape[-2] != spec.input_size:
            x = pipeline.resize_batch(x, spec.input_size)
    else:
        x = stain.normalize_batch(pipeline.to_float01(tiles, device, spec.input_size), spec.stain)
    x = pipeline.normalize(x, spec.mean, spec.std)
    return x.contiguous(memory_format=torch.channels_last) if spec.channels_last else x


def _batches(
    tiles: Tiles | pipeline.TileSource, batch_size: int, rows: tuple[int, int] | None = None
) -> Iterable[tuple[int, Tiles]]:
    start, stop = rows if rows is not None else (0, len(tiles))
    if isinstance(tiles, pipeline.TileSource):
        return tiles.iter_sequential(batch_size, start, stop)
    return ((s, tiles[s : min(stop, s + batch_size)]) for s in range(start, stop, batch_size))


def iter_predictions(
    model: nn.Module,
    tiles: Tiles | pipeline.TileSource,
    spec: InputSpec,
    *,
    tta: bool = False,
    features: bool = False,
    batch_size: int | None = None,
    rows: tuple[int, int] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """(start row, probabilities (B, K) float32, features (B, D) float32 or None) per batch, in order, under
    inference_mode with the model in eval mode. With `tta` both are means over the 8 dihedral views.
    `batch_size`: tiles per batch (default `eval_batch_size`: large, with bounded activation memory); `rows`:
    only the rows [start, stop) (a torchrun rank's share)."""
    device = model_device(model)
    size = batch_size or eval_batch_size(spec.input_size, device)
    amp = (
        torch.autocast(device_type=device.type, dtype=spec.amp_dtype)
        if spec.amp_dtype is not None and device.type in ("cuda", "cpu")
        else contextlib.nullcontext()
    )
    model.eval()
    with torch.inference_mode():
        for start, batch in _batches(tiles, size, rows):
            x = model_batch(batch, spec, device)
            views = augment.dihedral_views(x) if tta else [x]
            probs: torch.Tensor | float = 0.0
            feats: torch.Tensor | float = 0.0
            with amp:
                for v in views:
                    if features:
                        f, p = forward_features(model, v)
                        feats = feats + f
                    else:
                        p = torch.softmax(model(v).float(), dim=1)
                    probs = probs + p
            out_p = (probs / len(views)).cpu().numpy().astype(np.float32)  # type: ignore[union-attr]
            out_f = (feats / len(views)).float().cpu().numpy() if features else None  # type: ignore[union-attr]
            yield start, out_p, out_f


def predict_tiles(
    model: nn.Module,
    tiles: Tiles | pipeline.TileSource,
    spec: InputSpec,
    *,
    tta: bool = False,
    features: bool = False,
    batch_size: int | None = None,
    on_batch: Callable[[], None] | None = None,
    num_classes: int | None = None,
    rows: tuple[int, int] | None = None,
) -> Any:
    """Probabilities (N, K) float32 of every tile (of the rows [start, stop) with `rows`), or (probabilities,
    features (N, D)) with `features`. `on_batch` runs after each batch (progress, heartbeats)."""
    probs: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    for _, p, f in iter_predictions(model, tiles, spec, tta=tta, features=features, batch_size=batch_size, rows=rows):
        probs.append(p)
        if f is not None:
            feats.append(f)
        if on_batch is not None:
            on_batch()
    k = num_classes or 0
    all_probs = np.concatenate(probs) if probs else np.zeros((0, k), np.float32)
    if not features:
        return all_probs
    return all_probs, (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32))


def match_channels(images: np.ndarray, in_channels: int) -> np.ndarray:
    """uint8 (N, H, W[, C]) tiles with the model's channel count (gray tiles repeated for an RGB model)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if in_channels == 3:
        images = gray_to_rgb(images)
    if images.shape[-1] != in_channels:
        raise DatasetError(f"tiles have {images.shape[-1]} channels, the model takes {in_channels}")
    return images


# -- a loaded model (model_cache.load_model) ---------------------------------------------------------
def predict(
    loaded: LoadedModel,
    tiles_uint8: np.ndarray | torch.Tensor,
    tta: bool = False,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Class probabilities (N, K) float32 for uint8 tiles (N, S, S, C) already at the model's input size, or for
    the model's view of them (`model_view`: stain-normalised already). Runs `predict_tiles`, the one loop, under the
    model's lock.

    With `tta`, the probabilities are averaged over the 8 dihedral views (flips and 90-degree rotations),
    all label-preserving for tissue. `amp_dtype`: autocast to it, with channels-last batches (the slide
    analysis: `training.device.native_amp_dtype`); None: full fp32."""

    tiles = tiles_uint8 if isinstance(tiles_uint8, torch.Tensor) else np.asarray(tiles_uint8)
    if not isinstance(tiles, torch.Tensor):
        _check_tiles(tiles, loaded.meta)
    spec, k = (
        InputSpec.of(loaded.meta, amp_dtype=amp_dtype, channels_last=amp_dtype is not None),
        loaded.meta.num_classes,
    )
    with model_lock(loaded.model):
        return predict_tiles(loaded.model, tiles, spec, tta=tta, batch_size=batch_size, num_classes=k)


def _check_tiles(tiles: np.ndarray, meta: ModelMeta) -> None:
    expected = (meta.input_size, meta.input_size, meta.in_channels)
    if tiles.ndim != 4 or tiles.dtype != np.uint8 or tuple(tiles.shape[1:]) != expected:
        raise ValueError(
            f"expected uint8 tiles (N, {expected[0]}, {expected[1]}, {expected[2]}), "
            f"got {tiles.dtype} {tiles.shape}; run preprocess() first"
        )


def top_k(probs: np.ndarray, classes: Sequence[str], k: int = 3) -> list[list[tuple[str, float]]]:
    """Per row, the k most probable (class, probability) pairs, most probable first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(str(classes[j]), float(p[j])) for j in row] for p, row in zip(probs, order)]


__all__: Sequence[str] = [
    "InputSpec",
    "eval_batch_size",
    "feature_layer",
    "forward_features",
    "iter_predictions",
    "match_channels",
    "model_batch",
    "model_device",
    "predict",
    "predict_tiles",
    "top_k",
]
