"""Embeddings of a model over a dataset: penultimate-layer features of every tile, and a 2-D map of them.

    store = embed(target_for("runs/RUN"), progress=print)        # features of every train/val/test tile
    store = load_store(target_for("runs/RUN").out_dir)            # what was saved, or None
    store.features("train")                                       # (N, D) float16, memory-mapped
    store.points()                                                # DataFrame: split, row, x, y, label, pred, ...

Where they are kept (`EmbedTarget.out_dir`): a run's own model on its own dataset in `runs/<id>/embeddings/`
(end of training, or `python -m histo_core embed RUN`); any other model and dataset pair in
`<data dir>/cache/embeddings/<key>/`, keyed by the model file (path, mtime, size) and the dataset.

Files (written into a temporary folder and renamed into place, so a reader never sees half a set):
  features_<split>.npy   (N, D) float16: the classifier's last linear layer's input, memory-mapped, by batch
  outputs_<split>.npz    probs (N, K) float32 (the model's softmax) and labels (N,) (the dataset's labels)
  projection.npz         xy (M, 2) float32, split (M,) index into meta["splits"], row (M,) dataset row
  meta.json              model, dataset, classes, dims, counts, the projection's method and sampling rule
                         (PCA to at most 50 dimensions, then t-SNE of at most MAX_POINTS tiles: projection.py)
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
from histo_core.projection import MAX_POINTS, project, sample_points, sample_rule

SPLITS = ("train", "val", "test")
EMBED_BLOCK = 8192  # rows a rank computes per round (what it holds, and rank 0 receives from each, at once)
FORMAT = 1

Progress = Callable[[float, str], None]


# -- features of tiles ----------------------------------------------------------------------------------
def tile_features(
    model: nn.Module, meta, tiles_uint8: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) float32 and probabilities (N, K) of uint8 tiles (N, S, S, C) at the model's input size
    (`meta`: an model_meta.ModelMeta). Holds the model's lock, like every other forward pass."""

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
    store = _embed(target, splits, model=model, batch_size=batch_size, progress=progress, max_points=max_points)
    assert store is not None  # one process: rank 0
    return store


def _embed(
    target: EmbedTarget,
    splits: Sequence[str] | None = None,
    *,
    model: nn.Module | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    max_points: int = MAX_POINTS,
    rank: int = 0,
    world: int = 1,
    dataset: Any = None,
) -> EmbeddingStore | None:
    """`embed`, also under torchrun (`world` > 1, `model` given, the same weights on every rank), where every
    rank calls it: each computes the features of its contiguous share of each split
    (`pipeline.shard_range`), EMBED_BLOCK rows a round, rank 0 gathers the rounds' blocks in rank order, draws
    the map and alone writes the files (it needs the run folder; the others return None). A failure on any rank
    before the features raises the same HistoError on every rank; one while computing them, on rank 0."""
    from histo_core.checkpoint import load_checkpoint
    from histo_core.datasets import open_dataset
    from histo_core.distributed import broadcast, gather_to_first
    from histo_core.model_cache import load_model
    from histo_core.model_meta import ModelMeta
    from histo_core.pipeline import TileSource, shard_range

    started = time.time()
    say = progress or (lambda f, m: None)
    if model is None:
        loaded = load_model(target.model_ref)
        model, meta = loaded.model, loaded.meta
    else:  # rank 0 reads the checkpoint (the other ranks' nodes may not see the run folder)
        read = _on_every_rank(
            lambda: ModelMeta.from_checkpoint(load_checkpoint(target.model_path)) if rank == 0 else None, rank, world
        )
        meta = broadcast(read, world)

    def open_splits() -> tuple[Any, list[str]]:
        kw = dict(target.open_kwargs)
        if kw.get("as_rgb") is None:
            kw["as_rgb"] = meta.in_channels == 3
        try:  # the training process's own dataset (opened with the same options) is not opened again
            ds = dataset if dataset is not None else open_dataset(target.dataset, **kw)
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
        return ds, wanted

    ds, wanted = _on_every_rank(open_splits, rank, world)
    device = next(model.parameters()).device
    batch = batch_size or eval_batch_size(meta.input_size, device)
    block = max(batch, EMBED_BLOCK // batch * batch)
    out_dir = Path(target.out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"

    def make_tmp() -> None:
        if rank != 0:
            return
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise HistoError(f"{out_dir.parent}: cannot write embeddings there ({exc.strerror or exc})") from None

    _on_every_rank(make_tmp, rank, world)
    try:
        counts = {s: len(ds.splits[s]) for s in wanted}
        total = sum(counts.values())
        done = 0
        dims = None
        failed: str | None = None  # this rank's error while computing (it still takes part in every gather)
        was_training = model.training  # iter_predictions puts it in eval mode
        spec = InputSpec.of(meta)  # tiles of another size are resized: a frozen model embeds any dataset
        for split in wanted:
            source = TileSource(ds.splits[split], "cpu", resident_max_bytes=0)  # streamed, one batch in memory
            n = counts[split]
            first, stop = shard_range(n, rank, world)
            probs = np.zeros((n, meta.num_classes), np.float32) if rank == 0 else None
            feats = None
            for offset in range(0, -(-n // max(1, world)), block):  # the same number of rounds on every rank
                rows = (min(stop, first + offset), min(stop, first + offset + block))

                def tick(k: int, before: int = done, at: int = offset, split: str = split, n: int = n) -> None:
                    if rank == 0:  # rank 0's own rows done in this round, times the ranks: an estimate of all
                        est = min(total, before + world * k)
                        say(0.8 * est / max(1, total), f"{split}: {min(n, world * (at + k)):,}/{n:,} tiles")

                part: Any = failed
                if failed is None:
                    try:
                        part = _features_block(model, source, spec, batch, rows, tick)
                    except Exception as exc:  # noqa: BLE001 - reported by rank 0 after the last round
                        if world <= 1:
                            raise
                        part = failed = f"rank {rank}: {type(exc).__name__}: {exc}"
                parts = gather_to_first(part, world)
                for got in parts or []:
                    if isinstance(got, str):
                        failed = failed or got
                    elif got is not None and failed is None:
                        at, f, p = got
                        if feats is None:
                            dims = f.shape[1]
                            feats = np.lib.format.open_memmap(
                                tmp / f"features_{split}.npy", mode="w+", dtype=np.float16, shape=(n, dims)
                            )
                        feats[at : at + len(f)] = f
                        probs[at : at + len(f)] = p  # type: ignore[index]
                        done += len(f)
            if feats is not None:
                feats.flush()
                del feats
            if probs is not None and failed is None:  # rank 0
                np.savez(tmp / f"outputs_{split}.npz", probs=probs, labels=source.labels.numpy())
        if was_training:
            model.train()
        if rank != 0:
            return None
        if failed is not None:
            raise HistoError(f"computing the features failed on {failed}")
        rows_of = sample_points(counts, max_points)
        parts_xy = []
        for split in wanted:
            mm = np.load(tmp / f"features_{split}.npy", mmap_mode="r")
            parts_xy.append(np.asarray(mm[rows_of[split]], np.float32))
            del mm
        m = sum(len(r) for r in rows_of.values())
        say(0.82, f"projecting {m:,} tiles (PCA + t-SNE)")
        xy, method = project(np.concatenate(parts_xy) if parts_xy else np.zeros((0, dims or 1), np.float32))
        del parts_xy
        np.savez(
            tmp / "projection.npz",
            xy=xy,
            split=np.concatenate([np.full(len(rows_of[s]), i) for i, s in enumerate(wanted)]).astype(np.int64),
            row=np.concatenate([rows_of[s] for s in wanted]).astype(np.int64),
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
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(1.0, f"saved {total:,} tiles' features ({dims} dims) to {out_dir}")
    return EmbeddingStore(out_dir, meta_doc)


def _features_block(
    model: nn.Module,
    source: Any,
    spec: InputSpec,
    batch: int,
    rows: tuple[int, int],
    tick: Callable[[int], None],
) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(first row, features (B, D) float16, probabilities (B, K)) of the rows [start, stop) of `source`; None
    when there are none (a rank's share may be empty). Holds the model's lock, like every other forward pass."""
    from histo_core.model_lock import model_lock

    feats: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    if rows[0] >= rows[1]:
        return None
    with model_lock(model):
        for start, p, f in iter_predictions(model, source, spec, features=True, batch_size=batch, rows=rows):
            assert f is not None  # features=True
            feats.append(f.astype(np.float16))
            probs.append(p)
            tick(start + len(f) - rows[0])
    return rows[0], np.concatenate(feats), np.concatenate(probs)


def _on_every_rank(step: Callable[[], Any], rank: int, world: int) -> Any:
    """`step()` on this rank. Under torchrun every rank then learns whether any rank failed and raises that
    rank's HistoError, so that none is left waiting in a collective; one process just runs it."""
    from histo_core.distributed import gather_objects

    if world <= 1:
        return step()
    value, error = None, None
    try:
        value = step()
    except Exception as exc:  # noqa: BLE001 - every rank must hear of it
        error = str(exc) if isinstance(exc, HistoError) else f"rank {rank}: {type(exc).__name__}: {exc}"
    first = next((e for e in gather_objects(error, world) if e), None)
    if first is not None:
        raise HistoError(first)
    return value


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


END_OF_TRAINING_MAX_POINTS = 5_000


def embed_at_end_of_training(
    run, model: nn.Module, log: Callable[[str], None], rank: int = 0, world: int = 1, dataset: Any = None
) -> None:
    """The trainer's hook: embed the run's dataset with its final model. Never fails the run: a problem is
    logged, and `python -m histo_core embed RUN` can redo it later. Under torchrun every rank calls it with
    the same weights and computes its share of the features (`_embed`); rank 0 finds the target and logs.
    `dataset`: the run's dataset as the training process opened it (not opened again)."""
    from histo_core.distributed import broadcast

    if os.environ.get("HISTO_EMBED_AFTER_TRAINING", "1") == "0":
        return
    target: EmbedTarget | str | None = None
    try:
        if rank == 0:
            target = target_for(str(run.path))
    except Exception as exc:  # noqa: BLE001 - an optional extra must never fail a finished training run
        target = f"{type(exc).__name__}: {exc}"
    target = broadcast(target, world)  # the other ranks' nodes may not see the run folder
    try:
        if isinstance(target, str):
            raise HistoError(target)
        assert target is not None
        # the map drawn inside the training process is capped lower than on demand (t-SNE of 20,000 points
        # takes minutes on 2 cores); `python -m histo_core embed RUN` redraws it with up to MAX_POINTS
        cap = min(MAX_POINTS, END_OF_TRAINING_MAX_POINTS)
        own = dataset if target.run_path is not None else None  # the run's own dataset, as trained on
        store = _embed(target, model=model, max_points=cap, rank=rank, world=world, dataset=own)
        if store is not None:
            log(
                f"embeddings: {sum(store.meta['counts'].values()):,} tiles, {store.meta['dims']} dims, "
                f"{store.meta['projection']}, {store.meta['seconds']} s"
                + (f", features computed by {world} ranks" if world > 1 else "")
            )
    except Exception as exc:  # noqa: BLE001 - an optional extra must never fail a finished training run
        if rank == 0:
            log(f"embeddings not saved ({type(exc).__name__}: {exc}); run `python -m histo_core embed {run.id}`")


def task_main(params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The `embed` process kind (histo_core.kinds): params model, dataset (None: its own), splits, max_points."""
    target = target_for(params["model"], params.get("dataset"))
    store = embed(target, params.get("splits"), progress=progress, max_points=int(params.get("max_points", MAX_POINTS)))
    return {"path": str(store.path), "counts": store.meta["counts"], "dims": store.meta["dims"]}
