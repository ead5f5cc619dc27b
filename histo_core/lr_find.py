"""Learning-rate range test (Smith 2015, as in fastai's lr_find): train with an exponentially growing LR
from `min_lr` to `max_lr`, record the smoothed loss, stop once it diverges. The suggestion is the LR of the
steepest loss descent (the smoothed loss falling fastest per log10 step), capped at a tenth of the LR of
the lowest loss.

    res = lr_find(config)   # {"lrs": [...], "losses": [...], "suggested_lr": 3e-3, ...}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from histo_core.config import TrainConfig
from histo_core.errors import ConfigError


def lr_find(
    config: TrainConfig,
    *,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    num_steps: int = 100,
    smoothing: float = 0.9,
    diverge_factor: float = 4.0,
    on_step: Callable[[int, float, float], None] | None = None,
) -> dict[str, Any]:
    from histo_core import training as T

    if not 0 < min_lr < max_lr:
        raise ConfigError(f"lr-find: need 0 < --min-lr < --max-lr, got {min_lr} and {max_lr}")
    if num_steps < 5:
        raise ConfigError(f"lr-find: --steps must be at least 5, got {num_steps}")
    config = config.replace(schedule="none", early_stopping=False, lr=min_lr)
    T.check_config(config)
    device = T.setup_device(config)
    ds = T.open_config_dataset(config)
    data = T.build_train_data(config, ds, str(device), need_test=False)
    trainer = T.Trainer(config, data, device)
    trainer.set_train_mode()
    factor = (max_lr / min_lr) ** (1.0 / (num_steps - 1))
    ratios = [g["lr"] / min_lr for g in trainer.optimizer.param_groups]  # head-then-all: backbone at lr * mult
    lrs, losses, raw = [], [], []
    avg, best = 0.0, math.inf
    epoch, batches, b = 0, trainer.batches_of_epoch(0), 0
    for step in range(num_steps):
        if b >= len(batches):
            epoch, b = epoch + 1, 0
            batches = trainer.batches_of_epoch(epoch)
        pos = batches[b]
        b += 1
        lr = min_lr * factor**step
        for g, ratio in zip(trainer.optimizer.param_groups, ratios):
            g["lr"] = lr * ratio
        loss, _ = trainer.train_batch(pos)
        value = float(loss)
        if not math.isfinite(value):
            break
        avg = smoothing * avg + (1 - smoothing) * value
        smoothed = avg / (1 - smoothing ** (step + 1))
        lrs.append(lr)
        losses.append(smoothed)
        raw.append(value)
        if on_step is not None:
            on_step(step, lr, smoothed)
        best = min(best, smoothed)
        if step > 5 and smoothed > diverge_factor * best:
            break
    return {
        "lrs": lrs,
        "losses": losses,
        "raw_losses": raw,
        "suggested_lr": suggest_lr(lrs, losses),
        "min_loss_lr": lrs[int(np.argmin(losses))] if losses else None,
    }


def suggest_lr(lrs: list[float], losses: list[float]) -> float | None:
    """The LR of the steepest descent of the (smoothed) loss, never above a tenth of the min-loss LR."""
    if len(lrs) < 5:
        return None
    lo, hi = 0, int(np.argmin(losses))
    if hi - lo < 3:
        return lrs[hi] / 10
    x = np.log10(lrs[lo : hi + 1])
    y = np.asarray(losses[lo : hi + 1])
    slope = np.gradient(y, x)
    steepest = lrs[lo + int(np.argmin(slope))]
    return float(min(steepest, lrs[hi] / 10))


def task_main(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    """The `lr-find` process kind (histo_core.kinds): params config (a TrainConfig dict), steps."""
    steps = int(params.get("steps", 100))
    progress(0.0, "opening the dataset")
    return lr_find(
        TrainConfig.from_dict(params["config"]),
        num_steps=steps,
        on_step=lambda step, lr, loss: progress((step + 1) / steps, f"lr {lr:.2g}, loss {loss:.3f}"),
    )
