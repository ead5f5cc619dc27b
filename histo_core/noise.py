"""Label noise for robustness experiments. It only ever touches TRAINING labels.

Three modes (`--noise-mode`), all with a rate in [0, 0.9]:
  batch  every batch, that fraction of its labels is replaced by another class drawn uniformly, afresh
         each batch (so no sample is consistently mislabelled);
  fixed  symmetric noise drawn once per sample with the seed: a fixed set of samples keeps a wrong label
         for the whole run (recorded in noise.npz: noisy_labels, flipped, indices);
  pair   class k -> k+1 (mod K) for a fraction drawn once per sample (structured, class-dependent noise).
"""

from __future__ import annotations

import numpy as np
import torch


def _flip_count(n: int, rate: float) -> int:
    return int(round(n * rate))


def random_other_class(labels: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """For each label, a different class drawn uniformly from the K-1 others."""
    offset = torch.randint(1, num_classes, labels.shape, generator=gen, device=gen.device).to(labels.device)
    return (labels + offset) % num_classes


def batch_noise(labels: torch.Tensor, rate: float, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """A copy of a batch's labels with round(rate * n) of them, chosen at random, moved to another class."""
    n = labels.shape[0]
    k = _flip_count(n, rate)
    if k == 0 or num_classes < 2:
        return labels
    which = torch.randperm(n, generator=gen, device=gen.device)[:k].to(labels.device)
    noisy = labels.clone()
    noisy[which] = random_other_class(labels[which], num_classes, gen)
    return noisy


def fixed_noise(
    labels: np.ndarray, rate: float, num_classes: int, seed: int, mode: str = "fixed"
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy_labels, flipped) drawn once with `seed`: exactly round(rate * n) samples get a wrong label,
    another class uniformly (mode 'fixed') or the next class k+1 mod K (mode 'pair')."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    rng = np.random.default_rng([seed, 31337])
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.permutation(n)[: _flip_count(n, rate)]] = True
    noisy = labels.copy()
    if mode == "pair":
        noisy[flipped] = (labels[flipped] + 1) % num_classes
    elif mode == "fixed":
        noisy[flipped] = (labels[flipped] + rng.integers(1, num_classes, int(flipped.sum()))) % num_classes
    else:
        raise ValueError(f"fixed_noise: mode must be 'fixed' or 'pair', got {mode!r}")
    return noisy, flipped
