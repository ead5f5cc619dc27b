"""One flat row per run, for the runs tables (app pages, `runs list`) and the comparison table."""

from __future__ import annotations

import os
import time
from typing import Any

from histo_core.liveness import ACTIVE_STATES, refresh_status
from histo_core.runs import RunDir, RunStatus, list_runs


def best_val(run: RunDir, rows: list[dict[str, Any]] | None = None) -> tuple[str, float | None, int | None]:
    """(monitored metric, its best value, epoch) over the finished epochs."""
    monitor = run.config().get("monitor", "val_loss")
    rows = run.metrics() if rows is None else rows
    scored = [(r[monitor], r.get("epoch")) for r in rows if isinstance(r.get(monitor), (int, float))]
    if not scored:
        return monitor, None, None
    pick = min if monitor == "val_loss" else max
    value, epoch = pick(scored, key=lambda t: t[0])
    return monitor, float(value), epoch


def run_summary(run: RunDir, status: RunStatus | None = None) -> dict[str, Any]:
    """One flat row describing a run, for tables and `runs list`."""
    status = status or refresh_status(run)
    config, dataset = run.config(), run.dataset()
    rows = run.metrics()
    monitor, best, best_epoch = best_val(run, rows)
    test = (run.results() or {}).get("test") or {}
    end = status.finished_at or (time.time() if status.state in ACTIVE_STATES else status.heartbeat)
    duration = (end - status.started_at) if (status.started_at and end) else None
    noise = float(config.get("noise") or 0.0)
    return {
        "id": run.id,
        "name": config.get("name") or "",
        "started_by": config.get("started_by") or "",
        "dataset": dataset.get("title") or dataset.get("name") or config.get("dataset", ""),
        "dataset_spec": config.get("dataset", ""),
        "synthetic": bool(dataset.get("synthetic")),
        "arch": config.get("arch", ""),
        "noise": noise,
        "noise_mode": config.get("noise_mode", "") if noise else "",
        "state": status.state,
        "progress": status.progress,
        "epoch": status.epoch or len(rows),
        "epochs": status.epochs or config.get("epochs") or 0,
        "monitor": monitor,
        "best_val": best,
        "best_epoch": best_epoch,
        "test_accuracy": test.get("accuracy"),
        "test_auc": test.get("auc"),
        "test_ece": test.get("ece"),
        "duration_s": duration,
        "created_at": status.created_at,
        "error": status.error,
        "path": str(run.path),
    }


def augmentation_label(augment: dict[str, Any]) -> str:
    """ "flip+rot90+rotate 15°+jitter b0.1" style short description of a config's augmentation."""
    parts = [k for k in ("flip", "rot90") if augment.get(k)]
    if augment.get("rotate"):
        parts.append(f"rotate {augment['rotate']:g}°")
    if augment.get("resized_crop"):
        parts.append(f"crop {augment.get('crop_scale', 0):g}")
    jitter = " ".join(
        f"{k[0]}{augment[k]:g}" for k in ("brightness", "contrast", "saturation", "hue") if augment.get(k)
    )
    if jitter:
        parts.append(f"jitter {jitter}")
    return "+".join(parts) or "none"


def comparison_row(run: RunDir, status: RunStatus | None = None) -> dict[str, Any]:
    """The settings and final metrics of a run: one row of a course-project style hyper-parameter table."""
    s = run_summary(run, status)
    c = run.config()
    results = run.results() or {}
    schedule = c.get("schedule", "")
    if schedule == "step":
        schedule = f"step {c.get('step_size')}x{c.get('gamma')}"
    loss = c.get("loss", "")
    if loss == "smooth":
        loss = f"smooth {c.get('label_smoothing')}"
    elif loss == "sce":
        loss = f"sce a{c.get('sce_alpha')} b{c.get('sce_beta')}"
    return {
        "run": s["name"] or s["id"],
        "dataset": s["dataset"] + (" (SYNTHETIC)" if s["synthetic"] and "SYNTHETIC" not in s["dataset"] else ""),
        "arch": s["arch"],
        "mode": c.get("mode", "") + (" +ImageNet" if c.get("pretrained") else ""),
        "optimizer": c.get("optimizer"),
        "lr": c.get("lr"),
        "weight decay": c.get("weight_decay"),
        "batch": c.get("batch_size"),
        "epochs": f"{results.get('epochs_run', s['epoch'])}/{c.get('epochs')}",
        "train splits": c.get("train_splits", "train"),
        "seed": c.get("seed"),
        "TTA": "yes" if c.get("tta") else "no",
        "schedule": schedule,
        "noise": f"{s['noise']:g} {s['noise_mode']}" if s["noise"] else "0",
        "augmentation": augmentation_label(c.get("augment") or {}),
        "loss": loss,
        "early stop": f"{c.get('monitor')} p{c.get('patience')}" if c.get("early_stopping") else "no",
        "state": s["state"],
        "best epoch": results.get("best_epoch", s["best_epoch"]),
        "test acc": s["test_accuracy"],
        "test AUC": s["test_auc"],
        "test ECE": s["test_ece"],
        "time (s)": round(s["duration_s"], 1) if s["duration_s"] is not None else None,
        "run id": s["id"],
    }


def summaries(runs_root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """run_summary of every run under the runs root, newest first."""
    return [run_summary(r) for r in list_runs(runs_root)]
