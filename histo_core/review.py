"""The Review page's queries: misclassified tiles in a run's saved predictions (predictions_<split>.npz).

    preds = load_predictions(run, "test")
    rows = query(preds, true_class=2, sort="loss")            # positions of misclassified tiles, filtered/sorted
    shown, pages = paginate(rows, page=1, page_size=24)
    table(preds, shown)                                        # DataFrame: index, true, predicted, confidence, loss
    tiles = RunTiles(run).get("test", preds.indices[shown])   # the tiles themselves, from the run's dataset

Works on thousands of tiles: filters and sorts are numpy operations on the saved arrays; only the tiles
on the page shown are read from the dataset.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from histo_core.errors import HistoError
from histo_core.metrics import per_sample_loss
from histo_core.runs import RunDir

SORTS = ("loss", "confidence", "index")


@dataclass
class Predictions:
    split: str
    classes: list[str]
    probs: np.ndarray  # (N, K) float32
    labels: np.ndarray  # (N,) int64: the split's labels
    indices: np.ndarray  # (N,) int64: rows of the dataset split
    loss: np.ndarray  # (N,) per-sample cross-entropy

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted class."""
        return self.probs.max(axis=1)

    @property
    def p_true(self) -> np.ndarray:
        return self.probs[np.arange(len(self.labels)), self.labels]

    @property
    def wrong(self) -> np.ndarray:
        return self.pred != self.labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def prediction_splits(run: RunDir) -> list[str]:
    """Splits with saved predictions, test first."""
    return [s for s in ("test", "val", "train") if run.predictions_path(s).exists()]


def run_classes(run: RunDir) -> list[str]:
    classes = run.dataset().get("classes") or ((run.results() or {}).get("test") or {}).get("classes") or []
    return [str(c) for c in classes]


def load_predictions(run: RunDir, split: str = "test") -> Predictions:
    path = run.predictions_path(split)
    if not path.exists():
        have = prediction_splits(run)
        raise HistoError(
            f"{run.id}: no saved {split} predictions ({path.name}); "
            + (f"available: {', '.join(have)}" if have else "the run has not finished its evaluation")
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            probs = np.asarray(z["probs"], np.float32)
            labels = np.asarray(z["labels"], np.int64).reshape(-1)
            indices = np.asarray(z["indices"], np.int64).reshape(-1) if "indices" in z else np.arange(len(labels))
            loss = np.asarray(z["loss"], np.float64) if "loss" in z else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # truncated, not an npz, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HistoError(f"{path.name}: unreadable predictions file ({reason}); re-run the evaluation") from None
    if probs.ndim != 2 or len(probs) != len(labels) or len(indices) != len(labels):
        raise HistoError(
            f"{path}: inconsistent arrays (probs {probs.shape}, labels {labels.shape}, indices {indices.shape})"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise HistoError(f"{path.name}: labels outside 0..{probs.shape[1] - 1}; re-run the evaluation")
    if loss is None:
        loss = per_sample_loss(probs, labels)
    classes = run_classes(run)
    if len(classes) != probs.shape[1]:
        classes = [f"class {i}" for i in range(probs.shape[1])]
    return Predictions(split, classes, probs, labels, indices, np.asarray(loss, np.float64))


def query(
    preds: Predictions,
    true_class: int | None = None,
    pred_class: int | None = None,
    sort: str = "loss",
    descending: bool | None = None,
    errors_only: bool = True,
) -> np.ndarray:
    """Positions (into the predictions arrays) of the tiles matching the filters, in the requested order.

    sort: "loss" (worst first), "confidence" (most confident mistakes first) or "index" (dataset order).
    `descending` defaults to True for loss and confidence, False for index."""
    if sort not in SORTS:
        raise HistoError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    mask = preds.wrong.copy() if errors_only else np.ones(len(preds), bool)
    if true_class is not None:
        mask &= preds.labels == int(true_class)
    if pred_class is not None:
        mask &= preds.pred == int(pred_class)
    pos = np.flatnonzero(mask)
    key = {"loss": preds.loss, "confidence": preds.confidence, "index": preds.indices}[sort][pos]
    desc = (sort != "index") if descending is None else descending
    order = np.argsort(-key if desc else key, kind="stable")
    return pos[order]


def paginate(positions: np.ndarray, page: int, page_size: int) -> tuple[np.ndarray, int]:
    """(the positions on 1-based `page`, number of pages). A page past the end is clamped to the last."""
    page_size = max(1, int(page_size))
    pages = max(1, math.ceil(len(positions) / page_size))
    page = min(max(1, int(page)), pages)
    return positions[(page - 1) * page_size : page * page_size], pages


def table(preds: Predictions, positions: np.ndarray) -> pd.DataFrame:
    """One row per position: dataset index, true and predicted class, confidence, p(true), loss."""
    positions = np.asarray(positions, dtype=np.int64)
    cls = np.asarray(preds.classes, dtype=object)
    return pd.DataFrame(
        {
            "index": preds.indices[positions],
            "true": cls[preds.labels[positions]] if len(positions) else [],
            "predicted": cls[preds.pred[positions]] if len(positions) else [],
            "confidence": preds.confidence[positions].round(4),
            "p_true": preds.p_true[positions].round(4),
            "loss": preds.loss[positions].round(4),
        }
    )


def to_csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def confusion(preds: Predictions) -> np.ndarray:
    k = len(preds.classes)
    return np.bincount(preds.labels * k + preds.pred, minlength=k * k).reshape(k, k)


def confused_pairs(preds: Predictions, top: int | None = None) -> list[dict[str, Any]]:
    """Off-diagonal (true, predicted) cells with at least one tile, most frequent first."""
    cm = confusion(preds)
    cells = [(int(cm[t, p]), t, p) for t in range(len(cm)) for p in range(len(cm)) if t != p and cm[t, p] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    out = [
        {
            "true": preds.classes[t],
            "predicted": preds.classes[p],
            "count": n,
            "true_index": t,
            "pred_index": p,
            "share_of_true": n / max(1, int(cm[t].sum())),
        }
        for n, t, p in cells
    ]
    return out[:top] if top else out


def side_by_side(preds: Predictions) -> list[dict[str, Any]]:
    """Per true class with mistakes: the worst misclassified tile, the most confidently correct tile of its
    true class, and the most confidently correct tile of the class it was mistaken for (positions; None where
    no such tile exists)."""
    correct = ~preds.wrong
    out = []
    for t in range(len(preds.classes)):
        wrong_t = np.flatnonzero(preds.wrong & (preds.labels == t))
        if not len(wrong_t):
            continue
        worst = int(wrong_t[np.argmax(preds.loss[wrong_t])])
        mistaken_for = int(preds.pred[worst])
        out.append(
            {
                "true_index": t,
                "true": preds.classes[t],
                "mistaken_for": preds.classes[mistaken_for],
                "mistaken_for_index": mistaken_for,
                "misclassified": worst,
                "correct_true": _most_confident(preds, correct & (preds.labels == t)),
                "correct_mistaken": _most_confident(preds, correct & (preds.labels == mistaken_for)),
            }
        )
    return out


def _most_confident(preds: Predictions, mask: np.ndarray) -> int | None:
    pos = np.flatnonzero(mask)
    return int(pos[np.argmax(preds.confidence[pos])]) if len(pos) else None


class RunTiles:
    """The tiles of a run's dataset, reopened from config.json (dataset spec, size, as_rgb...)."""

    def __init__(self, run: RunDir):
        from histo_core.datasets import open_dataset

        cfg = run.config()
        spec = cfg.get("dataset")
        if not spec:
            raise HistoError(f"{run.id}: config.json names no dataset")
        self.run_id = run.id
        self.train_splits = str(cfg.get("train_splits") or "train")
        try:
            self.dataset = open_dataset(
                spec,
                size=cfg.get("size"),
                as_rgb=bool(cfg.get("as_rgb")),
                data_dir=cfg.get("data_dir"),
                seed=int(cfg.get("seed", 0)),
            )
        except HistoError as exc:
            raise HistoError(f"{run.id}: cannot reopen its dataset to show tiles: {exc}") from None

    def get(self, split: str, indices: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, C) tiles of `split` at dataset rows `indices`."""
        s = self.dataset.split(split)
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(s)):
            raise HistoError(
                f"{split}: saved predictions refer to row {int(idx.max())}, but the dataset now has "
                f"{len(s)} tiles; has the dataset changed since the run?"
            )
        return s.get(idx) if len(idx) else np.zeros((0, *s.tile_shape), np.uint8)

    def training(self, rows: np.ndarray) -> np.ndarray:
        """uint8 tiles of the run's training set at `rows` (label-error reports, noise records): the train split,
        or train then val for a run trained on train+val, whose rows run on past the train split."""
        if self.train_splits != "train+val" or "val" not in self.dataset.splits:
            return self.get("train", rows)
        from histo_core.datasets.concat import ConcatSplit

        joined = ConcatSplit("train+val", [self.dataset.split("train"), self.dataset.split("val")])
        idx = np.asarray(rows, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(joined)):
            raise HistoError(
                f"{self.run_id}: the label-error report refers to row {int(idx.max())}, but the training "
                f"set (train+val) now has {len(joined)} tiles; has the dataset changed since the run?"
            )
        return joined.get(idx) if len(idx) else np.zeros((0, *joined.tile_shape), np.uint8)
