"""Training losses (`--loss`) and mixup (`--mixup`).

  ce      cross-entropy
  smooth  cross-entropy with label smoothing
  sce     symmetric cross-entropy (Wang et al. 2019): alpha * CE + beta * reverse CE, with log(0) clipped to -4
  gce     generalized cross-entropy (Zhang & Sabuncu 2018): (1 - p_y^q) / q; q -> 0 is CE, q = 1 is MAE
  elr     early-learning regularisation (Liu et al. 2020): CE + lambda * log(1 - <p, t_i>), where t_i is a
          running average (momentum beta) of the model's own predictions for training tile i; it keeps the
          model close to what it predicted early, before it memorised the wrong labels

Every criterion is called `criterion(logits, target, index)`; `index` (positions of the batch's tiles in the
training source) is used by ELR only. Which of them helps on small noisy histology sets is measured, not
assumed: benchmarks/RESULTS.md, "Noise lab".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)


class SymmetricCrossEntropy(nn.Module):
    def __init__(self, num_classes: int, alpha: float = 0.1, beta: float = 1.0, log_zero: float = -4.0):
        super().__init__()
        self.num_classes, self.alpha, self.beta, self.log_zero = num_classes, alpha, beta, log_zero

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        ce = F.cross_entropy(logits, target)
        probs = F.softmax(logits.float(), dim=1).clamp(min=1e-7, max=1.0)
        one_hot = F.one_hot(target, self.num_classes).float()
        log_label = torch.where(one_hot > 0, torch.zeros_like(one_hot), torch.full_like(one_hot, self.log_zero))
        rce = -(probs * log_label).sum(dim=1).mean()
        return self.alpha * ce + self.beta * rce


class GeneralizedCrossEntropy(nn.Module):
    """L_q = (1 - p_y^q) / q, averaged over the batch (p_y clamped to >= 1e-7)."""

    def __init__(self, q: float = 0.7):
        super().__init__()
        self.q = q

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        p_y = F.softmax(logits.float(), dim=1).gather(1, target.view(-1, 1)).squeeze(1).clamp(min=1e-7)
        return ((1.0 - p_y.pow(self.q)) / self.q).mean()


class EarlyLearningRegularization(nn.Module):
    """CE + lambda * mean(log(1 - <p_i, t_i>)). Before the loss, t_i <- beta * t_i + (1 - beta) * p_i / sum(p_i)
    (p detached, clamped to [1e-4, 1 - 1e-4]); t starts at zero. `targets` (N, K) is part of the trainer's
    resumable state. Without `index` (a batch that is not from the training source) it is plain CE."""

    targets: torch.Tensor

    def __init__(self, num_samples: int, num_classes: int, lam: float = 3.0, beta: float = 0.7):
        super().__init__()
        self.lam, self.beta = lam, beta
        self.register_buffer("targets", torch.zeros(num_samples, num_classes))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        ce = F.cross_entropy(logits, target)
        if index is None:
            return ce
        probs = F.softmax(logits.float(), dim=1).clamp(1e-4, 1.0 - 1e-4)
        index = index.to(self.targets.device)
        with torch.no_grad():
            p = probs.detach()
            self.targets[index] = self.beta * self.targets[index] + (1.0 - self.beta) * (p / p.sum(1, keepdim=True))
        inner = (self.targets[index].to(probs.device) * probs).sum(dim=1)
        return ce + self.lam * torch.log(1.0 - inner).mean()


def build_loss(
    name: str,
    num_classes: int,
    *,
    label_smoothing: float = 0.1,
    sce_alpha: float = 0.1,
    sce_beta: float = 1.0,
    gce_q: float = 0.7,
    elr_lambda: float = 3.0,
    elr_beta: float = 0.7,
    num_samples: int = 0,
) -> nn.Module:
    """The criterion of `--loss NAME`; `num_samples` (training tiles) sizes ELR's per-tile targets."""
    if name == "ce":
        return CrossEntropy()
    if name == "smooth":
        return CrossEntropy(label_smoothing)
    if name == "sce":
        return SymmetricCrossEntropy(num_classes, sce_alpha, sce_beta)
    if name == "gce":
        return GeneralizedCrossEntropy(gce_q)
    if name == "elr":
        return EarlyLearningRegularization(num_samples, num_classes, elr_lambda, elr_beta)
    raise ValueError(f"unknown loss {name!r}")


def mixup_batch(x: torch.Tensor, alpha: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018): (lam * x + (1 - lam) * x[perm], perm, lam) with lam ~ Beta(alpha, alpha),
    folded to >= 0.5 so that a tile's own label stays the dominant one. Random draws come from `gen` (CPU)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    return x * lam + x[perm] * (1.0 - lam), perm, lam
