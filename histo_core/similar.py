"""The most similar training tiles of a tile, in the model's feature space, and a k-NN vote.

    index = SimilarityIndex.for_model("runs/RUN")               # the training tiles' saved embeddings
    hits = index.search(query_features, k=8)                    # exact cosine search
    vote = knn_vote(hits.labels, hits.distances, num_classes)

Search is exact: the reference features (float16, memory-mapped) are L2-normalised in blocks of BLOCK rows and
multiplied with the queries; the k best of each block are merged. Memory is one block plus the queries, time
is linear in the number of reference tiles. Beyond a few million tiles, or for many queries at once, an approximate
index (FAISS IVF/HNSW) would take over; nothing here needs one at the sizes this tool trains on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from histo_core.errors import HistoError

BLOCK = 65_536
DEFAULT_K = 8


@dataclass
class Hits:
    positions: np.ndarray  # (Q, k) positions into the reference set
    distances: np.ndarray  # (Q, k) cosine distances (1 - cosine similarity), ascending
    labels: np.ndarray  # (Q, k) true labels of the neighbours
    splits: np.ndarray  # (Q, k) split names
    rows: np.ndarray  # (Q, k) dataset rows within their split


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_knn(
    reference: np.ndarray, queries: np.ndarray, k: int, exclude_self: np.ndarray | None = None, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """(positions (Q, k), cosine distances (Q, k)) of the k nearest reference rows of each query, exact.

    `exclude_self`: per query, a reference position to skip (leave-one-out evaluation), or -1."""
    q = _normalise(queries)
    n = len(reference)
    k = int(min(k, n - (1 if exclude_self is not None else 0)))
    if k < 1:
        raise HistoError("no reference tiles to compare with")
    best_sim = np.full((len(q), 0), -np.inf, np.float32)
    best_pos = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, block):
        ref = _normalise(reference[start : start + block])
        sim = q @ ref.T
        if exclude_self is not None:
            for i, pos in enumerate(exclude_self):
                if start <= pos < start + len(ref):
                    sim[i, pos - start] = -np.inf
        kk = min(k, sim.shape[1])
        part = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        best_sim = np.concatenate([best_sim, np.take_along_axis(sim, part, 1)], axis=1)
        best_pos = np.concatenate([best_pos, part + start], axis=1)
        if best_sim.shape[1] > k:
            keep = np.argpartition(-best_sim, k - 1, axis=1)[:, :k]
            best_sim = np.take_along_axis(best_sim, keep, 1)
            best_pos = np.take_along_axis(best_pos, keep, 1)
    order = np.lexsort((best_pos, -best_sim), axis=1) if best_sim.size else np.zeros_like(best_pos)
    best_sim = np.take_along_axis(best_sim, order, 1)
    best_pos = np.take_along_axis(best_pos, order, 1)
    return best_pos, np.clip(1.0 - best_sim, 0.0, 2.0)


def knn_vote(labels: np.ndarray, distances: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(voted class (Q,), share of the k neighbours voting for it (Q,)): a majority vote, ties broken by the
    summed similarity of the tied classes' neighbours."""
    labels = np.asarray(labels, np.int64)
    sims = 1.0 - np.asarray(distances, np.float64)
    counts = np.zeros((len(labels), num_classes))
    weight = np.zeros((len(labels), num_classes))
    for j in range(labels.shape[1]):
        np.add.at(counts, (np.arange(len(labels)), labels[:, j]), 1.0)
        np.add.at(weight, (np.arange(len(labels)), labels[:, j]), sims[:, j])
    score = counts + 1e-6 * weight / max(1, labels.shape[1])
    voted = score.argmax(axis=1)
    return voted, counts[np.arange(len(labels)), voted] / max(1, labels.shape[1])


class SimilarityIndex:
    """The reference (training) tiles of a model: their saved features, labels, splits and rows."""

    def __init__(self, store, splits: Sequence[str] | None = None):
        self.store = store
        self.features, split_idx, self.rows = store.reference(splits)
        self.split_names = np.asarray(store.splits, dtype=object)[split_idx]
        self.labels = store.reference_labels(splits)
        self.classes = store.classes

    @classmethod
    def for_model(
        cls,
        model_spec: str,
        dataset: str | None = None,
        compute: bool = True,
        progress: Callable[[float, str], None] | None = None,
    ) -> SimilarityIndex:
        """The index of a model's training tiles, embedding them first when missing or stale (`compute`)."""
        from histo_core.embeddings import embed, is_current, load_store, target_for

        target = target_for(model_spec, dataset)
        store = load_store(target.out_dir)
        if not is_current(store, target):
            if not compute:
                raise HistoError(
                    f"{target.label}: its training tiles are not embedded yet; run "
                    f"`python -m histo_core embed {target.model_ref}`"
                )
            store = embed(target, progress=progress)
        return cls(store)

    def __len__(self) -> int:
        return len(self.labels)

    def search(self, query_features: np.ndarray, k: int = DEFAULT_K) -> Hits:
        pos, dist = cosine_knn(self.features, query_features, k)
        return Hits(
            positions=pos, distances=dist, labels=self.labels[pos], splits=self.split_names[pos], rows=self.rows[pos]
        )


def agreement_report(store, k: int = DEFAULT_K, split: str = "test") -> dict[str, Any]:
    """On a saved split: the k-NN vote over the training tiles vs the model's own prediction, and the
    accuracy of each against the true labels (when dataset and model share classes)."""
    index = SimilarityIndex(store)
    feats = np.asarray(store.features(split), np.float32)
    probs, labels = store.outputs(split)
    hits = index.search(feats, k)
    voted, share = knn_vote(hits.labels, hits.distances, len(store.classes))
    model_pred = probs.argmax(1)
    out = {
        "split": split,
        "tiles": int(len(labels)),
        "k": int(k),
        "reference_tiles": len(index),
        "agreement": float((voted == model_pred).mean()) if len(labels) else None,
        "top1_label_accuracy": float((hits.labels[:, 0] == labels).mean()) if len(labels) else None,
    }
    if store.same_classes and len(labels):
        out.update(model_accuracy=float((model_pred == labels).mean()), knn_accuracy=float((voted == labels).mean()))
    return out
