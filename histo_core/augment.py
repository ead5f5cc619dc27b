"""Augmentation of float batches on the device (after `pipeline.to_float01`): flips, 90° rotations, affine,
colour jitter and HED stain jitter as whole-batch tensor operations drawn from one seeded generator, and the
eight dihedral views that test-time augmentation averages (`predict`).

    x = augment_batch(x01, config.augment, gen)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from histo_core import stain
from histo_core.config import Augment


# -- random transforms ----------------------------------------------------------------------------------
def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device).to(device) * (hi - lo) + lo


def _coin(n: int, gen: torch.Generator, device: torch.device, p: float = 0.5) -> torch.Tensor:
    return (torch.rand(n, generator=gen, device=gen.device) < p).to(device)


def random_flips(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Independent horizontal and vertical flips, each with probability 1/2, per tile."""
    n = x.shape[0]
    h = _coin(n, gen, x.device).view(n, 1, 1, 1)
    v = _coin(n, gen, x.device).view(n, 1, 1, 1)
    x = torch.where(h, x.flip(3), x)
    return torch.where(v, x.flip(2), x)


def random_rot90(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rotate each (square) tile by a random multiple of 90 degrees."""
    if x.shape[-1] != x.shape[-2]:
        return x
    n = x.shape[0]
    k = torch.randint(0, 4, (n,), generator=gen, device=gen.device).to(x.device).view(n, 1, 1, 1)
    # rot90 by k = (transpose when k is odd), then flip rows when k is 1 or 2, columns when k is 2 or 3: three
    # selects, no boolean indexing (which waits for the device to learn how many tiles each k has)
    x = torch.where(k % 2 == 1, x.transpose(2, 3), x)
    x = torch.where((k == 1) | (k == 2), x.flip(2), x)
    return torch.where(k >= 2, x.flip(3), x)


def random_affine(
    x: torch.Tensor, gen: torch.Generator, max_degrees: float = 0.0, crop_scale: float | None = None
) -> torch.Tensor:
    """Small random rotations and/or random resized crops in one grid_sample (reflection padding, so
    no black corners appear in tissue)."""
    n = x.shape[0]
    dev = x.device
    angle = _uniform(n, -max_degrees, max_degrees, gen, dev) * (math.pi / 180.0)
    sx = torch.ones(n, device=dev)
    sy = torch.ones(n, device=dev)
    tx = torch.zeros(n, device=dev)
    ty = torch.zeros(n, device=dev)
    if crop_scale is not None and crop_scale < 1.0:
        area = _uniform(n, crop_scale, 1.0, gen, dev)
        log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), gen, dev)
        ratio = torch.exp(log_ratio)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = _uniform(n, -1.0, 1.0, gen, dev) * (1.0 - sx)
        ty = _uniform(n, -1.0, 1.0, gen, dev) * (1.0 - sy)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * sx, -sin * sy, tx], dim=1),
            torch.stack([sin * sx, cos * sy, ty], dim=1),
        ],
        dim=1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)  # once here: linalg.inv on a GPU checks its result on the host
_GRAY_WEIGHTS = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (x * stain.constant(_GRAY_WEIGHTS, x)).sum(1, keepdim=True)


def color_jitter(
    x: torch.Tensor,
    gen: torch.Generator,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> torch.Tensor:
    """Per-tile brightness/contrast/saturation factors in [1-v, 1+v] and a hue shift in [-hue, hue] turns
    (a rotation of the chroma plane in YIQ space), batched. Input and output in [0, 1]."""
    n, dev = x.shape[0], x.device
    view = (n, 1, 1, 1)
    if brightness > 0:
        x = x * _uniform(n, 1 - brightness, 1 + brightness, gen, dev).view(view)
    if contrast > 0:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, 1 - contrast, 1 + contrast, gen, dev).view(view) + mean
    if x.shape[1] == 3 and saturation > 0:
        g = _gray(x)
        x = (x - g) * _uniform(n, 1 - saturation, 1 + saturation, gen, dev).view(view) + g
    if x.shape[1] == 3 and hue > 0:
        phi = _uniform(n, -hue, hue, gen, dev) * (2 * math.pi)
        to_yiq = stain.constant(_RGB_TO_YIQ, x)
        from_yiq = stain.constant(_YIQ_TO_RGB, x)
        c, s = torch.cos(phi), torch.sin(phi)
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        rot = torch.stack([one, zero, zero, zero, c, -s, zero, s, c], dim=1).view(n, 3, 3).to(x.dtype)
        m = from_yiq @ rot @ to_yiq  # (n, 3, 3)
        x = torch.einsum("nij,njhw->nihw", m, x)
    return x.clamp(0.0, 1.0)


def augment_batch(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """All configured augmentations of a float [0, 1] NCHW batch, on its device."""
    if aug.flip:
        x = random_flips(x, gen)
    if aug.rot90:
        x = random_rot90(x, gen)
    if aug.rotate > 0 or aug.resized_crop:
        x = random_affine(x, gen, aug.rotate, aug.crop_scale if aug.resized_crop else None)
    if aug.brightness or aug.contrast or aug.saturation or aug.hue:
        x = color_jitter(x, gen, aug.brightness, aug.contrast, aug.saturation, aug.hue)
    if aug.stain_jitter > 0:
        x = stain.hed_jitter(x, aug.stain_jitter, gen)
    return x


def augmentation_active(aug: Augment) -> bool:
    return bool(
        aug.flip
        or aug.rot90
        or aug.rotate > 0
        or aug.resized_crop
        or aug.brightness
        or aug.contrast
        or aug.saturation
        or aug.hue
        or aug.stain_jitter > 0
    )


def dihedral_views(x: torch.Tensor, flips: bool = True, rot90: bool = True) -> list[torch.Tensor]:
    """The test-time views of a batch: up to the 8 symmetries of the square (all label-preserving for tissue)."""
    views = [x]
    if rot90 and x.shape[-1] == x.shape[-2]:
        views += [torch.rot90(x, k, (2, 3)) for k in (1, 2, 3)]
    if flips:
        views += [v.flip(3) for v in views]
    return views
