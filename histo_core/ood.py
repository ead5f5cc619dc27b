""" "Unlike the training tiles": an out-of-distribution flag calibrated on the model's own tiles.

    calib = calibrate(train_tiles01, heldout_probs, split="test")   # at the end of training; saved with the model
    flags, reasons = flag_tiles(calib, probs, tiles01)                # at inference: one bool and reason per tile

The checks, calibrated when the model is made and stored in its card:
- confidence: the top-class probability is below what the model gives 95% of its own held-out tiles
  (validation split, else test split). Catches tissue the model cannot place; part of the flag only where
  the model has no feature check (`flag_checks`).
- colour: the tile's colour statistics, as the model sees them (after stain normalisation), are further from
  the training tiles' (Mahalanobis distance over per-channel means, standard deviations and inter-channel
  correlations) than 99% of the training tiles, by a margin. Catches inputs a classifier is confidently wrong
  about: blank or saturated images, noise, other stains, non-tissue pictures.
- input colour (models trained with stain normalisation): the same check on the tile as it was given, before
  normalisation, against the training tiles as they were given. Normalisation maps almost anything to
  plausible H&E colours (a tile of random noise becomes a uniform stain the model reads as background), so
  the check after normalisation alone would miss what only the original shows.
- features: how far the tile's activations inside the model are from the training tiles' (`fit_features`): the
  per-channel mean activation of the first non-linear stage (`feature_stage`: a ResNet-9's first block), its
  squared Mahalanobis distance to the nearest class mean of the training tiles (one covariance shared by the
  classes, Ledoit-Wolf; Lee et al. 2018), in units of its median over the training tiles, above the 95th
  percentile of the same score on held-out in-domain tiles (validation split, else test split; out-of-fold tiles
  for the shipped models). Catches tissue of another organ or of no tissue that still has H&E colours, which
  the classifier would otherwise place confidently in one of its classes. Measured on the real samples
  (benchmarks/RESULTS.md, issue #24): the later stages' means (and the penultimate layer) move as far for a
  full-size in-domain tile shrunk to the model's size as for another organ; the first stage, per class, does not.
- input features (models trained with stain normalisation, in place of the feature check): the same score on the
  tile as given, before normalisation (a forward pass of its own through the same model), against the training
  tiles as given, with its threshold from held-out in-domain tiles as given (calib["input_feature"]).
  Normalisation maps another organ into the training stain, where the feature check after it misses most of it
  (issue #24).

    feats = layer_features(model, tiles, spec)                            # per stage (N, C)
    calib["feature"] = calibrate_features(train_feats, heldout_feats, "val", labels=y, stage=feature_stage(model))
    result = check_tiles(calib, probs, tiles01, input01, features=feats)  # flags, reasons, scores

Each check's value is expressed as a ratio to its own threshold. The flag's one threshold is set on the checks
calibrated on held-out tiles (`flag_checks`): the feature check when it runs (the input-feature check in its place
for a stain-normalised model), else the confidence check; the 95th percentile of their largest ratio on held-out
in-domain tiles (`combined_scores`, `calibrate_combined`; stored as calib["combined"] with the checks it was set on). The
confidence check is left out of the flag when the feature check runs: on the real samples it fired on ambiguous
in-domain tiles and almost never on another organ. Calibrations made before that (no "checks" recorded) combine
confidence and features by their largest ratio, as they were calibrated. The colour checks (gross outliers, below
1 in-domain by their margin) keep their own threshold; with the input-feature check, only the input colour counts
(`colour_checks`). A tile's score is the largest of these: the flag fires at 1.0 or more, and the score says by
how much.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from histo_core.model_input import model_view
from histo_core.model_meta import ModelMeta
from histo_core.ood_features import feature_scores, feature_stages_match, layer_features
from histo_core.predict import InputSpec

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


def calibration_summary(calib: dict[str, Any] | None) -> dict[str, Any]:
    """The calibration without its matrices: what a model card records (thresholds, splits, tile counts)."""
    out: dict[str, Any] = {}
    for k, v in (calib or {}).items():
        if k.endswith(("_mean", "_icov")):
            continue
        is_features = k in ("feature", "input_feature") and isinstance(v, dict)
        out[k] = {kk: vv for kk, vv in v.items() if kk != "layers"} if is_features else v
    return out


# -- the checks together --------------------------------------------------------------------------------------
COMBINED_QUANTILE = 0.95  # of held-out in-domain tiles' combined scores: the one threshold of the flag


@dataclass
class OodResult:
    """Per tile: flagged or not, why (None where not), and the score (the combined score over its threshold:
    1.0 or more is flagged; NaN where no check could run)."""

    flags: np.ndarray
    reasons: list[str | None]
    scores: np.ndarray


def check_ratios(
    calib: dict[str, Any],
    probs: np.ndarray,
    tiles01: torch.Tensor | None,
    input01: torch.Tensor | None = None,
    *,
    features: list[np.ndarray] | None = None,
    feature_scores_: np.ndarray | None = None,
    input_features: list[np.ndarray] | None = None,
    input_feature_scores_: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per check that the calibration and inputs allow, each tile's value over that check's own threshold:
    "confidence" (doubt, 1 - top probability, over the doubt at the confidence threshold), "colour",
    "input_colour" (Mahalanobis distance over its threshold), "features" (feature score over its threshold;
    from `features`, or from `feature_scores_` already computed, e.g. by a cross-validation fold's model) and
    "input_features" (the same for the tiles as given, before stain normalisation: `input_features` or
    `input_feature_scores_`, against calib["input_feature"])."""
    n = len(probs)
    out: dict[str, np.ndarray] = {}
    threshold = calib.get("confidence_threshold")
    if threshold is not None and n:
        out["confidence"] = (1.0 - np.asarray(probs).max(1)) / max(1.0 - threshold, 1e-6)
    for tiles, prefix in ((tiles01, "colour"), (input01, "input_colour")):
        if tiles is None or calib.get(f"{prefix}_mean") is None:
            continue
        feats = colour_features(tiles)
        mean, icov = np.asarray(calib[f"{prefix}_mean"]), np.asarray(calib[f"{prefix}_icov"])
        if feats.shape[1] == len(mean):
            out[prefix] = _mahalanobis(feats, mean, icov) / calib[f"{prefix}_threshold"]
    for check, key, feats_, scores_ in (
        ("features", "feature", features, feature_scores_),
        ("input_features", "input_feature", input_features, input_feature_scores_),
    ):
        fcal = calib.get(key)
        if fcal is None or not _has_threshold(fcal):
            continue
        if scores_ is not None:
            out[check] = np.asarray(scores_, np.float64) / fcal["threshold"]
        elif feats_ is not None and feature_stages_match(fcal["layers"], feats_):
            out[check] = feature_scores(fcal["layers"], feats_) / fcal["threshold"]
    return out


# calibrated at a quantile of held-out tiles: the one threshold scales them
HELDOUT_CHECKS = ("confidence", "features", "input_features")
BEFORE_CHECKS_RECORDED = ("confidence", "features")  # what calibrations recording no "checks" combine


def flag_checks(calib: dict[str, Any]) -> tuple[str, ...]:
    """The checks calibrated on held-out tiles that the flag's one threshold is set on. A calibration made now:
    the feature check when it has a threshold, else the confidence check; for a model trained with stain
    normalisation, the input-feature check (calib["input_feature"]) in place of the feature check. Measured on
    the real samples (benchmarks/RESULTS.md, "The feature check on the tile as given"), the check after normalisation
    found 1 of 8 BreaKHis images and 15 of 117 skin tiles for the shipped Macenko model, and sharing the one
    threshold with it took detections from the input-feature check (skin 72% instead of 87%; a run on the train
    split: 42% instead of 78%) at the same in-domain rate. The confidence check is left out when
    the feature check runs because, measured on the real samples (benchmarks/RESULTS.md, issue #24), it fired on
    in-domain tiles the model finds ambiguous (2 of the 13 full-size CRC-VAL tiles, 10% of a run's test tiles)
    and on almost no tile of another organ (1 of 8 BreaKHis images, 1 of 117 skin tiles): it doubled the false
    alarms and took detections away through the shared threshold. The confidence itself is shown beside the
    class. Calibrations made before record no list: both checks, as they were calibrated."""
    combined = calib.get("combined")
    if isinstance(combined, dict):
        return tuple(combined.get("checks") or BEFORE_CHECKS_RECORDED)
    for key in ("input_feature", "feature"):
        if _has_threshold(calib.get(key)):
            return (f"{key}s",)
    return BEFORE_CHECKS_RECORDED


def colour_checks(calib: dict[str, Any]) -> tuple[str, ...]:
    """The colour checks in the flag, each at its own threshold: colour and input colour; with the input-feature
    check (a stain-normalised model calibrated since issue #24), input colour only. After normalisation a tile's
    colours are what normalisation made of them: it maps noise to plausible stain (why the input checks exist),
    and it turned a background tile of CRC-VAL (in-domain) into colours unlike the training tiles' (1.13x the
    threshold: the Macenko model's one colour alarm on the real samples, and none on another organ that the
    feature checks missed, benchmarks/RESULTS.md). Calibrations made before keep both."""
    if "input_features" in flag_checks(calib):
        return ("input_colour",)
    return ("colour", "input_colour")


def _has_threshold(fcal: Any) -> bool:
    return isinstance(fcal, dict) and bool(fcal.get("threshold")) and bool(len(fcal.get("layers", ())))


def _combine(ratios: dict[str, np.ndarray], n: int, threshold: float = 1.0) -> np.ndarray:
    """Per tile, the largest of the checks' ratios, those calibrated on held-out tiles (the flag's checks,
    `flag_checks`; `ratios` holds only those and the colour checks) over the flag's one `threshold`; NaN where
    none ran. The colour checks (99th percentile of the training tiles with a 1.5x margin: gross outliers, such
    as noise or another stain) keep their own threshold: on in-domain tiles they stay below 1, so they add no
    false alarms for the one threshold to take back, and scaling them by it would only hide what they catch."""
    combined = np.full(n, np.nan)
    for k, r in ratios.items():
        combined = np.fmax(combined, r / threshold if k in HELDOUT_CHECKS else r)
    return combined


def combined_scores(
    calib: dict[str, Any],
    probs: np.ndarray,
    tiles01: torch.Tensor | None,
    input01: torch.Tensor | None = None,
    *,
    features: list[np.ndarray] | None = None,
    feature_scores_: np.ndarray | None = None,
    input_features: list[np.ndarray] | None = None,
    input_feature_scores_: np.ndarray | None = None,
) -> np.ndarray:
    """Per tile, the score the flag's one threshold is set on: the largest ratio of the flag's checks calibrated
    on held-out tiles (`flag_checks`: the feature check, and the input-feature check where calibrated, else
    confidence; `check_ratios`, same arguments); NaN where none could run."""
    ratios = check_ratios(
        calib,
        probs,
        tiles01,
        input01,
        features=features,
        feature_scores_=feature_scores_,
        input_features=input_features,
        input_feature_scores_=input_feature_scores_,
    )
    checks = flag_checks(calib)
    return _combine({k: r for k, r in ratios.items() if k in checks}, len(probs))


def calibrate_combined(
    heldout_combined: np.ndarray, split: str, checks: tuple[str, ...] = BEFORE_CHECKS_RECORDED
) -> dict[str, Any] | None:
    """The flag's one threshold: the COMBINED_QUANTILE of `combined_scores` on held-out in-domain tiles. The
    checks it combines (features and input features, or confidence and features) are each at their own 5% on
    such tiles; taking the largest adds their false alarms up, which this threshold takes back to 5% for the
    flag as a whole (the colour checks, below 1 on
    in-domain tiles, keep their own threshold: `_combine`). `checks`: the checks the scores combine
    (`flag_checks` of the calibration they were computed with), recorded. None without held-out tiles."""
    scores = np.asarray(heldout_combined, np.float64)
    scores = scores[~np.isnan(scores)]
    if not len(scores):
        return None
    return {
        "threshold": float(np.quantile(scores, COMBINED_QUANTILE)),
        "quantile": COMBINED_QUANTILE,
        "split": split,
        "heldout_tiles": int(len(scores)),
        "checks": list(checks),
    }


def check_tiles(
    calib: dict[str, Any] | None,
    probs: np.ndarray,
    tiles01: torch.Tensor | None,
    input01: torch.Tensor | None = None,
    *,
    features: list[np.ndarray] | None = None,
    input_features: list[np.ndarray] | None = None,
) -> OodResult | None:
    """Every check of the calibration that its inputs allow: confidence (`probs`), colour (`tiles01`, the
    tiles as the model sees them), input colour (`input01`, as given, for a stain-normalised model), features
    (`features`: `layer_features` of the tiles as the model sees them), input features (`input_features`: of
    the tiles as given, `ood_features(..., given)`, for a stain-normalised model). The score is the combined score (the largest of the checks'
    ratios) over the calibration's one threshold (`calib["combined"]`; 1.0 for calibrations made before it):
    flagged at 1.0 or more, and the reasons name the checks above that threshold. None when the model has no
    calibration (older runs)."""
    if not calib:
        return None
    n = len(probs)
    checks = flag_checks(calib) + colour_checks(calib)
    ratios = {
        k: r
        for k, r in check_ratios(
            calib, probs, tiles01, input01, features=features, input_features=input_features
        ).items()
        if k in checks
    }
    threshold = float((calib.get("combined") or {}).get("threshold") or 1.0)
    scaled = {k: r / threshold if k in HELDOUT_CHECKS else r for k, r in ratios.items()}
    scores = _combine(ratios, n, threshold)
    flags = scores >= 1.0  # NaN: False
    conf = np.asarray(probs).max(1) if n else np.zeros(0)
    doubt_at = 1.0 - threshold * (1.0 - float(calib.get("confidence_threshold") or 0.0))
    split = calib.get("confidence_split") or "held-out"
    why = {
        "confidence": lambda i: (
            f"confidence {conf[i]:.2f}, lower than the model gives its own {split} tiles"
            + (f" (below {doubt_at:.2f} on at most 5% of them)" if doubt_at > 0 else "")
        ),
        "colour": lambda i: "colours and contrast unlike the training tiles",
        "input_colour": lambda i: "colours and contrast unlike the training tiles even before stain normalisation",
        "features": lambda i: (
            f"the model's features are further from its training tiles' than almost all held-out in-domain tiles' "
            f"({scaled['features'][i]:.1f}x the flag's threshold)"
        ),
        "input_features": lambda i: (
            "before stain normalisation, the model's features are further from its training tiles' than almost all "
            f"held-out in-domain tiles' ({scaled['input_features'][i]:.1f}x the flag's threshold)"
        ),
    }
    reasons: list[str | None] = [None] * n
    for i in np.flatnonzero(flags):
        named = [why[k](int(i)) for k, r in scaled.items() if r[i] >= 1.0]
        reasons[i] = "; ".join(named)
    return OodResult(flags, reasons, scores)


def flag_tiles(
    calib: dict[str, Any] | None,
    probs: np.ndarray,
    tiles01: torch.Tensor | None,
    input01: torch.Tensor | None = None,
    features: list[np.ndarray] | None = None,
    input_features: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, list[str | None]] | None:
    """Per tile, whether it looks unlike the training tiles, and why (None where it does not). `tiles01`: the
    tiles as the model sees them; `input01`: as given, before stain normalisation (checked when the
    calibration has input colours); `features`: `layer_features` of the tiles (checked when the calibration
    has a feature threshold); `input_features`: of the tiles as given (a stain-normalised model's input-feature
    check). None when the model has no calibration (older runs). `check_tiles` also gives the scores."""
    found = check_tiles(calib, probs, tiles01, input01, features=features, input_features=input_features)
    return None if found is None else (found.flags, found.reasons)


# -- for a model's card: uint8 tiles at its size, its calibration, its features -----------------------------
def ood_flags(
    meta: ModelMeta, probs: np.ndarray, tiles_uint8: np.ndarray | None = None, model: nn.Module | None = None
) -> np.ndarray | None:
    """Per tile: True where it looks unlike the training tiles (histo_core.ood); None without a calibration.
    With the `model` (and the tiles), the feature check runs too."""
    found = ood_check(meta, probs, tiles_uint8, model)
    return None if found is None else found.flags


def ood_check(
    meta: ModelMeta, probs: np.ndarray, tiles_uint8: np.ndarray | None = None, model: nn.Module | None = None
) -> OodResult | None:
    """histo_core.ood.check_tiles for uint8 tiles at the model's size: flags, reasons and scores (None
    without a calibration). The feature check needs the `model` and the tiles."""

    if tiles_uint8 is None:
        return check_tiles(meta.ood, probs, None)
    view, given = model_view(tiles_uint8, meta)
    return check_tiles(
        meta.ood,
        probs,
        view,
        given,
        features=ood_features(model, meta, view),
        input_features=ood_features(model, meta, given, "input_feature"),
    )


def ood_features(
    model: nn.Module | None, meta: ModelMeta, tiles01: torch.Tensor | None, check: str = "feature"
) -> list[np.ndarray] | None:
    """The tiles' stage features for the "unlike the training tiles" feature check (`check` "feature": pass the
    tiles as the model sees them, `model_view`'s view) or input-feature check ("input_feature": pass them as
    given, `model_view`'s second tensor; a forward pass of their own, without stain normalisation), when the
    model's calibration has that check and the flag uses it (else None: nothing computed)."""

    calib = meta.ood or {}
    if model is None or tiles01 is None or not len(tiles01) or not isinstance(calib.get(check), dict):
        return None
    if f"{check}s" not in flag_checks(calib):  # calibrated, but not part of the flag: no forward pass
        return None
    return layer_features(model, tiles01, InputSpec.of(meta))
