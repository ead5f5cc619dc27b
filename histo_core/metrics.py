"""Evaluation reports from predicted probabilities (sklearn underneath).

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
            from sklearn.metrics import roc_auc_score  # scikit-learn loads when metrics are computed

            out.append(float(roc_auc_score(positives, probs[:, k])))
    return out


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
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(labels == k, probs[:, k], drop_intermediate=True)
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
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    precision, recall, f1, support = (
        precision_recall_fscore_support(labels, preds, labels=class_ids, zero_division=0)
        if n
        else ([0.0] * k,) * 3 + ([0] * k,)
    )
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
        "confusion": confusion_matrix(labels, preds, labels=class_ids).astype(int).tolist()
        if n
        else [[0] * k for _ in range(k)],
        "roc": roc_curves(probs, labels, classes) if n else {},
        "reliability": rel,
    }
