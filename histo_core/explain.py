"""Class activation maps (pytorch-grad-cam) for tile classifiers, batched, and their rendering.

    cams = compute_cams(loaded.model, loaded.meta, tiles, "GradCAM")       # (N, S, S) float32 in [0, 1]
    flat = uniform_maps(cams)                                              # (N,) bool: nothing to show
    rgb = overlay(tiles[0], cams[0], alpha=0.5, out_size=224)

The target layer is the architecture's registered one (models.cam_target_layer), chosen so the map keeps
at least 4x4 cells at small inputs. Each call uses the library's context manager (`with GradCAM(...) as
cam:`), so hooks are attached only while tiles are being explained and released right after (a long-running
app must not accumulate hooks, nor store activations on every ordinary prediction). A map whose range is below 1e-6
carries no information (e.g. a dead ReLU layer); `uniform_maps` flags it so the UI says so instead of
painting a flat colour as if it meant something.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from histo_core.errors import HistoError
from histo_core.image_decode import gray_to_rgb
from histo_core.model_input import model_input
from histo_core.model_lock import model_lock
from histo_core.model_meta import ModelMeta
from histo_core.models import cam_target_layer

UNIFORM_RANGE = 1e-6
DEFAULT_OVERLAY_PX = 224


@dataclass(frozen=True)
class CamMethod:
    name: str
    class_name: str  # in pytorch_grad_cam
    uses_target: bool  # False: the map does not depend on the class asked for
    batch_size: int  # images per call (ScoreCAM runs one forward pass per feature channel and image)
    description: str


CAM_METHODS: dict[str, CamMethod] = {
    m.name: m
    for m in (
        CamMethod("GradCAM", "GradCAM", True, 64, "Gradient-weighted activations (Selvaraju et al. 2017)."),
        CamMethod(
            "GradCAM++", "GradCAMPlusPlus", True, 64, "Higher-order gradient weights; better for several instances."
        ),
        CamMethod("HiResCAM", "HiResCAM", True, 64, "Element-wise gradient x activation; faithful to the model."),
        CamMethod("EigenCAM", "EigenCAM", False, 64, "First principal component of the activations; class-agnostic."),
        CamMethod("LayerCAM", "LayerCAM", True, 64, "Positive gradients per location; finer detail."),
        CamMethod(
            "ScoreCAM",
            "ScoreCAM",
            True,
            4,
            "Gradient-free, one forward pass per channel: slow (seconds per tile on CPU).",
        ),
    )
}


def get_method(name: str) -> CamMethod:
    if name not in CAM_METHODS:
        raise HistoError(f"--cam must be one of {', '.join(CAM_METHODS)}, got {name!r}")
    return CAM_METHODS[name]


def _clone(t: torch.Tensor) -> torch.Tensor:
    # The saved activation must not be changed by an in-place op after the hooked layer (ReLU(inplace=True)).
    return t.clone()


@contextmanager
def _cam_for(model: nn.Module, meta: ModelMeta, method: CamMethod) -> Iterator[Any]:
    """A pytorch-grad-cam object for `model` used through the library's own context manager: its hooks are on
    the architecture's registered target layer only inside the `with`, and removed on leaving it."""
    import pytorch_grad_cam

    layer = cam_target_layer(model, meta.arch, meta.input_size)
    cam_class = getattr(pytorch_grad_cam, method.class_name)
    try:
        with cam_class(model=model, target_layers=[layer], reshape_transform=_clone) as cam:
            if method.name == "ScoreCAM":
                cam.batch_size = 64  # the library's option: channel-masked copies per forward pass
            try:
                yield cam
            except IndexError as exc:
                # BaseCAM.__exit__ prints an IndexError to stdout and swallows it; it must reach the caller.
                raise RuntimeError(f"{method.name}: {exc}") from exc
    finally:
        model.zero_grad(set_to_none=True)  # parameter gradients are a by-product; free them


def _maps(cam: Any, method: CamMethod, x: torch.Tensor, targets: list | None) -> np.ndarray:
    if method.name != "ScoreCAM":
        return cam(input_tensor=x, targets=targets)
    # ScoreCAM draws a tqdm bar per image on stderr (a page's log or `predict` must not be flooded). tqdm reads
    # TQDM_DISABLE once, when it is first imported, so it cannot be set for one call; its bars write to
    # sys.stderr as it is when they start, so that stream is pointed at devnull for this call only.
    with open(os.devnull, "w") as sink, redirect_stderr(sink):
        return cam(input_tensor=x, targets=targets)


def hook_count(model: nn.Module) -> int:
    """Forward hooks currently registered anywhere in `model` (tests check none are left behind)."""
    return sum(len(m._forward_hooks) for m in model.modules())


def compute_cams(
    model: nn.Module,
    meta: ModelMeta,
    tiles_uint8: np.ndarray,
    method: str = "GradCAM",
    targets: Sequence[int] | int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Maps (N, S, S) float32 in [0, 1] for uint8 tiles (N, S, S, C) at the model's input size.

    `targets`: None explains each tile's predicted class; an int explains that class for every tile; a
    sequence gives one class per tile."""
    spec = get_method(method)
    tiles = np.asarray(tiles_uint8)
    n = len(tiles)
    if n == 0:
        return np.zeros((0, meta.input_size, meta.input_size), np.float32)
    per_tile = _targets(targets, n, meta)
    device = device or next(model.parameters()).device
    step = batch_size or spec.batch_size
    out = np.empty((n, meta.input_size, meta.input_size), np.float32)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with model_lock(model), torch.inference_mode(False), torch.enable_grad(), _cam_for(model, meta, spec) as cam:
        for start in range(0, n, step):
            x = model_input(tiles[start : start + step], meta, device)
            wanted = None if per_tile is None else [ClassifierOutputTarget(c) for c in per_tile[start : start + step]]
            out[start : start + len(x)] = np.nan_to_num(_maps(cam, spec, x, wanted), nan=0.0)
    return np.clip(out, 0.0, 1.0)


def _targets(targets: Sequence[int] | int | None, n: int, meta: ModelMeta) -> list[int] | None:
    if targets is None:
        return None
    values = [int(targets)] * n if isinstance(targets, (int, np.integer)) else [int(t) for t in targets]
    if len(values) != n:
        raise ValueError(f"{len(values)} targets for {n} tiles")
    bad = [t for t in values if not 0 <= t < meta.num_classes]
    if bad:
        raise HistoError(f"--target must name one of the model's {meta.num_classes} classes, got index {bad[0]}")
    return values


def class_index(meta: ModelMeta, name_or_index: str | int) -> int:
    """A class given by name (case-insensitive) or by index, as an index. Raises HistoError."""
    text = str(name_or_index).strip()
    lowered = [c.lower() for c in meta.classes]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if text.isdigit() and int(text) < meta.num_classes:
        return int(text)
    raise HistoError(
        f"--target {text!r}: not a class of this model; use one of {', '.join(meta.classes)} "
        f"or an index 0..{meta.num_classes - 1}"
    )


def uniform_maps(cams: np.ndarray) -> np.ndarray:
    """(N,) bool: True where a map is flat (max - min < 1e-6) and so shows nothing."""
    cams = np.asarray(cams)
    if cams.ndim == 2:
        cams = cams[None]
    flat = cams.reshape(len(cams), -1)
    return (flat.max(axis=1) - flat.min(axis=1)) < UNIFORM_RANGE


# -- rendering -------------------------------------------------------------------------------------
_LUT: np.ndarray | None = None


def _colormap() -> np.ndarray:
    global _LUT
    if _LUT is None:
        from matplotlib import colormaps

        _LUT = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return _LUT


def _upscale_tile(tile: np.ndarray, out_size: int) -> np.ndarray:
    tile = gray_to_rgb(np.asarray(tile, dtype=np.uint8))
    if tile.shape[:2] == (out_size, out_size):
        return tile
    # Nearest-neighbour keeps a 28 px tile's pixels crisp instead of inventing a blur.
    small = max(tile.shape[:2]) < out_size
    resample = Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(tile).resize((out_size, out_size), resample), dtype=np.uint8)


def _upscale_cam(cam: np.ndarray, out_size: int) -> np.ndarray:
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == (out_size, out_size):
        return cam
    im = Image.fromarray(cam, mode="F").resize((out_size, out_size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)


def heatmap(cam: np.ndarray, out_size: int = DEFAULT_OVERLAY_PX) -> np.ndarray:
    """The map alone, coloured (jet: blue = low, red = high), uint8 RGB (out_size, out_size, 3)."""
    idx = np.rint(_upscale_cam(cam, out_size) * 255).astype(np.uint8)
    return _colormap()[idx]


def overlay(
    tile_uint8: np.ndarray, cam: np.ndarray, alpha: float = 0.5, out_size: int = DEFAULT_OVERLAY_PX
) -> np.ndarray:
    """The tile with the coloured map blended in at opacity `alpha` (0 = tile only, 1 = map only)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = _upscale_tile(tile_uint8, out_size).astype(np.float32)
    heat = heatmap(cam, out_size).astype(np.float32)
    return np.clip(np.rint(base * (1.0 - alpha) + heat * alpha), 0, 255).astype(np.uint8)


def upscale_tile(tile_uint8: np.ndarray, out_size: int = DEFAULT_OVERLAY_PX) -> np.ndarray:
    """The tile alone at a viewable size (nearest-neighbour for small tiles), RGB."""
    return _upscale_tile(tile_uint8, out_size)


# -- maps at the tissue's resolution ---------------------------------------------------------------
CAM_VIEWS = ("overlay", "contour")
CONTOUR_COLOUR = (0, 255, 0)  # green: absent from H&E, so the outline never blends into the tissue


def model_field(image: np.ndarray) -> np.ndarray:
    """The model's field of view as RGB uint8 (`TileResult.field_view`: the part of an upload the model saw, found by
    the one image path; grayscale repeated to 3 channels)."""
    return gray_to_rgb(np.asarray(image, dtype=np.uint8))


def _resize_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == (height, width):
        return cam
    im = Image.fromarray(cam, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)


def cam_on_original(
    image: np.ndarray, cam: np.ndarray, view: str = "overlay", alpha: float = 0.35, threshold: float = 0.5
) -> np.ndarray:
    """The map drawn on the part of the upload the model saw (`image`: `TileResult.field_view`), at that image's own
    resolution (the map, computed on the model's small input, is upsampled bilinearly), RGB uint8.

    view "overlay": the jet-coloured map blended in at opacity `alpha`; "contour": the tissue untouched, with a
    green outline around the region where the map is at least `threshold` (of its maximum, maps being in [0, 1])."""
    if view not in CAM_VIEWS:
        raise HistoError(f"CAM view must be one of {', '.join(CAM_VIEWS)}, got {view!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = model_field(image)
    h, w = base.shape[:2]
    up = _resize_map(cam, h, w)
    if view == "overlay":
        heat = _colormap()[np.rint(up * 255).astype(np.uint8)].astype(np.float32)
        return np.clip(np.rint(base.astype(np.float32) * (1 - alpha) + heat * alpha), 0, 255).astype(np.uint8)
    from scipy import ndimage

    mask = up >= threshold
    width = max(1, round(min(h, w) / 150))  # about 1 px per 150 px: visible, yet thin
    edge = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)
    out = base.copy()
    out[edge] = CONTOUR_COLOUR
    return out
