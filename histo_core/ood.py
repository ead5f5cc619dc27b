""" "Unlike the training tiles": an out-of-distribution flag calibrated on the model's own tiles.

    calib = calibrate(train_tiles01, heldout_probs, split="test")   # at the end of training; saved with the model
    flags, reasons = flag_tiles(calib, probs, tiles01)                # at inference: one bool and reason per tile

Two checks, both calibrated when the model is made and stored in its card:
- confidence: the top-class probability is below what the model gives 95% of its own held-out tiles
  (validation split, else test split). Catches tissue the model cannot place.
- colour: the tile's colour statistics, as the model sees them (after stain normalisation), are further from
  the training tiles' (Mahalanobis distance over per-channel means, standard deviations and inter-channel
  correlations) than 99% of the training tiles, by a margin. Catches inputs a classifier is confidently wrong
  about: blank or saturated images, noise, other stains, non-tissue pictures.
- input colour (models trained with stain normalisation): the same check on the tile as it was given, before
  normalisation, against the training tiles as they were given. Normalisation maps almost anything to
  plausible H&E colours (a tile of random noise becomes a uniform stain the model reads as background), so
  the check after normalisation alone would miss what only the original shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

CONFIDENCE_QUANTILE = 0.05
COLOUR_QUANTILE = 0.99
COLOUR_MARGIN = 1.5  # the distance threshold is this many times the training tiles' 99th percentile
SHRINKAGE = 0.2  # towards the diagonal: a steadier covariance from a few hundred tiles


COLOUR_BLOCK = 256  # tiles per block: the intermediates stay small whatever the sample size


def colour_features(x01: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float tiles in [0, 1] -> (N, F) features: per-channel mean and std, and (RGB) the three
    inter-channel correlations. Computed COLOUR_BLOCK tiles at a time."""
    if len(x01) > COLOUR_BLOCK:
        return np.concatenate([_colour_block(x01[s : s + COLOUR_BLOCK]) for s in range(0, len(x01), COLOUR_BLOCK)])
    return _colour_block(x01)


def colour_features_uint8(
    tiles_uint8, input_size: int | None, stain_ref: dict[str, Any] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """colour_features of uint8 NHWC tiles as the model sees them (resized to `input_size`, stain-normalised to
    `stain_ref`) and, with a `stain_ref`, of the same tiles as given (else None), from one float conversion
    COLOUR_BLOCK tiles at a time: memory holds the uint8 tiles and one float block."""
    from histo_core import pipeline, stain

    seen, given = [], []
    for s in range(0, len(tiles_uint8), COLOUR_BLOCK):
        x = pipeline.to_float01(tiles_uint8[s : s + COLOUR_BLOCK], "cpu", input_size)
        seen.append(_colour_block(stain.normalize_batch(x, stain_ref)))
        if stain_ref:
            given.append(_colour_block(x))
    if not seen:
        return np.zeros((0, 0)), None
    return np.concatenate(seen), np.concatenate(given) if given else None


def _colour_block(x01: torch.Tensor) -> np.ndarray:
    x = x01.float().flatten(2)  # (N, C, P)
    mean = x.mean(-1)
    std = x.std(-1, unbiased=False)
    feats = [mean, std]
    if x.shape[1] == 3:
        z = (x - mean.unsqueeze(-1)) / std.clamp_min(1e-3).unsqueeze(-1)
        corr = [(z[:, i] * z[:, j]).mean(-1) for i, j in ((0, 1), (0, 2), (1, 2))]
        corr = [
            torch.where(std[:, i].clamp_max(std[:, j]) < 1e-3, torch.ones_like(c), c)
            for c, (i, j) in zip(corr, ((0, 1), (0, 2), (1, 2)))
        ]  # flat tiles: as correlated as can be
        feats.append(torch.stack(corr, 1))
    return torch.cat(feats, 1).cpu().numpy().astype(np.float64)


def _mahalanobis(feats: np.ndarray, mean: np.ndarray, icov: np.ndarray) -> np.ndarray:
    d = feats - mean
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, icov, d), 0.0))


def _colour_calibration(feats: np.ndarray, prefix: str) -> dict[str, Any]:
    mean = feats.mean(0)
    cov = np.cov(feats, rowvar=False)
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.diag(np.diag(cov)) + np.eye(feats.shape[1]) * 1e-4
    icov = np.linalg.inv(cov)
    dist = _mahalanobis(feats, mean, icov)
    return {
        f"{prefix}_mean": mean.tolist(),
        f"{prefix}_icov": icov.tolist(),
        f"{prefix}_threshold": float(np.quantile(dist, COLOUR_QUANTILE) * COLOUR_MARGIN),
        f"{prefix}_tiles": int(len(feats)),
    }


def calibrate(
    train_tiles01: torch.Tensor | None,
    heldout_probs: np.ndarray | None,
    split: str,
    *,
    features: np.ndarray | None = None,
    input_features: np.ndarray | None = None,
) -> dict[str, Any]:
    """The flag's thresholds: colour statistics of (a sample of) the training tiles as the model sees them
    (float tiles `train_tiles01`, or their `features` from colour_features_uint8), of the same tiles before
    stain normalisation (`input_features`, for a model trained with it), and the confidence quantile of
    held-out predictions (`heldout_probs`, None when there is no held-out split)."""
    if features is None:
        if train_tiles01 is None:
            raise ValueError("calibrate needs the training tiles or their colour features")
        features = colour_features(train_tiles01)
    out = _colour_calibration(features, "colour")
    if input_features is not None:
        out.update(_colour_calibration(input_features, "input_colour"))
    if heldout_probs is not None and len(heldout_probs):
        conf = np.asarray(heldout_probs).max(1)
        out.update(
            confidence_threshold=float(np.quantile(conf, CONFIDENCE_QUANTILE)),
            confidence_split=split,
            confidence_tiles=int(len(conf)),
        )
    return out


def flag_tiles(
    calib: dict[str, Any] | None,
    probs: np.ndarray,
    tiles01: torch.Tensor | None,
    input01: torch.Tensor | None = None,
) -> tuple[np.ndarray, list[str | None]] | None:
    """Per tile, whether it looks unlike the training tiles, and why (None where it does not). `tiles01`: the
    tiles as the model sees them; `input01`: as given, before stain normalisation (checked when the
    calibration has input colours). None when the model has no calibration (older runs)."""
    if not calib:
        return None
    n = len(probs)
    flags = np.zeros(n, bool)
    reasons: list[str | None] = [None] * n

    def flag(i: int, why: str) -> None:
        flags[i] = True
        reasons[i] = f"{reasons[i]}; {why}" if reasons[i] else why

    threshold = calib.get("confidence_threshold")
    if threshold is not None:
        conf = np.asarray(probs).max(1)
        for i in np.flatnonzero(conf < threshold):
            flag(
                int(i),
                f"confidence {conf[i]:.2f} is lower than on 95% of the model's own "
                f"{calib.get('confidence_split', 'held-out')} tiles ({threshold:.2f})",
            )
    checks = (
        (tiles01, "colour", "colours and contrast unlike the training tiles"),
        (input01, "input_colour", "colours and contrast unlike the training tiles even before stain normalisation"),
    )
    for tiles, prefix, why in checks:
        if tiles is None or calib.get(f"{prefix}_mean") is None:
            continue
        feats = colour_features(tiles)
        mean, icov = np.asarray(calib[f"{prefix}_mean"]), np.asarray(calib[f"{prefix}_icov"])
        if feats.shape[1] == len(mean):
            for i in np.flatnonzero(_mahalanobis(feats, mean, icov) > calib[f"{prefix}_threshold"]):
                flag(int(i), why)
    return flags, reasons
