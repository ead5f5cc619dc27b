"""Evaluation reports from predicted probabilities, in numpy (scikit-learn's definitions, checked against it in
tests/test_metrics.py; not imported here, so a training process does not load its ~140 MB).

    report = classification_report(probs, labels, classes)

A report is a JSON-ready dict: n, loss, accuracy, auc (macro one-vs-rest over the classes present, or the
positive class's AUC for binary sets), ece, per-class precision/recall/f1/support/auc, the confusion
matrix, ROC curves (at most 200 points each) and a 15-bin reliability diagram. Classes absent from the
labels get auc None instead of crashing (small splits often miss a class).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ROC_MAX_POINTS = 200
RELIABILITY_BINS = 15
_EPS = 1e-12


def per_sample_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each sample, from probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return np.zeros(0, np.float32)
    return (-np.log(np.clip(probs[np.arange(len(labels)), labels], _EPS, 1.0))).astype(np.float32)


def class_aucs(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """One-vs-rest AUC per class; None where the class is absent (or is the only class present)."""
    out: list[float | None] = []
    for k in range(num_classes):
        positives = labels == k
        if positives.all() or not positives.any():
            out.append(None)
        else:
            fpr, tpr = binary_roc(positives, probs[:, k])
            out.append(float(np.trapezoid(tpr, fpr)))
    return out


def binary_roc(positives: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of one-vs-rest scores: sklearn.metrics.roc_curve(drop_intermediate=True) without thresholds.
    `positives` must hold both classes."""
    order = np.argsort(score, kind="mergesort")[::-1]
    s = np.asarray(score, np.float64)[order]
    y = np.asarray(positives, np.float64)[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(y) - 1]  # the last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = 1 + last - tps
    if len(fps) > 2:  # collinear points add nothing to the curve or its area
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1]


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class precision, recall, F1 and support from a confusion matrix; 0 where undefined (sklearn's
    zero_division=0)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(0), cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        denom = predicted + support  # 2 tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return precision, recall, f1, support


def summary_auc(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[float | None, str]:
    """(auc, kind): the positive class's AUC for binary sets, else the macro mean over classes present."""
    if num_classes == 2:
        return class_aucs(probs, labels, 2)[1], "positive-class"
    present = [a for a in class_aucs(probs, labels, num_classes) if a is not None]
    return (float(np.mean(present)) if present else None), "macro-ovr"


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = RELIABILITY_BINS) -> float:
    return reliability(probs, labels, bins)["ece"]


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Reliability diagram of the top-class confidence in `bins` equal-width bins, and the ECE."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    conf = probs.max(axis=1) if len(labels) else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels) if len(labels) else np.zeros(0, bool)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        mean_acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    n = max(1, int(count.sum()))
    ece = float(np.nansum(np.abs(mean_conf - mean_acc) * count) / n) if len(labels) else 0.0
    return {
        "bin_edges": edges.tolist(),
        "confidence": [None if np.isnan(v) else float(v) for v in mean_conf],
        "accuracy": [None if np.isnan(v) else float(v) for v in mean_acc],
        "count": count.astype(int).tolist(),
        "ece": ece,
    }


def _downsample(fpr: np.ndarray, tpr: np.ndarray, max_points: int = ROC_MAX_POINTS) -> tuple[list, list]:
    if len(fpr) <= max_points:
        return fpr.tolist(), tpr.tolist()
    keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))  # keeps both ends
    return fpr[keep].tolist(), tpr[keep].tolist()


def roc_curves(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One-vs-rest ROC per class present (the positive class only, for binary sets)."""
    out = {}
    ks = [1] if len(classes) == 2 else range(len(classes))
    aucs = class_aucs(probs, labels, len(classes))
    for k in ks:
        if aucs[k] is None:
            continue
        fpr, tpr = binary_roc(labels == k, probs[:, k])
        fpr_l, tpr_l = _downsample(fpr, tpr)
        out[str(classes[k])] = {"fpr": fpr_l, "tpr": tpr_l, "auc": aucs[k]}
    return out


def classification_report(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The full report of predicted class probabilities `probs` (N, K) against integer `labels` (N,)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    k = len(classes)
    if probs.ndim != 2 or probs.shape[1] != k or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs {probs.shape} do not match {labels.shape[0]} labels and {k} classes")
    n = int(labels.shape[0])
    preds = probs.argmax(axis=1) if n else np.zeros(0, np.int64)
    class_ids = list(range(k))
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels outside 0..{k - 1}")
    cm = confusion(labels, preds, k) if n else np.zeros((k, k), np.int64)
    precision, recall, f1, support = precision_recall_f1(cm)
    aucs = class_aucs(probs, labels, k) if n else [None] * k
    auc, auc_kind = summary_auc(probs, labels, k) if n else (None, "positive-class" if k == 2 else "macro-ovr")
    rel = reliability(probs, labels)
    ece = rel.pop("ece")
    return {
        "n": n,
        "loss": float(per_sample_loss(probs, labels).mean()) if n else None,
        "accuracy": float((preds == labels).mean()) if n else None,
        "auc": auc,
        "auc_kind": auc_kind,
        "ece": ece,
        "classes": [str(c) for c in classes],
        "per_class": [
            {
                "class": str(classes[i]),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "auc": aucs[i],
            }
            for i in class_ids
        ],
        "confusion": cm.astype(int).tolist(),
        "roc": roc_curves(probs, labels, classes) if n else {},
        "reliability": rel,
    }


MIN_MEASURABLE_TILES = 20  # below this an evaluation split's accuracy moves in steps of 5 points or more


def small_split_warnings(sizes: dict[str, int | None]) -> list[str]:
    """A sentence for each evaluation split (val, test) too small to measure anything, naming its size."""
    out = []
    for split in ("val", "test"):
        n = sizes.get(split)
        if n is not None and 0 < n < MIN_MEASURABLE_TILES:
            out.append(
                f"the {split} split has only {n} tile{'s' if n > 1 else ''}: its accuracy moves in steps of "
                f"{100 / n:.0f} points and measures next to nothing; give it at least {MIN_MEASURABLE_TILES} tiles"
            )
    return out
