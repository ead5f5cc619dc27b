"""The feature check of the "unlike the training tiles" flag (histo_core.ood): per stage of the model, the
per-channel mean activation of a tile (`layer_features`, or `StageCapture` inside a prediction's own forward
pass), compared with the training tiles' (`fit_features`: at `feature_stage(model)`, the nearest class mean with
one covariance shared by the classes; Lee et al. 2018), calibrated at a quantile of held-out in-domain tiles'
scores (`calibrate_features`).

    feats = layer_features(model, tiles, spec)                            # per stage (N, C)
    calib["feature"] = calibrate_features(train_feats, heldout_feats, "val", labels=y, stage=feature_stage(model))
    scores = feature_scores(calib["feature"]["layers"], feats)
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from histo_core.model_lock import model_lock

FEATURE_QUANTILE = 0.95  # of held-out in-domain tiles' feature scores: the feature check's threshold
FEATURE_MAX_TILES = 2000  # training tiles the feature statistics are fitted on (a sample when more)


def feature_layers(model: nn.Module) -> list[nn.Module]:
    """The stages whose activations the feature check measures: the children of a `features` Sequential
    (histo_core's own architectures, DenseNet), a ResNet's layer1..layer4, else the whole model but its head
    (torchvision-style `fc`/`classifier`/`head`) as one stage. Of an ensemble: its first member's stages."""
    from histo_core.models import first_member

    model = first_member(model)
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential) and len(feats) > 1:
        return list(feats.children())
    stages = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(m, nn.Module) for m in stages):
        return [m for m in stages if m is not None]
    from histo_core.predict import feature_layer

    return [feature_layer(model)]


class StageCapture:
    """Forward hooks on `feature_layers(model)` that keep, per stage, the per-channel mean activation of every
    forward pass made while attached (float64 (N, C); for a single linear stage, its input): the feature
    check's features collected during a prediction's own forward pass, with no second pass. Attach it under
    `model_lock.model_lock(model)` so that no other thread's forward is captured.

        with model_lock(model), StageCapture(model) as cap:
            probs = predict(...)
        feats = cap.take()
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = feature_layers(model)
        self._linear = len(self.layers) == 1 and isinstance(self.layers[0], nn.Linear)
        self._parts: list[list[np.ndarray]] = [[] for _ in self.layers]
        self._hooks: list[Any] = []

    def _keep(self, k: int, _m: nn.Module, inp: tuple[torch.Tensor, ...], outp: torch.Tensor) -> None:
        t = (inp[0] if self._linear else outp).detach().float()
        t = t.flatten(2).mean(-1) if t.ndim > 2 else t.flatten(1)
        self._parts[k].append(t.cpu().numpy().astype(np.float64))

    def __enter__(self) -> StageCapture:
        self._hooks = [m.register_forward_hook(partial(self._keep, k)) for k, m in enumerate(self.layers)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def take(self) -> list[np.ndarray]:
        """What was captured since the last take, per stage, in forward order; then forgotten."""
        out = [np.concatenate(parts) if parts else np.zeros((0, 0)) for parts in self._parts]
        self._parts = [[] for _ in self.layers]
        return out


def layer_features(model: nn.Module, tiles: Any, spec: Any, batch_size: int = 256) -> list[np.ndarray]:
    """Per stage of `feature_layers(model)`, the per-channel mean activation (N, C) float64 of `tiles`
    (uint8 NHWC, or the model's float view of them, as `predict.model_batch` takes), one forward pass per
    batch under the model's lock (`StageCapture`). For a single linear stage, its input (the penultimate
    features)."""
    from histo_core.predict import model_batch, model_device

    with model_lock(model), StageCapture(model) as cap, torch.inference_mode():
        model.eval()
        device = model_device(model)
        for s in range(0, len(tiles), batch_size):
            model(model_batch(tiles[s : s + batch_size], spec, device))
        return cap.take()


def input_layer_features(model: nn.Module, tiles_uint8: Any, spec: Any, batch_size: int = 256) -> list[np.ndarray]:
    """`layer_features` of uint8 tiles as given, without the stain normalisation of `spec`: the input-feature
    check of a model trained with stain normalisation (histo_core.ood), which measures what normalisation would
    hide (another organ mapped into the training stain)."""
    return layer_features(model, tiles_uint8, dataclasses.replace(spec, stain=None), batch_size)


def _fit_layer(feats: np.ndarray, labels: np.ndarray | None, stage: int) -> dict[str, Any]:
    """One stage's statistics: with `labels`, one mean per class and a covariance shared by the classes
    (Ledoit-Wolf, on the class-centred features); without, one mean and covariance. `scale`: the median
    score of the training tiles themselves."""
    from sklearn.covariance import LedoitWolf

    classes = np.unique(labels) if labels is not None else np.zeros(0)
    if labels is not None and len(classes) > 1 and all((labels == c).sum() > 0 for c in classes):
        means = np.stack([feats[labels == c].mean(0) for c in classes])
        centred = feats - means[np.searchsorted(classes, labels)]
        icov = LedoitWolf(assume_centered=True).fit(centred).precision_
        d2 = _sq_mahalanobis_nearest(feats, means, icov)
        return {
            "class_means": means.tolist(),
            "icov": icov.tolist(),
            "scale": float(max(np.median(d2), 1e-12)),
            "stage": stage,
        }
    fit = LedoitWolf().fit(feats)
    mean, icov = fit.location_, fit.precision_
    d2 = _sq_mahalanobis(feats, mean, icov)
    return {"mean": mean.tolist(), "icov": icov.tolist(), "scale": float(max(np.median(d2), 1e-12)), "stage": stage}


def _sq_mahalanobis(feats: np.ndarray, mean: np.ndarray, icov: np.ndarray) -> np.ndarray:
    d = feats - mean
    return np.maximum(np.einsum("ni,ij,nj->n", d, icov, d), 0.0)


def _sq_mahalanobis_nearest(feats: np.ndarray, means: np.ndarray, icov: np.ndarray) -> np.ndarray:
    """Per tile, the squared Mahalanobis distance to the nearest of the class `means` (shared `icov`)."""
    return np.min([_sq_mahalanobis(feats, m, icov) for m in means], axis=0)


def feature_stage(model: nn.Module) -> int:
    """The stage of `feature_layers(model)` the feature check measures: the first whose output is non-linear in
    the input (it is, or contains, an activation or a pooling), so that its per-channel means measure texture,
    not only the mean colour (a bare convolution's would). A ResNet-9: its first block (conv, batch norm,
    ReLU); a plain Sequential: its first activation or pooling."""
    nonlinear = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.MaxPool2d, nn.AvgPool2d)
    for k, m in enumerate(feature_layers(model)):
        if any(isinstance(x, nonlinear) for x in m.modules()):
            return k
    return 0


def fit_features(
    train_feats: list[np.ndarray], labels: np.ndarray | None = None, stage: int = 0
) -> list[dict[str, Any]]:
    """The statistics of the training tiles' `layer_features` the feature check compares a tile with: at the
    `stage` of `feature_stage(model)`, one mean per class (`labels`, the training labels) with a covariance
    shared by the classes, and the median score of the training tiles (a class-conditional Gaussian, as in
    Lee et al. 2018). Without labels, one mean for all tiles. A list (one entry per stage measured) with the
    stage's index.

    Why the first stage, per class: measured on the real samples (benchmarks/RESULTS.md, issue #24), the
    per-channel means of the later stages are shifted as much by a full-size in-domain tile shrunk to the
    model's size as by another organ (they measure what the tile looks like as one of the classes, and the
    classifier places another organ confidently in one), while the first stage's texture and colour responses,
    compared with the nearest class rather than the mix of all, keep held-out and full-size in-domain tiles
    close and put tiles of another organ or of no tissue far."""
    y = None if labels is None else np.asarray(labels).reshape(-1)
    f = np.asarray(train_feats[stage], np.float64)
    return [_fit_layer(f, None if y is None else y[: len(f)], stage)]


def _layer_stage(layers: list[dict[str, Any]], k: int) -> int:
    return int(layers[k].get("stage", k))


def feature_stages_match(layers: list[dict[str, Any]], feats: list[np.ndarray]) -> bool:
    """Whether `feats` (per stage, as `layer_features` gives them) has every stage the calibration measures:
    calibrations with stage indices need those stages; older ones (every stage, no index) need them all."""
    if not layers:
        return False
    if all("stage" in L for L in layers):
        return max(int(L["stage"]) for L in layers) < len(feats)
    return len(feats) == len(layers)


def feature_scores(layers: list[dict[str, Any]], feats: list[np.ndarray]) -> np.ndarray:
    """Per tile, the mean over the calibrated stages of its squared Mahalanobis distance to the training tiles
    (to the nearest class mean where the calibration has one per class), each stage in units of its median
    over the training tiles (about 1 for a typical training tile). `feats`: every stage of `layer_features`."""
    if not feature_stages_match(layers, feats):
        raise ValueError(f"{len(feats)} stages of features for a calibration of {len(layers)}")
    per = []
    for k, L in enumerate(layers):
        f = np.asarray(feats[_layer_stage(layers, k)], np.float64)
        icov = np.asarray(L["icov"])
        if "class_means" in L:
            d2 = _sq_mahalanobis_nearest(f, np.asarray(L["class_means"]), icov)
        else:
            d2 = _sq_mahalanobis(f, np.asarray(L["mean"]), icov)
        per.append(d2 / L["scale"])
    return np.mean(per, axis=0)


def calibrate_features(
    train_feats: list[np.ndarray],
    heldout_feats: list[np.ndarray] | None,
    split: str,
    *,
    heldout_scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    stage: int = 0,
) -> dict[str, Any]:
    """The feature check's calibration: statistics of the training tiles' `layer_features`, and the threshold
    at the FEATURE_QUANTILE of held-out in-domain tiles' scores (`heldout_feats`, or their `heldout_scores`
    already computed, e.g. out-of-fold by other models). Without held-out tiles there is no threshold and
    the check stays off. `labels`: the training tiles' labels; `stage`: `feature_stage(model)` (`fit_features`)."""
    layers = fit_features(train_feats, labels, stage)
    out: dict[str, Any] = {"layers": layers, "tiles": int(len(train_feats[0])) if train_feats else 0}
    if heldout_scores is None and heldout_feats is not None and len(heldout_feats) and len(heldout_feats[0]):
        heldout_scores = feature_scores(layers, heldout_feats)
    if heldout_scores is not None and len(heldout_scores):
        out.update(
            threshold=float(np.quantile(heldout_scores, FEATURE_QUANTILE)),
            split=split,
            heldout_tiles=int(len(heldout_scores)),
        )
    return out
