"""Suspected label errors in a run's training set, confident-learning style.

    report = find_label_errors(run, folds=3, epochs=4, progress=print)    # trains K models; cached in the run
    report = load_label_errors(run)                                       # the cached result, or None
    report.ranked()[:20]                                                  # most suspicious first

1. Out-of-sample probabilities: the training tiles are split into K stratified folds; for each fold a model is
   trained with the run's own configuration (few epochs, no extra label noise) on the other K-1 folds
   (`train.fit_arrays`) and predicts the held-out fold (`train.predict_probs`). No tile is judged by a model
   that saw its label.
2. Ranking: by self-confidence, the out-of-sample probability of the given label (lowest first).
3. Flags (Northcutt et al., "Confident Learning", 2021): class j's threshold t_j is the mean probability of j
   over the tiles labelled j; a tile's confident class is its most probable class among those reaching their
   threshold. The confident joint (given label x confident class, counts), calibrated so each row sums to the
   tiles given that label, estimates the share of wrong labels: its off-diagonal mass (`estimate_noise`).
   That many tiles are flagged, the top of the ranking (prune by noise rate), so the flagged share tracks the
   estimated noise rate (flagging every tile whose confident class differs flagged half the tiles of a 20%-noise
   run and over a quarter of a clean one).

For a run trained with fixed label noise, the given labels are the noisy ones from noise.npz and which tiles
were flipped is known, so the report says how many flipped tiles were flagged (precision and recall).
Results are written atomically to label_errors.npz in the run directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histo_core.errors import HistoError
from histo_core.fsutil import savez_atomic
from histo_core.runs import RunDir

DEFAULT_FOLDS = 3
DEFAULT_EPOCHS = 5
DEFAULT_MAX_SAMPLES = 3000  # a random subset beyond this keeps CPU time to minutes

Progress = Callable[[float, str], None]


@dataclass
class LabelErrorReport:
    classes: list[str]
    indices: np.ndarray  # (N,) rows of the training split
    given: np.ndarray  # (N,) the labels trained on (noisy ones for a fixed-noise run)
    probs: np.ndarray  # (N, K) out-of-sample probabilities
    flagged: np.ndarray  # (N,) bool
    thresholds: np.ndarray  # (K,) per-class confidence thresholds
    flipped: np.ndarray | None = None  # (N,) bool: known flips of a fixed-noise run
    clean: np.ndarray | None = None  # (N,) the labels before noise, when known
    info: dict[str, Any] = field(default_factory=dict)  # folds, epochs, seconds, sampled, ...

    @property
    def self_confidence(self) -> np.ndarray:
        return self.probs[np.arange(len(self.given)), self.given]

    @property
    def suggested(self) -> np.ndarray:
        """The most probable class out of sample."""
        return self.probs.argmax(axis=1)

    def ranked(self) -> np.ndarray:
        """Positions, most suspicious (lowest self-confidence) first."""
        return np.argsort(self.self_confidence, kind="stable")

    def summary(self) -> dict[str, Any]:
        n, flagged = len(self.given), int(self.flagged.sum())
        rate, _ = estimate_noise(self.probs, self.given)
        out: dict[str, Any] = {
            "tiles": n,
            "flagged": flagged,
            "flagged_share": flagged / n if n else 0.0,
            "estimated_noise": rate,
            **self.info,
        }
        if self.flipped is not None:
            flips = int(self.flipped.sum())
            hit = int((self.flagged & self.flipped).sum())
            out.update(
                flipped=flips,
                flipped_flagged=hit,
                precision=hit / flagged if flagged else None,
                recall=hit / flips if flips else None,
                flipped_in_top=int(self.flipped[self.ranked()[:flips]].sum()) if flips else 0,
            )
        return out

    def table(self, positions: np.ndarray | None = None):
        import pandas as pd

        pos = self.ranked() if positions is None else np.asarray(positions, dtype=np.int64)
        cls = np.asarray(self.classes, dtype=object)
        df = pd.DataFrame(
            {
                "index": self.indices[pos],
                "given": cls[self.given[pos]],
                "suggested": cls[self.suggested[pos]],
                "p_given": self.self_confidence[pos].round(4),
                "p_suggested": self.probs[pos, self.suggested[pos]].round(4),
                "flagged": self.flagged[pos],
            }
        )
        if self.flipped is not None:
            df["flipped"] = self.flipped[pos]
            df["clean"] = cls[self.clean[pos]] if self.clean is not None else None
        return df


# -- the ranking (pure) --------------------------------------------------------------------------------------
def confident_thresholds(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """t_j = mean p_j over tiles labelled j (1.0, i.e. never reached, for a class with no tiles)."""
    k = probs.shape[1]
    return np.array([probs[given == j, j].mean() if (given == j).any() else 1.0 for j in range(k)])


def confident_joint(probs: np.ndarray, given: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(K, K) counts: tiles given label i whose confident class (the most probable among the classes reaching
    their threshold) is j; tiles with no confident class are not counted."""
    k = probs.shape[1]
    above = probs >= thresholds[None, :] - 1e-12
    confident_class = np.where(above, probs, -1.0).argmax(axis=1)
    has = above.any(axis=1)
    joint = np.zeros((k, k), np.int64)
    np.add.at(joint, (given[has], confident_class[has]), 1)
    return joint


def estimate_noise(probs: np.ndarray, given: np.ndarray) -> tuple[float, int]:
    """(estimated share of wrong labels, estimated number of them): the off-diagonal mass of the confident
    joint, each row calibrated to the number of tiles given that label."""
    probs = np.asarray(probs, dtype=np.float64)
    given = np.asarray(given, dtype=np.int64)
    n = len(given)
    if not n:
        return 0.0, 0
    joint = confident_joint(probs, given, confident_thresholds(probs, given)).astype(np.float64)
    counts = np.bincount(given, minlength=probs.shape[1]).astype(np.float64)
    rows = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(joint * counts[:, None], rows, out=np.zeros_like(joint), where=rows > 0)
    total = calibrated.sum()
    rate = float(1.0 - np.trace(calibrated) / total) if total > 0 else 0.0
    return rate, int(round(rate * n))


def flag_label_errors(probs: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flagged bool (N,), thresholds (K,)): the `estimate_noise` count of tiles, lowest self-confidence first
    (the ranking), among the tiles whose confident class is not their given label or that have none."""
    probs = np.asarray(probs, dtype=np.float64)
    given = np.asarray(given, dtype=np.int64)
    thresholds = confident_thresholds(probs, given)
    _, n_errors = estimate_noise(probs, given)
    above = probs >= thresholds[None, :] - 1e-12
    confident_class = np.where(above, probs, -1.0).argmax(axis=1)
    own = above.any(axis=1) & (confident_class == given)  # confidently its own label: never flagged
    self_conf = probs[np.arange(len(given)), given]
    order = [i for i in np.argsort(self_conf, kind="stable") if not own[i]]
    flagged = np.zeros(len(given), bool)
    flagged[np.asarray(order[:n_errors], dtype=np.int64)] = True
    return flagged, thresholds


# -- out-of-sample probabilities -----------------------------------------------------------------------------
def cross_val_probs(
    config,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    folds: int,
    epochs: int,
    seed: int = 0,
    progress: Progress | None = None,
) -> np.ndarray:
    """(N, K) probabilities, each tile predicted by a model trained on the other folds."""
    from sklearn.model_selection import StratifiedKFold

    from histo_core.training import fit_arrays, predict_probs

    counts = np.bincount(labels, minlength=len(classes))
    present = counts[counts > 0]
    usable_folds = int(min(folds, present.min())) if len(present) else 0
    if usable_folds < 2:
        raise HistoError(
            f"cross-validation needs at least 2 tiles of every labelled class; the smallest class has "
            f"{int(present.min()) if len(present) else 0}"
        )
    splitter = StratifiedKFold(n_splits=usable_folds, shuffle=True, random_state=seed)
    probs = np.zeros((len(labels), len(classes)), np.float32)
    for fold, (fit_idx, held_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        if progress:
            progress(
                fold / usable_folds,
                f"fold {fold + 1}/{usable_folds}: training on {len(fit_idx)} tiles, {epochs} epochs",
            )
        model, meta = fit_arrays(config, images[fit_idx], labels[fit_idx], classes=classes, epochs=epochs)
        probs[held_idx] = predict_probs(model, meta, images[held_idx])
    if progress:
        progress(1.0, "done")
    return probs


def _cv_config(run: RunDir, seed: int):
    from histo_core.config import TrainConfig

    cfg = TrainConfig.from_dict(run.config())
    # The given labels already carry the run's fixed noise; batch noise would add more. Evaluation extras are off.
    return cfg.replace(
        noise=0.0,
        noise_mode="batch",
        early_stopping=False,
        tta=False,
        seed=seed,
        max_train_samples=0,
        device=cfg.device,  # auto: the GPU of the task's slot when there is one
    )


def _training_tiles(run: RunDir, max_samples: int, seed: int) -> dict[str, Any]:
    """Images, given labels, dataset rows and (for fixed noise) flips and clean labels of the run's training set."""
    from histo_core.config import TrainConfig
    from histo_core.training import build_train_data, open_config_dataset

    cfg = TrainConfig.from_dict(run.config())
    try:
        ds = open_config_dataset(cfg)
    except HistoError as exc:
        raise HistoError(f"{run.id}: cannot reopen its dataset: {exc}") from None
    data = build_train_data(cfg, ds, "cpu", need_test=False)
    rows = np.asarray(data.train_indices, dtype=np.int64)
    given = data.train_labels.numpy().astype(np.int64)
    clean = np.asarray(data.clean_train_labels, dtype=np.int64)
    flipped = data.noise_flipped
    if run.noise_path.exists():  # what the run actually trained on, as recorded
        with np.load(run.noise_path, allow_pickle=False) as z:
            if len(z["noisy_labels"]) == len(given):
                given = np.asarray(z["noisy_labels"], np.int64)
                flipped = np.asarray(z["flipped"], bool)
    sampled = False
    pos = np.arange(len(given))
    if len(pos) > max_samples:
        pos = np.sort(np.random.default_rng([seed, 99]).choice(len(pos), max_samples, replace=False))
        sampled = True
    images = np.concatenate([data.train.gather(pos[s : s + 4096]).numpy() for s in range(0, len(pos), 4096)])
    return {
        "config": cfg,
        "classes": list(data.info.classes),
        "images": images,
        "given": given[pos],
        "rows": rows[pos],
        "clean": clean[pos],
        "flipped": None if flipped is None else np.asarray(flipped)[pos],
        "sampled": sampled,
        "total": len(given),
    }


# -- entry points ------------------------------------------------------------------------------------------------
def find_label_errors(
    run: RunDir,
    folds: int = DEFAULT_FOLDS,
    epochs: int | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
    progress: Progress | None = None,
) -> LabelErrorReport:
    """Compute (and cache in the run directory) the suspected label errors of the run's training set."""
    if folds < 2:
        raise HistoError(f"folds must be at least 2, got {folds}")
    started = time.time()
    if progress:
        progress(0.0, "reading the training tiles")
    data = _training_tiles(run, max_samples, seed)
    cfg = _cv_config(run, seed)
    epochs = int(epochs or min(cfg.epochs, DEFAULT_EPOCHS))
    probs = cross_val_probs(cfg, data["images"], data["given"], data["classes"], folds, epochs, seed, progress)
    flagged, thresholds = flag_label_errors(probs, data["given"])
    info = {
        "folds": folds,
        "epochs": epochs,
        "arch": cfg.arch,
        "seconds": round(time.time() - started, 1),
        "sampled": data["sampled"],
        "training_tiles": data["total"],
        "computed_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    report = LabelErrorReport(
        classes=data["classes"],
        indices=data["rows"],
        given=data["given"],
        probs=probs,
        flagged=flagged,
        thresholds=thresholds,
        flipped=data["flipped"],
        clean=data["clean"] if data["flipped"] is not None else None,
        info=info,
    )
    save_label_errors(run, report)
    return report


def save_label_errors(run: RunDir, report: LabelErrorReport) -> None:
    arrays = {
        "classes": np.asarray(report.classes, dtype=str),
        "indices": report.indices,
        "given": report.given,
        "probs": report.probs.astype(np.float32),
        "flagged": report.flagged,
        "thresholds": report.thresholds,
        "info": np.asarray(json.dumps(report.info)),
    }
    if report.flipped is not None:
        arrays["flipped"] = report.flipped
    if report.clean is not None:
        arrays["clean"] = report.clean
    savez_atomic(run.label_errors_path, **arrays)


def load_label_errors(run: RunDir) -> LabelErrorReport | None:
    """The cached report, or None when not computed (or unreadable: compute it again)."""
    path = run.label_errors_path
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return LabelErrorReport(
                classes=[str(c) for c in z["classes"]],
                indices=z["indices"],
                given=z["given"],
                probs=z["probs"],
                flagged=z["flagged"],
                thresholds=z["thresholds"],
                flipped=z["flipped"] if "flipped" in z else None,
                clean=z["clean"] if "clean" in z else None,
                info=json.loads(str(z["info"])),
            )
    except (OSError, ValueError, KeyError):
        return None


def task_main(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    """The `label-errors` process kind (histo_core.kinds): params run (id), runs_root, folds, epochs."""
    from histo_core.runs import run_by_id

    run = run_by_id(params["run"], params.get("runs_root"))
    report = find_label_errors(run, folds=int(params["folds"]), epochs=int(params["epochs"]), progress=progress)
    return {"run": run.id, "summary": report.summary()}
