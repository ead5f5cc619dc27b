"""Embeddings of a model over a dataset: penultimate-layer features of every tile, and a 2-D map of them.

    store = embed(target_for("runs/RUN"), progress=print)        # features of every train/val/test tile
    store = load_store(target_for("runs/RUN").out_dir)            # what was saved, or None
    store.features("train")                                       # (N, D) float16, memory-mapped
    store.points()                                                # DataFrame: split, row, x, y, label, pred, ...

Where they are kept (`EmbedTarget.out_dir`):
  - a run's own model on the run's own dataset: `runs/<id>/embeddings/` (saved at the end of training, or
    on demand with `python -m histo_core embed RUN`);
  - any model (a run or a weights/ export, used frozen) on another dataset, or an export on its training
    dataset: `<data dir>/cache/embeddings/<key>/`, keyed by the model file (path, mtime, size) and the dataset.

Files (written into a temporary folder and renamed into place, so a reader never sees half a set):
  features_<split>.npy   (N, D) float16: the input of the classifier's last linear layer, written a batch at a
                         time into a memory map (memory stays bounded by one batch whatever N is)
  outputs_<split>.npz    probs (N, K) float32 (the model's softmax) and labels (N,) (the dataset's labels)
  projection.npz         xy (M, 2) float32, split (M,) index into meta["splits"], row (M,) dataset row
  meta.json              model, dataset, classes, dims, counts, the projection's method and sampling rule

Projection: PCA to at most 50 dimensions, then scikit-learn's t-SNE (Barnes-Hut). Above MAX_POINTS tiles a
seeded random sample of MAX_POINTS is projected, each split sampled in proportion to its size (`sample_rule`
says so on the page); every tile keeps its features and prediction, only the map is sampled.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from histo_core.embed_target import EmbedTarget, target_for
from histo_core.errors import HistoError
from histo_core.fsutil import read_json, write_json_atomic
from histo_core.model_lock import model_lock
from histo_core.predict import InputSpec, eval_batch_size, iter_predictions, predict_tiles

SPLITS = ("train", "val", "test")
MAX_POINTS = 20_000  # t-SNE runs on at most this many points (a seeded, per-split proportional sample)
PCA_DIMS = 50
FORMAT = 1

Progress = Callable[[float, str], None]


# -- features of tiles ----------------------------------------------------------------------------------
def tile_features(
    model: nn.Module, meta, tiles_uint8: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) float32 and probabilities (N, K) of uint8 tiles (N, S, S, C) at the model's input size
    (`meta`: an inference.ModelMeta). Holds the model's lock, like every other forward pass."""

    spec, k = InputSpec.of(meta), meta.num_classes
    with model_lock(model):
        probs, feats = predict_tiles(
            model, np.asarray(tiles_uint8), spec, features=True, batch_size=batch_size, num_classes=k
        )
    return feats, probs


# -- the saved set ---------------------------------------------------------------------------------------
class EmbeddingStore:
    """Read access to a saved embedding folder."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    @property
    def classes(self) -> list[str]:  # the dataset's classes (true labels)
        return list(self.meta["classes"])

    @property
    def model_classes(self) -> list[str]:  # the model's classes (predictions)
        return list(self.meta["model_classes"])

    @property
    def same_classes(self) -> bool:
        return self.classes == self.model_classes

    def features(self, split: str) -> np.ndarray:
        self._check(split)
        return np.load(self.path / f"features_{split}.npy", mmap_mode="r")

    def outputs(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(probs (N, K) float32, labels (N,) int64)."""
        self._check(split)
        with np.load(self.path / f"outputs_{split}.npz", allow_pickle=False) as z:
            return np.asarray(z["probs"], np.float32), np.asarray(z["labels"], np.int64)

    def projection(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xy (M, 2), split index (M,), row (M,))."""
        with np.load(self.path / "projection.npz", allow_pickle=False) as z:
            return np.asarray(z["xy"], np.float32), np.asarray(z["split"], np.int64), np.asarray(z["row"], np.int64)

    def _check(self, split: str) -> None:
        if split not in self.meta["splits"]:
            raise HistoError(f"split {split!r} was not embedded; available: {', '.join(self.meta['splits'])}")

    def points(self, label_errors=None) -> Any:
        """One row per projected tile: split, row, x, y, true, predicted, confidence, correct (and
        label_error: True/False for training tiles the label-error search checked, else None)."""
        import pandas as pd

        xy, split_idx, rows = self.projection()
        frames = []
        for si, split in enumerate(self.splits):
            sel = split_idx == si
            if not sel.any():
                continue
            probs, labels = self.outputs(split)
            r = rows[sel]
            pred = probs[r].argmax(1)
            frames.append(
                pd.DataFrame(
                    {
                        "split": split,
                        "row": r,
                        "x": xy[sel, 0],
                        "y": xy[sel, 1],
                        "true": np.asarray(self.classes, dtype=object)[labels[r]],
                        "predicted": np.asarray(self.model_classes, dtype=object)[pred],
                        "confidence": probs[r].max(1).round(4),
                        "correct": (pred == labels[r]) if self.same_classes else None,
                    }
                )
            )
        df = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=["split", "row", "x", "y", "true", "predicted", "confidence", "correct"])
        )
        df["label_error"] = None
        if label_errors is not None:
            flags = label_error_flags(label_errors, self.meta, self.meta.get("train_splits", "train"))
            for split, mapping in flags.items():
                sel = (df["split"] == split).to_numpy()
                df.loc[sel, "label_error"] = [mapping.get(int(r)) for r in df.loc[sel, "row"]]
        return df

    def reference(self, splits: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features (N, D) float16 memmap or concatenation, split index (N,), row (N,)) of the reference
        tiles for similarity search (default: the splits the model was trained on)."""
        use = [s for s in (splits or self.meta.get("reference_splits") or ["train"]) if s in self.splits]
        if not use:
            raise HistoError(f"{self.path}: none of the training splits were embedded (have {', '.join(self.splits)})")
        feats = [self.features(s) for s in use]
        split_idx = np.concatenate([np.full(len(f), self.splits.index(s)) for s, f in zip(use, feats)])
        rows = np.concatenate([np.arange(len(f)) for f in feats])
        return (feats[0] if len(feats) == 1 else np.concatenate(feats)), split_idx, rows

    def reference_labels(self, splits: Sequence[str] | None = None) -> np.ndarray:
        use = [s for s in (splits or self.meta.get("reference_splits") or ["train"]) if s in self.splits]
        return np.concatenate([self.outputs(s)[1] for s in use])


def label_error_flags(report, meta: dict[str, Any], train_splits: str) -> dict[str, dict[int, bool]]:
    """{split: {row: flagged}} for the tiles a label-error report checked. Its indices are rows of the
    training view: the train split, followed by val for a run trained on train+val."""
    n_train = int(meta["counts"].get("train", 0))
    out: dict[str, dict[int, bool]] = {"train": {}, "val": {}}
    for idx, flag in zip(np.asarray(report.indices, np.int64), np.asarray(report.flagged, bool)):
        if idx < n_train:
            out["train"][int(idx)] = bool(flag)
        elif train_splits == "train+val":
            out["val"][int(idx - n_train)] = bool(flag)
    return out


def load_store(out_dir: str | os.PathLike) -> EmbeddingStore | None:
    """The saved embeddings in `out_dir`, or None when absent or from an older format."""
    path = Path(out_dir)
    meta = read_json(path / "meta.json")
    if not meta or meta.get("format") != FORMAT or not (path / "projection.npz").exists():
        return None
    return EmbeddingStore(path, meta)


def is_current(store: EmbeddingStore | None, target: EmbedTarget) -> bool:
    """Saved from this very checkpoint file (a retrained or re-exported model needs new embeddings)."""
    if store is None:
        return False
    try:
        st = target.model_path.stat()
    except OSError:
        return False
    return store.meta.get("model_mtime_ns") == st.st_mtime_ns and store.meta.get("model_size") == st.st_size


# -- computing -------------------------------------------------------------------------------------------
def sample_rule(total: int, max_points: int = MAX_POINTS) -> str:
    if total <= max_points:
        return f"all {total:,} tiles"
    return (
        f"a random {max_points:,} of {total:,} tiles (seed 0, each split sampled in proportion to its size); "
        "t-SNE is quadratic-ish in memory and time beyond that"
    )


def sample_points(counts: dict[str, int], max_points: int = MAX_POINTS, seed: int = 0) -> dict[str, np.ndarray]:
    """Sorted rows per split to project: all of them up to max_points in total, else a proportional sample."""
    total = sum(counts.values())
    out = {}
    for i, (split, n) in enumerate(counts.items()):
        if total <= max_points:
            out[split] = np.arange(n)
            continue
        k = min(n, int(round(max_points * n / total)))
        out[split] = np.sort(np.random.default_rng([seed, i, 31337]).choice(n, k, replace=False))
    return out


def project(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(xy (N, 2) float32, method) for float features: PCA to <= 50 dims, then t-SNE (PCA alone below 5 points)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, np.float32)
    n = len(x)
    if n == 0:
        return np.zeros((0, 2), np.float32), "none"
    if n < 5 or x.shape[1] < 2:
        xy = np.zeros((n, 2), np.float32)
        if n >= 2 and x.shape[1] >= 1:
            dims = min(2, x.shape[1], n)
            xy[:, :dims] = PCA(n_components=dims, random_state=seed).fit_transform(x)
        return xy, "PCA (too few tiles for t-SNE)"
    dims = min(PCA_DIMS, x.shape[1], n - 1)
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(x) if dims < x.shape[1] else x
    perplexity = float(min(30.0, (n - 1) / 3))
    xy = TSNE(
        n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed, n_jobs=1
    ).fit_transform(reduced)
    return xy.astype(np.float32), f"PCA ({dims} dims) + t-SNE (perplexity {perplexity:.0f})"


def embed(
    target: EmbedTarget,
    splits: Sequence[str] | None = None,
    *,
    model: nn.Module | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    max_points: int = MAX_POINTS,
) -> EmbeddingStore:
    """Compute and save the features of every tile of `splits` (default: all the dataset has) and their map.

    `model`: an already-loaded model in eval mode (the trainer's, at the end of training); default: load
    target.model_ref on the CPU."""
    from histo_core.checkpoint import load_checkpoint
    from histo_core.datasets import open_dataset
    from histo_core.inference import ModelMeta, load_model
    from histo_core.pipeline import TileSource

    started = time.time()
    say = progress or (lambda f, m: None)
    if model is None:
        loaded = load_model(target.model_ref)
        model, meta = loaded.model, loaded.meta
    else:
        meta = ModelMeta.from_checkpoint(load_checkpoint(target.model_path))
    kw = dict(target.open_kwargs)
    if kw.get("as_rgb") is None:
        kw["as_rgb"] = meta.in_channels == 3
    try:
        ds = open_dataset(target.dataset, **kw)
    except HistoError as exc:
        raise HistoError(f"{target.dataset}: cannot open the dataset to embed: {exc}") from None
    if ds.info.channels != meta.in_channels:
        raise HistoError(
            f"{target.dataset}: tiles have {ds.info.channels} channel(s), the model takes {meta.in_channels}"
        )
    have = [s for s in SPLITS if s in ds.splits and len(ds.splits[s])]
    wanted = list(splits) if splits else have
    bad = [s for s in wanted if s not in have]
    if bad:
        raise HistoError(f"--split {bad[0]}: the dataset has no such split; it has {', '.join(have)}")
    device = next(model.parameters()).device
    batch = batch_size or eval_batch_size(meta.input_size, device)
    out_dir = Path(target.out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise HistoError(f"{out_dir.parent}: cannot write embeddings there ({exc.strerror or exc})") from None
    try:
        counts = {s: len(ds.splits[s]) for s in wanted}
        total = sum(counts.values())
        done = 0
        dims = None
        was_training = model.training  # iter_predictions puts it in eval mode

        spec = InputSpec.of(meta)  # tiles of another size are resized: a frozen model embeds any dataset
        for split in wanted:
            source = TileSource(ds.splits[split], "cpu", resident_max_bytes=0)  # streamed, one batch in memory
            n = counts[split]
            probs = np.zeros((n, meta.num_classes), np.float32)
            feats = None
            with model_lock(model):
                for start, p, f in iter_predictions(model, source, spec, features=True, batch_size=batch):
                    assert f is not None  # features=True
                    if feats is None:
                        dims = f.shape[1]
                        feats = np.lib.format.open_memmap(
                            tmp / f"features_{split}.npy", mode="w+", dtype=np.float16, shape=(n, dims)
                        )
                    feats[start : start + len(f)] = f.astype(np.float16)
                    probs[start : start + len(f)] = p
                    done += len(f)
                    say(0.8 * done / max(1, total), f"{split}: {start + len(f):,}/{n:,} tiles")
            if feats is not None:
                feats.flush()
                del feats
            np.savez(tmp / f"outputs_{split}.npz", probs=probs, labels=source.labels.numpy())
        if was_training:
            model.train()
        rows = sample_points(counts, max_points)
        parts = []
        for split in wanted:
            mm = np.load(tmp / f"features_{split}.npy", mmap_mode="r")
            parts.append(np.asarray(mm[rows[split]], np.float32))
            del mm
        m = sum(len(r) for r in rows.values())
        say(0.82, f"projecting {m:,} tiles (PCA + t-SNE)")
        xy, method = project(np.concatenate(parts) if parts else np.zeros((0, dims or 1), np.float32))
        del parts
        np.savez(
            tmp / "projection.npz",
            xy=xy,
            split=np.concatenate([np.full(len(rows[s]), i) for i, s in enumerate(wanted)]).astype(np.int64),
            row=np.concatenate([rows[s] for s in wanted]).astype(np.int64),
        )
        st = target.model_path.stat()
        meta_doc = {
            "format": FORMAT,
            "model": target.label,
            "model_path": str(target.model_path),
            "model_mtime_ns": st.st_mtime_ns,
            "model_size": st.st_size,
            "arch": meta.arch,
            "in_channels": meta.in_channels,
            "dataset": target.dataset,
            "dataset_title": ds.info.title,
            "synthetic": bool(ds.info.synthetic),
            "classes": list(ds.info.classes),
            "model_classes": list(meta.classes),
            "splits": wanted,
            "counts": counts,
            "dims": dims,
            "dtype": "float16",
            "projection": method,
            "projected": m,
            "sample_rule": sample_rule(total, max_points),
            "own_dataset": target.run_path is not None,
            "train_splits": target.train_splits,
            "reference_splits": target.reference_splits,
            "seconds": round(time.time() - started, 1),
            "computed_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_json_atomic(tmp / "meta.json", meta_doc)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(1.0, f"saved {total:,} tiles' features ({dims} dims) to {out_dir}")
    return EmbeddingStore(out_dir, meta_doc)


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


END_OF_TRAINING_MAX_POINTS = 5_000


def embed_at_end_of_training(run, model: nn.Module, log: Callable[[str], None]) -> None:
    """The trainer's hook: embed the run's dataset with its final model. Never fails the run: a problem is
    logged, and `python -m histo_core embed RUN` can redo it later."""
    if os.environ.get("HISTO_EMBED_AFTER_TRAINING", "1") == "0":
        return
    try:
        target = target_for(str(run.path))
        # the map drawn inside the training process is capped lower than on demand (t-SNE of 20,000 points
        # takes minutes on 2 cores); `python -m histo_core embed RUN` redraws it with up to MAX_POINTS
        store = embed(target, model=model, max_points=min(MAX_POINTS, END_OF_TRAINING_MAX_POINTS))
        log(
            f"embeddings: {sum(store.meta['counts'].values()):,} tiles, {store.meta['dims']} dims, "
            f"{store.meta['projection']}, {store.meta['seconds']} s"
        )
    except Exception as exc:  # noqa: BLE001 - an optional extra must never fail a finished training run
        log(f"embeddings not saved ({type(exc).__name__}: {exc}); run `python -m histo_core embed {run.id}`")


__all__ = [
    "EmbedTarget",
    "EmbeddingStore",
    "target_for",
    "embed",
    "load_store",
    "is_current",
    "tile_features",
    "sample_points",
    "sample_rule",
    "project",
    "label_error_flags",
    "embed_at_end_of_training",
    "MAX_POINTS",
]
