"""A study's tables beyond the summary (histo_core.study): per-class accuracy under noise, label-error detection
quality against the injected flips, and every table as CSV. Pure functions of the rows `study_results` builds."""

from __future__ import annotations

from typing import Any

import numpy as np

from histo_core.errors import HistoError
from histo_core.runs import RunDir

AS_LABELLED, WITH_CORRECTIONS = "as labelled", "with corrections"


def per_class_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Which classes suffer: per architecture x method x labels x noise level x class, the mean (and sd) over
    seeds of the class's test accuracy (recall: the share of its test tiles classified as it)."""
    groups: dict[tuple[str, str, str, float, str], list[float]] = {}
    for r in rows:
        for cls, acc in (r.get("per_class") or {}).items():
            key = (r["arch"], r["method"], r.get("labels", AS_LABELLED), r["noise"], cls)
            groups.setdefault(key, []).append(float(acc))
    return [
        {
            "arch": arch,
            "method": method,
            "labels": labels,
            "noise": noise,
            "class": cls,
            "seeds": len(v),
            "accuracy_mean": float(np.mean(v)),
            "accuracy_sd": float(np.std(v, ddof=1)) if len(v) > 1 else None,
        }
        for (arch, method, labels, noise, cls), v in sorted(groups.items())
    ]


def detection_quality(run: RunDir) -> dict[str, Any] | None:
    """How well the run's label-error search (label_errors.npz, --find-errors or the Review page) found the
    labels its fixed noise flipped: precision and recall of the flagged set, average precision of the ranking."""
    from histo_core.label_errors import load_label_errors

    report = load_label_errors(run)
    if report is None or report.flipped is None or not report.flipped.any():
        return None
    from sklearn.metrics import average_precision_score

    s = report.summary()
    return {
        "flipped": s["flipped"],
        "flagged": s["flagged"],
        "precision": s["precision"],
        "recall": s["recall"],
        "average_precision": float(average_precision_score(report.flipped, -report.self_confidence)),
    }


def detection_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Label-error detection quality against the injected flips, per method x labels x noise level (mean over the
    seeds with a search)."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("detection"):
            groups.setdefault((r["method"], r.get("labels", AS_LABELLED), r["noise"]), []).append(r["detection"])
    out = []
    for (method, labels, noise), ds in sorted(groups.items()):
        d: dict[str, Any] = {"method": method, "labels": labels, "noise": noise, "seeds": len(ds)}
        for k in ("flipped", "flagged", "precision", "recall", "average_precision"):
            vals = [x[k] for x in ds if x[k] is not None]
            d[k] = float(np.mean(vals)) if vals else None
        out.append(d)
    return out


CSV_TABLES = ("summary", "per_class", "detection")


def results_csv(results: dict[str, Any], table: str = "summary") -> str:
    """One of the results' tables as CSV text: "summary" (one row per architecture x method x noise level x
    labels), "per_class" (per class as well) or "detection" (label-error detection per method x noise level)."""
    import csv
    import io

    if table not in CSV_TABLES:
        raise HistoError(f"table must be one of {', '.join(CSV_TABLES)}, got {table!r}")
    buf = io.StringIO()
    rows = results[table]
    cols = {
        "summary": [
            "arch",
            "method",
            "noise",
            "seeds",
            "accuracy_mean",
            "accuracy_sd",
            "accuracy_ci_low",
            "accuracy_ci_high",
            "auc_mean",
            "macro_f1_mean",
            "val_noisy_acc_mean",
            "labels",
        ],
        "per_class": ["arch", "method", "labels", "noise", "class", "seeds", "accuracy_mean", "accuracy_sd"],
        "detection": ["method", "labels", "noise", "seeds", "flipped", "flagged", "precision", "recall"]
        + ["average_precision"],
    }[table]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()
