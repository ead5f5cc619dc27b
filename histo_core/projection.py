"""The feature map's 2-D projection: PCA to at most PCA_DIMS dimensions, then scikit-learn's t-SNE (Barnes-Hut)
on at most MAX_POINTS tiles (a seeded sample, each split in proportion to its size; `sample_rule` says so on the
page). `histo_core.embeddings` computes the features and saves the set."""

from __future__ import annotations

import numpy as np

MAX_POINTS = 20_000  # t-SNE runs on at most this many points (a seeded, per-split proportional sample)
PCA_DIMS = 50


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
