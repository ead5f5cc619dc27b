"""Training losses (`--loss`): ce (cross-entropy), smooth (label smoothing), sce (symmetric cross-entropy,
Wang et al. 2019, robust to label noise: alpha * CE + beta * reverse CE, with log(0) clipped to -4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SymmetricCrossEntropy(nn.Module):
    def __init__(self, num_classes: int, alpha: float = 0.1, beta: float = 1.0, log_zero: float = -4.0):
        super().__init__()
        self.num_classes, self.alpha, self.beta, self.log_zero = num_classes, alpha, beta, log_zero

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target)
        probs = F.softmax(logits.float(), dim=1).clamp(min=1e-7, max=1.0)
        one_hot = F.one_hot(target, self.num_classes).float()
        log_label = torch.where(one_hot > 0, torch.zeros_like(one_hot), torch.full_like(one_hot, self.log_zero))
        rce = -(probs * log_label).sum(dim=1).mean()
        return self.alpha * ce + self.beta * rce


def build_loss(
    name: str, num_classes: int, *, label_smoothing: float = 0.1, sce_alpha: float = 0.1, sce_beta: float = 1.0
) -> nn.Module:
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "smooth":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "sce":
        return SymmetricCrossEntropy(num_classes, sce_alpha, sce_beta)
    raise ValueError(f"unknown loss {name!r}")
