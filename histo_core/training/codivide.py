"""`codivide`: DivideMix's co-divide (Li et al. 2020) as one run: two networks trained together in this process,
each a `divide` (histo_core.losses.Divide) whose split and targets come from the OTHER network.

    trainer = make_trainer(config, data, device)     # a PairTrainer for --loss codivide, else a Trainer
    row = trainer.train_epoch()                      # network 1's epoch, then network 2's, then the crossed step
    probs = trainer.predict(data.val)                # the pair's mean probabilities
    trainer.model                                    # models.MeanEnsemble of the two: what best.pt/last.pt keep

The networks: seeds s and s + 100 (their own initialisation, batch order, augmentation and mixup streams), on the
same training tiles and labels (the run's noise drawn once, with seed s). Both train plain cross-entropy through
the warm-up (`--divide-warmup`); after each epoch of the averaging window (the warm-up's last `--divide-window`)
each predicts every training tile (no TTA), and network j's `Divide.observe` sums the OTHER network's
probabilities; after the window's last epoch each fits its split and soft targets from the partner's mean (so
neither confirms its own errors; `--divide-temperature` sharpens them, `--mixup` mixes them after the warm-up),
then trains on them to the end. This is the protocol of benchmarks/noise_codivide_pilot.py, step for step, so
its figures carry over (benchmarks/RESULTS.md, "Noise lab III"). The saved model predicts with the pair's mean
softmax (TTA as usual); Grad-CAM and the feature vectors use network 1's layers (`models.first_member`).

A `PairTrainer` offers what the run (run.py, final.py), in-process fits (fit.py) and the time estimate use of a
`Trainer`; `state()` holds both networks' resumable states and a finished network's epoch row, so a cancel in
either network's epoch resumes exactly (the split's sums and targets are in each network's loss state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from histo_core import pipeline
from histo_core.config import TrainConfig, networks_of
from histo_core.errors import HistoError
from histo_core.models import MeanEnsemble
from histo_core.predict import predict_tiles
from histo_core.training.data import TrainData
from histo_core.training.trainer import Trainer

PARTNER_SEED_OFFSET = 100  # network 2's seed: the run's seed + this (the pilot's)


def partner_seed(seed: int) -> int:
    return (seed + PARTNER_SEED_OFFSET) % 2**32


def cross_observe(nets: list[Trainer], probs: list[torch.Tensor], done: int, total: int) -> None:
    """Give each network's loss the OTHER network's probabilities of the training tiles after epoch `done` of
    `total` (`Divide.observe` sums them and fits the split from their mean after the window's last epoch)."""
    for j, t in enumerate(nets):
        t.criterion.observe(probs[1 - j], t.data.train_labels, done, total)  # type: ignore[operator]


class PairTrainer:
    """Two `Trainer`s of the same config (seeds s and s + 100) on the same data, trained epoch by epoch together,
    with crossed splits; `model` is their MeanEnsemble. One process only (not under torchrun)."""

    def __init__(self, config: TrainConfig, data: TrainData, device: torch.device, *, rank: int = 0, world: int = 1):
        if world > 1:
            raise HistoError(f"--loss {config.loss} trains its two networks in one process; run it without torchrun")
        self.config, self.data, self.device, self.rank, self.world = config, data, device, rank, world
        self.nets = [
            Trainer(config, data, device),
            Trainer(config.replace(seed=partner_seed(config.seed)), data, device),
        ]
        self.model = MeanEnsemble([t.model for t in self.nets])
        self.cuda = self.nets[0].cuda
        self.steps_per_epoch = sum(t.steps_per_epoch for t in self.nets)
        self.rows: list[dict[str, Any] | None] = [None] * len(self.nets)  # this epoch's rows of finished networks

    # -- progress: the pair's epoch is network 1's batches, then network 2's --------------------------------------
    @property
    def epoch(self) -> int:
        return min(t.epoch for t in self.nets)

    @property
    def step(self) -> int:
        """Batches done in the pair's current epoch (both networks' batches counted)."""
        return sum(t.steps_per_epoch if t.epoch > self.epoch else t.step for t in self.nets)

    @property
    def fallback(self) -> str | None:
        return next((f"network {j + 1}: {t.fallback}" for j, t in enumerate(self.nets) if t.fallback), None)

    @property
    def precision(self) -> str:
        return next((t.precision for t in self.nets if t.fallback), self.nets[0].precision)

    def train_epoch(self, on_batch: Callable[[Any, int], bool] | None = None) -> dict[str, Any]:
        """Epoch `epoch + 1` of each network not yet past it (network 1 first), then the crossed split's step.
        `on_batch(pair, images)` after each batch of either; True stops there (StopRequested). The row: the
        networks' mean loss and accuracy, network 1's LR, the pair's seconds and training images per second."""
        epoch = self.epoch
        inner = None if on_batch is None else (lambda _t, n: on_batch(self, n))
        for j, t in enumerate(self.nets):
            if t.epoch == epoch:
                self.rows[j] = t.train_epoch(inner)
        rows = [r for r in self.rows if r is not None]
        self.rows = [None] * len(self.nets)
        done, total = epoch + 1, self.config.epochs
        if getattr(self.nets[0].criterion, "in_window", lambda d, t: False)(done, total):
            cross_observe(self.nets, [torch.from_numpy(t.predict(t.data.train)) for t in self.nets], done, total)
        seconds = sum(r["seconds"] for r in rows)
        return {
            "epoch": done,
            "train_loss": float(np.mean([r["train_loss"] for r in rows])),
            "train_acc": float(np.mean([r["train_acc"] for r in rows])),
            "lr": rows[0]["lr"],
            "seconds": seconds,
            "images_per_s": sum(r["images_per_s"] * r["seconds"] for r in rows) / max(seconds, 1e-9),
        }

    # -- single steps (the run-time estimate times one pair step) ---------------------------------------------------
    def set_train_mode(self) -> None:
        for t in self.nets:
            t.set_train_mode()

    def batches_of_epoch(self, epoch: int) -> list[np.ndarray]:
        """Network 1's batches; `train_batch` trains both networks on one of them (a pair step)."""
        return self.nets[0].batches_of_epoch(epoch)

    def train_batch(self, pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        out = [t.train_batch(pos) for t in self.nets]
        return out[0]

    def zero_grad(self) -> None:
        for t in self.nets:
            t.zero_grad()

    # -- evaluation -------------------------------------------------------------------------------------------------
    def predict(
        self, source: pipeline.TileSource, tta: bool = False, on_batch: Callable[[], None] | None = None
    ) -> np.ndarray:
        """The pair's mean softmax probabilities (N, K) of a whole source (`histo_core.predict`)."""
        return predict_tiles(
            self.model,
            source,
            self.nets[0].input_spec(),
            tta=tta,
            on_batch=on_batch,
            num_classes=self.data.info.num_classes,
        )

    # -- resumable state ----------------------------------------------------------------------------------------------
    def rank_state(self) -> dict[str, Any]:
        return {}

    def state(self, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Both networks' `Trainer.state` and the rows of a network that finished the current epoch already."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "batch_size": self.config.batch_size,
            "networks": [t.state() for t in self.nets],
            "rows": [dict(r) if r is not None else None for r in self.rows],
        }

    def batch_size_changed(self, state: dict[str, Any]) -> bool:
        return self.nets[0].batch_size_changed(state)

    def load_state(self, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        """From `state()` and the MeanEnsemble's weights ("members.<j>.<name>")."""
        saved = state.get("networks")
        if not saved or len(saved) != len(self.nets):
            raise HistoError(f"this last.pt holds no state of a {len(self.nets)}-network ({self.config.loss}) run")
        for j, t in enumerate(self.nets):
            prefix = f"members.{j}."
            t.load_state(saved[j], {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
        self.rows = list(state.get("rows") or [None] * len(self.nets))


AnyTrainer = Trainer | PairTrainer


def make_trainer(
    config: TrainConfig, data: TrainData, device: torch.device, *, rank: int = 0, world: int = 1
) -> AnyTrainer:
    """The trainer of `config`: a PairTrainer for a two-network method (config.PAIRED_LOSSES), else a Trainer."""
    if networks_of(config) == 2:
        return PairTrainer(config, data, device, rank=rank, world=world)
    return Trainer(config, data, device, rank=rank, world=world)
