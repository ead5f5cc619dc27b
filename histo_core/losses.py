"""Training losses (`--loss`) and mixup (`--mixup`).

  ce      cross-entropy
  smooth  cross-entropy with label smoothing
  sce     symmetric cross-entropy (Wang et al. 2019): alpha * CE + beta * reverse CE, with log(0) clipped to -4
  gce     generalized cross-entropy (Zhang & Sabuncu 2018): (1 - p_y^q) / q; q -> 0 is CE, q = 1 is MAE
  elr     early-learning regularisation (Liu et al. 2020): CE + lambda * log(1 - <p, t_i>), where t_i is a
          running average (momentum beta) of the model's own predictions for training tile i; it keeps the
          model close to what it predicted early, before it memorised the wrong labels
  boot    dynamic bootstrapping with a loss split (Arazo et al. 2019; the split is DivideMix's, Li et al. 2020):
          plain CE for the first `boot_warmup` of the epochs; after each epoch a 2-component Gaussian mixture
          over every training tile's loss says how likely its label is wrong (w_i, the high-loss component);
          then each tile the model disagrees with trains on (1 - w_i) * its label + w_i * the model's own
          sharpened prediction (w_i also scaled by the model's confidence), so a doubtful tile keeps teaching
          with the model's guess instead of being dropped
  divide  a one-network DivideMix (Li et al. 2020): plain CE until `divide_warmup` of the epochs, while the
          model's predictions of every training tile are averaged over the warm-up's second half; then a loss
          split on that mean, held: a tile whose label looks right keeps it, a doubtful one trains on the
          averaged guess; --mixup, if set, mixes these targets MixMatch-style
  codivide  DivideMix's co-divide: two networks (histo_core.training.codivide), each a `divide` whose split and
          targets are fitted from the OTHER network's averaged warm-up predictions (`own_split=False`: the
          pair observes, crossed), so that neither trains on its own errors; the model is the pair's mean

Every criterion is called `criterion(logits, target, index)`; `index` (positions of the batch's tiles in the
training source) is used by the losses with per-tile state (`per_tile = True`: ELR, boot, divide), whose buffers
are part of the trainer's resumable state; `end_epoch(done, total)`, where a loss has it, runs after each epoch;
`observe(probs, labels, done, total)` (divide) gets every training tile's predictions after the epochs for which
`wants_predictions(done, total)` says so. Which of them helps on small noisy histology sets is measured, not
assumed: benchmarks/RESULTS.md, "Noise lab".
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histo_core.config import divide_window


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
    per_tile = True
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


def gmm_high_posterior(x: torch.Tensor, iters: int = 20, reg: float = 5e-4) -> torch.Tensor:
    """P(high component | x) of a 2-component 1-D Gaussian mixture fitted by EM to `x` (float, any scale).

    Deterministic: x is min-max scaled to [0, 1], the components start at means 0.25 / 0.75, variances 0.05,
    equal weights; `reg` is added to each variance (as scikit-learn's reg_covar). Constant x -> all 0.5."""
    x = x.double()
    span = x.max() - x.min()
    if x.numel() < 2 or float(span) <= 0:
        return torch.full_like(x, 0.5).float()
    x = (x - x.min()) / span
    mu = torch.tensor([0.25, 0.75], dtype=x.dtype)
    var = torch.tensor([0.05, 0.05], dtype=x.dtype)
    pi = torch.tensor([0.5, 0.5], dtype=x.dtype)
    for _ in range(iters):
        log_p = -0.5 * ((x[:, None] - mu) ** 2 / var + torch.log(2 * math.pi * var)) + torch.log(pi)
        r = torch.softmax(log_p, dim=1)  # (N, 2) responsibilities
        n_k = r.sum(0).clamp(min=1e-12)
        mu = (r * x[:, None]).sum(0) / n_k
        var = (r * (x[:, None] - mu) ** 2).sum(0) / n_k + reg
        pi = n_k / n_k.sum()
    log_p = -0.5 * ((x[:, None] - mu) ** 2 / var + torch.log(2 * math.pi * var)) + torch.log(pi)
    return torch.softmax(log_p, dim=1)[:, int(mu.argmax())].float()


class DynamicBootstrapping(nn.Module):
    """Cross-entropy against (1 - w_i) * one_hot(y_i) + w_i * sharpen(p_i), averaged over the batch.

    p_i: the model's softmax for the tile (detached), sharpened as p^(1/T) / sum p^(1/T). w_i = d_i * c_i * [the
    model's class != y_i]: d_i, the probability that tile i's label is wrong, from `gmm_high_posterior` over the
    tiles' latest training losses (`losses`, recorded as each tile is trained on), refitted by `end_epoch` once
    `warmup` of the epochs are done (before that d = 0: plain CE); c_i = max p_i, the model's confidence. A tile
    the model agrees with keeps its label: without that gate the split, which always splits, relabelled the
    hard clean tiles of a noise-free set (0.650 against CE's 0.773, benchmarks/RESULTS.md). Without `index` (a
    batch not from the training source) it is plain CE."""

    per_tile = True
    losses: torch.Tensor
    noisy: torch.Tensor

    def __init__(self, num_samples: int, num_classes: int, warmup: float = 0.3, temperature: float = 0.5):
        super().__init__()
        self.num_classes, self.warmup, self.temperature = num_classes, warmup, temperature
        self.register_buffer("losses", torch.full((num_samples,), float("nan")))
        self.register_buffer("noisy", torch.zeros(num_samples))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if index is None:
            return F.cross_entropy(logits, target)
        log_p = F.log_softmax(logits.float(), dim=1)
        index = index.to(self.losses.device)
        with torch.no_grad():
            self.losses[index] = -log_p.gather(1, target.view(-1, 1)).squeeze(1).detach().to(self.losses.device)
            p = log_p.exp()
            guess = F.softmax(logits.detach().float() / self.temperature, dim=1)  # p^(1/T), normalised
            conf, pred = p.max(1)
            w = (self.noisy[index].to(log_p.device) * conf * (pred != target).float()).unsqueeze(1)
            soft = (1.0 - w) * F.one_hot(target, self.num_classes).float() + w * guess
        return -(soft * log_p).sum(1).mean()

    def end_epoch(self, done: int, total: int) -> None:
        """After epoch `done` of `total`: refit the split on the recorded losses once the warm-up is over."""
        seen = ~torch.isnan(self.losses)
        if done < max(1, round(self.warmup * total)) or int(seen.sum()) < 2:
            return
        self.noisy[seen] = gmm_high_posterior(self.losses[seen].cpu()).to(self.noisy.device)


class Divide(nn.Module):
    """A one-network DivideMix (Li et al. 2020): a loss split fitted once, after a cross-entropy warm-up, from the
    model's predictions averaged over the warm-up's second half (before memorisation sets in); then every tile
    trains on a refined soft label (mixed with other tiles by the trainer's --mixup, MixMatch-style, when it is
    set; the `divide` method sets none: measured worse with it), plus a prior penalty against collapse.

    Plain CE (and no mixup, `mixup_now`) for the first `warmup` of the epochs. After each epoch of the warm-up's
    last `window` (0.5: its second half; `in_window`) the trainer passes every training tile's predicted
    probabilities to `observe` (when `wants_predictions(done, total)`; with `own_split` False, codivide's, the
    trainer does not: the pair passes each network the OTHER's predictions, histo_core.training.codivide); one epoch's predictions swing a lot under the one-cycle schedule's high
    learning rate, their mean does not (benchmarks/RESULTS.md, "Noise lab III"). At the warm-up's last epoch,
    from the mean p: d_i = P(label wrong) from `gmm_high_posterior` over 1 - p_i[y_i] (bounded, unlike the loss,
    whose few largest values took the high component alone on the synthetic set); w_i = 1 - d_i, or 1 where
    the model agrees with the label; target q_i = sharpen(w_i * one_hot(y_i) + (1 - w_i) * p_i, T) (p^(1/T),
    normalised; the default T 1 leaves it as is: DivideMix's T 0.5 scored 1.1 points lower, seed 0 at 40%
    noise): a tile whose label looks right keeps it, a doubtful one trains on the model's averaged guess
    (DivideMix's labelled and unlabelled sets, with the clean probability as a soft boundary).
    The split and targets are then held. The loss is -mean_i sum_c q_ic log s_ic + prior * sum_c pi_c
    log(pi_c / mean_i s_ic), s = softmax(logits), pi = the targets' class frequencies (mean of q). Without
    `index` (a batch not from the training source) it is plain CE."""

    per_tile = True
    targets: torch.Tensor
    prob_sum: torch.Tensor
    observed: torch.Tensor
    class_prior: torch.Tensor
    fitted: torch.Tensor

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        warmup: float = 0.5,
        temperature: float = 1.0,
        prior: float = 1.0,
        *,
        window: float = 0.5,
        own_split: bool = True,
    ):
        super().__init__()
        self.num_classes, self.warmup, self.temperature, self.prior = num_classes, warmup, temperature, prior
        self.window_fraction = window  # of the warm-up's epochs, the last ones, whose predictions are averaged
        self.own_split = own_split  # False (codivide): the trainer does not observe; a partner's predictions come
        self.register_buffer("targets", torch.zeros(num_samples, num_classes))
        self.register_buffer("prob_sum", torch.zeros(num_samples, num_classes))  # summed predictions so far
        self.register_buffer("observed", torch.zeros((), dtype=torch.long))  # epochs summed into prob_sum
        self.register_buffer("class_prior", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.long))  # the epoch it was fitted after; 0 = not

    def window(self, total: int) -> tuple[int, int]:
        """(first, last) epoch, counted from 1, whose predictions are averaged (the last `window` of the warm-up's
        epochs, at least one); the split is fitted after `last`."""
        return divide_window(self.warmup, self.window_fraction, total)

    @property
    def mixup_now(self) -> bool:
        """The trainer's --mixup applies only once the split is fitted (the warm-up is plain CE, as DivideMix's)."""
        return int(self.fitted) > 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if index is None or int(self.fitted) == 0:
            return F.cross_entropy(logits, target)
        log_p = F.log_softmax(logits.float(), dim=1)
        q = self.targets[index.to(self.targets.device)].to(log_p.device)
        loss = -(q * log_p).sum(1).mean()
        if self.prior > 0:
            pi = self.class_prior.to(log_p.device)
            mean_p = log_p.exp().mean(0).clamp(min=1e-7)
            loss = loss + self.prior * (pi * torch.log(pi.clamp(min=1e-7) / mean_p)).sum()
        return loss

    def in_window(self, done: int, total: int) -> bool:
        """Whether the predictions after epoch `done` of `total` are averaged into the split (not yet fitted)."""
        first, last = self.window(total)
        return total > 1 and first <= done <= last and int(self.fitted) == 0

    def wants_predictions(self, done: int, total: int) -> bool:
        """Whether the trainer should `observe` the training tiles' predictions after epoch `done` of `total`."""
        return self.own_split and self.in_window(done, total)

    def observe(self, probs: torch.Tensor, labels: torch.Tensor, done: int, total: int) -> None:
        """Add every training tile's predicted probabilities (N, K) after epoch `done`; fit the split and the
        targets from their mean (and the training labels) after the window's last epoch."""
        self.prob_sum += probs.to(self.prob_sum.device, self.prob_sum.dtype)
        self.observed += 1
        if done == self.window(total)[1]:
            self.fit_split(self.prob_sum / int(self.observed), labels, done)

    def fit_split(self, probs: torch.Tensor, labels: torch.Tensor, done: int) -> None:
        """Fit the split and the targets from the training tiles' probabilities (N, K) and labels (N,)."""
        p = probs.double().clamp(min=1e-7)
        p = p / p.sum(1, keepdim=True)
        y = labels.long().view(-1).to(p.device)
        w = 1.0 - gmm_high_posterior(1.0 - p.gather(1, y.view(-1, 1)).squeeze(1)).double()
        w = torch.where(p.argmax(1) == y, torch.ones_like(w), w).unsqueeze(1)
        refined = w * F.one_hot(y, self.num_classes).double() + (1.0 - w) * p
        sharp = refined.pow(1.0 / self.temperature)
        q = (sharp / sharp.sum(1, keepdim=True)).float()
        self.targets.copy_(q.to(self.targets.device))
        self.class_prior.copy_(q.mean(0).to(self.class_prior.device))
        self.fitted.fill_(done)


# build_loss's options, each also a TrainConfig field of the same name (the trainer passes them on by name)
LOSS_OPTIONS = (
    "label_smoothing", "sce_alpha", "sce_beta", "gce_q", "elr_lambda", "elr_beta", "boot_warmup", "divide_warmup",
    "divide_window", "divide_temperature",
)  # fmt: skip


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
    boot_warmup: float = 0.3,
    divide_warmup: float = 0.5,
    divide_window: float = 0.5,
    divide_temperature: float = 1.0,
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
    if name == "boot":
        return DynamicBootstrapping(num_samples, num_classes, boot_warmup)
    if name in ("divide", "codivide"):  # codivide: one of the pair's two; its split comes from the other
        return Divide(
            num_samples,
            num_classes,
            divide_warmup,
            divide_temperature,
            window=divide_window,
            own_split=name == "divide",
        )
    raise ValueError(f"unknown loss {name!r}")


def mixup_batch(x: torch.Tensor, alpha: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018): (lam * x + (1 - lam) * x[perm], perm, lam) with lam ~ Beta(alpha, alpha),
    folded to >= 0.5 so that a tile's own label stays the dominant one. Random draws come from `gen` (CPU)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    return x * lam + x[perm] * (1.0 - lam), perm, lam
