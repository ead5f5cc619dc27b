"""The `Trainer`: model, optimizer, schedule, loss and the epoch loop, resumable at any batch boundary.

    trainer = Trainer(config, data, device)
    row = trainer.train_epoch()                      # one epoch; its train row (loss, accuracy, lr, speed)
    probs = trainer.predict(data.val)                # softmax probabilities of a source
    for pos in trainer.batches_of_epoch(0):          # or a step at a time (LR finder, speed estimates)
        loss, correct = trainer.train_batch(pos)

`state()` / `load_state()` are what last.pt keeps to resume mid-epoch (weights_only-loadable).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histo_core import augment, pipeline, runtime, stain
from histo_core.config import HEAD_MODES, TrainConfig
from histo_core.distributed import broadcast_buffers, gather_objects, sum_over_ranks
from histo_core.losses import LOSS_OPTIONS, build_loss, mixup_batch
from histo_core.models import build_model, get_arch, head_module, set_backbone_trainable
from histo_core.noise import batch_noise
from histo_core.predict import InputSpec, predict_tiles
from histo_core.training.data import TrainData, uses_mlp_head
from histo_core.training.device import (
    autocast_dtype,
    compile_module,
    eager_optimizer_class,
    fused_optimizer_ok,
    needs_grad_scaler,
    precision_name,
)

FP16_MAX_SKIPPED_STEPS = 20  # GradScaler steps skipped in a row (inf/NaN gradients) before fp16 gives way to fp32
FP16_CHECK_STEPS = 20  # how often the host reads that count (a read waits for the device)


class StopRequested(Exception):
    """Raised inside an epoch when a cancel was requested; the trainer state is consistent at that point."""


def _empty_partial() -> dict[str, Any]:
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


class Trainer:
    """Model, optimizer, schedule, loss and the epoch loop. Resumable at any batch boundary."""

    def __init__(self, config: TrainConfig, data: TrainData, device: torch.device, *, rank: int = 0, world: int = 1):
        self.config, self.data, self.device = config, data, device
        self.rank, self.world = rank, world
        info = data.info
        torch.manual_seed(config.seed)
        self.model = build_model(
            config.arch,
            info.num_classes,
            info.channels,
            data.input_size,
            pretrained=config.pretrained,
            mlp_head=uses_mlp_head(config),
        ).to(device)
        self.cuda = device.type == "cuda"
        if not self.cuda:
            runtime.tune_malloc(tile_px=data.input_size)  # small tiles: activations stay in the heap
        # channels-last measured faster on CPU too (x1.1-1.6 for every architecture here; benchmarks/RESULTS.md)
        self.channels_last = bool(config.channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = autocast_dtype(config, device)  # bf16 (CUDA >= sm_80, native-bf16 CPUs), fp16 (older cards)
        self.precision = precision_name(self.amp_dtype)
        # fp16 needs loss scaling; a disabled scaler passes losses and steps through unchanged
        self.scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(self.amp_dtype))
        self.skipped_in_a_row: torch.Tensor | None = None  # fp16: steps the scaler skipped in a row, on the device
        self.fallback: str | None = None  # how and when fp16 gave way to fp32 (`fall_back_to_fp32`)
        self.head_ids = (
            {id(p) for p in head_module(self.model, config.arch).parameters()}
            if get_arch(config.arch).has_backbone
            else set()
        )
        self.backbone_frozen = False
        self.shard_log = os.environ.get("HISTO_SHARD_LOG") or None
        self.net: nn.Module = self.model
        if config.mode == "frozen" or (config.mode == "head-then-all" and config.head_epochs > 0):
            self._freeze_backbone(True)
        self._wrap()
        self.optimizer = self._build_optimizer()
        self.steps_per_epoch = len(self.batches_of_epoch(0))
        self.scheduler = self._build_scheduler()
        options = {k: getattr(config, k) for k in LOSS_OPTIONS}  # TrainConfig fields of the same names
        self.criterion = build_loss(config.loss, info.num_classes, num_samples=len(data.train), **options).to(device)
        gen_device = device if self.cuda else torch.device("cpu")
        self.aug_gen = torch.Generator(device=gen_device).manual_seed(config.seed * 1000 + 17 + rank)
        self.noise_gen = torch.Generator().manual_seed(config.seed * 1000 + 29 + rank)
        self.mixup_gen = torch.Generator().manual_seed(config.seed * 1000 + 41 + rank)
        self.epoch = 0  # epochs finished
        self.step = 0  # batches finished in the current epoch
        self.partial = _empty_partial()
        # labels beside resident tiles: a batch's labels are picked on the device, with the tiles' positions
        self.labels_on_device = pipeline.to_device(data.train_labels, device) if data.train.resident else None
        self.mean_t = torch.tensor(pipeline._per_channel(data.mean, info.channels), device=device).view(1, -1, 1, 1)
        self.std_t = torch.tensor(pipeline._per_channel(data.std, info.channels), device=device).view(1, -1, 1, 1)

    # -- set-up ----------------------------------------------------------------------------------------
    def _freeze_backbone(self, frozen: bool) -> None:
        changed = frozen != self.backbone_frozen
        set_backbone_trainable(self.model, self.config.arch, not frozen)
        self.backbone_frozen = frozen
        if changed and self.world > 1 and self.net is not self.model:
            self._wrap()  # DDP syncs the parameters that trained when it was built: wrap again for the new set

    def _wrap(self) -> None:
        """`net`, what the steps call: the model, under torchrun in DDP (built after freezing, so it reduces only
        the parameters that train, with no find_unused_parameters pass over the graph every step; a change of
        the trainable set builds it again, on every rank at the same epoch), compiled with --compile."""
        net: nn.Module = self.model
        if self.world > 1:
            net = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if self.cuda else None)
        self.net = compile_module(net) if self.config.compile else net

    def _param_groups(self) -> list[dict[str, Any]]:
        cfg = self.config
        params = list(self.model.parameters())
        if cfg.mode == "frozen":
            return [{"params": [p for p in params if id(p) in self.head_ids], "lr": cfg.lr}]
        if cfg.mode == "head-then-all":
            return [
                {"params": [p for p in params if id(p) not in self.head_ids], "lr": cfg.lr * cfg.backbone_lr_mult},
                {"params": [p for p in params if id(p) in self.head_ids], "lr": cfg.lr},
            ]
        return [{"params": params, "lr": cfg.lr}]

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        groups = self._param_groups()
        # fused: one kernel for all parameters (CPU and CUDA); measured faster than the per-parameter loop that
        # torch picks by default on CPU (benchmarks/RESULTS.md, "Speed II")
        fused: dict[str, Any] = {"fused": True} if fused_optimizer_ok(self.model) else {}

        def plain(c: type[torch.optim.Optimizer]) -> Any:  # torch._dynamo only in a process that compiles
            return c if cfg.compile else eager_optimizer_class(c)

        if cfg.optimizer == "sgd":
            return plain(torch.optim.SGD)(
                groups,
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                nesterov=cfg.momentum > 0,
                **fused,
            )
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return plain(cls)(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)

    def _build_scheduler(self) -> Any:
        cfg = self.config
        if cfg.schedule == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.step_size, cfg.gamma)
        if cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        if cfg.schedule == "onecycle":
            total = max(1, cfg.epochs * self.steps_per_epoch)
            return torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer,
                max_lr=[g["lr"] for g in self.optimizer.param_groups],
                total_steps=total,
                # torch divides by zero when pct_start * total_steps == 1 (one epoch of 4 batches)
                pct_start=0.3 if total == 4 else 0.25,
                cycle_momentum=cfg.optimizer == "sgd",
            )
        return None

    @property
    def per_batch_schedule(self) -> bool:
        return self.config.schedule == "onecycle"

    # -- batches ---------------------------------------------------------------------------------------
    def batches_of_epoch(self, epoch: int) -> list[np.ndarray]:
        """Positions in the train source for each batch of `epoch` on this rank (same on every call)."""
        src, cfg = self.data.train, self.config
        if src.streamed:
            # batches never straddle two chunks, so one chunk in memory at a time is enough
            chunks = pipeline.chunk_order(len(src), cfg.seed, epoch)
            per_rank = [
                [c[s] for c in chunks[r :: self.world] for s in pipeline.batch_slices(len(c), cfg.batch_size)]
                for r in range(self.world)
            ]
            return per_rank[self.rank][: min(len(b) for b in per_rank)]  # every rank runs as many steps
        order = pipeline.shard(pipeline.epoch_permutation(len(src), cfg.seed, epoch), self.rank, self.world)
        return [order[s] for s in pipeline.batch_slices(len(order), cfg.batch_size)]

    def gather(self, pos: np.ndarray) -> torch.Tensor:
        """uint8 tiles of the train source at positions `pos`."""
        if self.shard_log is not None:  # $HISTO_SHARD_LOG: which tiles each rank trained on (the multi-node test)
            with open(Path(self.shard_log) / f"rank{self.rank}.txt", "a") as fh:
                fh.write(f"{self.epoch + 1} {','.join(str(int(i)) for i in np.asarray(pos).reshape(-1))}\n")
        return self.data.train.gather(pos)

    def epoch_positions(self, batches: list[np.ndarray]) -> list[torch.Tensor] | None:
        """The epoch's batch positions as slices of one tensor uploaded once, when the tiles are resident (on the
        GPU a per-batch upload of the indices is a copy from pageable memory every step); None otherwise."""
        if self.labels_on_device is None or not batches:
            return None
        order = pipeline.to_device(torch.from_numpy(np.concatenate(batches).astype(np.int64)), self.device)
        return list(torch.split(order, [len(b) for b in batches]))

    def labels_for(self, pos: np.ndarray, pos_on_device: torch.Tensor | None = None) -> torch.Tensor:
        """Training labels at positions `pos` on the device (with fresh wrong ones under --noise-mode batch)."""
        noisy = self.config.noise > 0 and self.config.noise_mode == "batch"
        if pos_on_device is not None and self.labels_on_device is not None and not noisy:
            return self.labels_on_device[pos_on_device]
        y = self.data.train_labels[torch.from_numpy(np.asarray(pos, np.int64))]
        if self.config.noise > 0 and self.config.noise_mode == "batch":
            y = batch_noise(y, self.config.noise, self.data.info.num_classes, self.noise_gen)
        return pipeline.to_device(y, self.device)

    def prepare_batch(self, tiles_uint8: torch.Tensor, train: bool) -> torch.Tensor:
        """The steps of `pipeline.to_model_input`, with augmentation after stain normalisation when training."""
        x = pipeline.to_float01(tiles_uint8, self.device, self.data.input_size, channels_last=self.channels_last)
        x = stain.normalize_batch(x, self.data.stain)
        if train:
            x = augment.augment_batch(x, self.config.augment, self.aug_gen)
        x = x.sub_(self.mean_t).div_(self.std_t)  # x is this batch's own float copy
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # -- steps -----------------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda" if self.cuda else "cpu", dtype=self.amp_dtype)

    def set_train_mode(self) -> None:
        self.net.train()
        if self.backbone_frozen:  # frozen BatchNorm statistics too: only the head learns
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a prepared batch: (loss, number right), both detached tensors. `index`: the
        batch's positions in the train source (per-tile state of the loss, e.g. ELR). With --mixup the batch is
        blended with a permutation of itself and the loss is the same blend of the two labels' losses."""
        perm, lam = None, 1.0
        if self.config.mixup > 0 and getattr(self.criterion, "mixup_now", True):  # divide: none in its warm-up
            x, perm, lam = mixup_batch(x, self.config.mixup, self.mixup_gen)
        with self._autocast():
            logits = self.net(x)
            loss = self.criterion(logits.float(), y, index)
            if perm is not None:
                other = None if index is None else index[perm.cpu()]
                loss = lam * loss + (1.0 - lam) * self.criterion(logits.float(), y[perm], other)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self._update_scaler()
        else:
            loss.backward()
            self.optimizer.step()
        if self.scheduler is not None and self.per_batch_schedule:
            self.scheduler.step()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    def _update_scaler(self) -> None:
        """GradScaler.update, counting on the device (no wait) the steps it skipped in a row: a skipped step (inf or
        NaN gradients) is one where the scale went down."""
        before = getattr(self.scaler, "_scale", None)
        before = None if before is None else before.clone()
        self.scaler.update()
        after = getattr(self.scaler, "_scale", None)
        if before is None or after is None:
            return
        if self.skipped_in_a_row is None:
            self.skipped_in_a_row = torch.zeros((), dtype=torch.long, device=after.device)
        self.skipped_in_a_row = torch.where(after < before, self.skipped_in_a_row + 1, 0)

    def check_fp16(self) -> bool:
        """fp16 only: when the GradScaler skipped FP16_MAX_SKIPPED_STEPS steps in a row (the model overflows fp16
        whatever the scale), switch to fp32 for the rest of the run. True when it switched now."""
        if not self.scaler.is_enabled() or self.skipped_in_a_row is None:
            return False
        skipped = int(self.skipped_in_a_row)
        if skipped < FP16_MAX_SKIPPED_STEPS:
            return False
        self.fall_back_to_fp32(
            f"{self.precision} -> fp32 at epoch {self.epoch + 1}, batch {self.step}: the GradScaler skipped "
            f"{skipped} steps in a row (inf/NaN gradients)"
        )
        return True

    def fall_back_to_fp32(self, why: str) -> None:
        """From now on full fp32 (no autocast, no scaler); `why` goes into the log, results.json, checkpoints and
        the model card. The skipped steps left the weights as they were."""
        self.fallback = why
        self.amp_dtype, self.precision = None, precision_name(None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        self.skipped_in_a_row = None

    def train_batch(
        self, pos: np.ndarray, pos_on_device: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather, augment and train on the batch at positions `pos` (call `set_train_mode` first);
        `pos_on_device`: the same positions already on the device (`epoch_positions`)."""
        tiles = self.gather(pos) if pos_on_device is None or self.shard_log else self.data.train.gather(pos_on_device)
        x = self.prepare_batch(tiles, train=True)
        y = self.labels_for(pos, pos_on_device)
        if not getattr(self.criterion, "per_tile", False):  # no index tensor made for losses without per-tile state
            return self.train_step(x, y)
        return self.train_step(x, y, torch.from_numpy(np.asarray(pos, np.int64)))

    def zero_grad(self) -> None:  # after running out of memory: free the gradients the failed step held
        self.optimizer.zero_grad(set_to_none=True)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[-1]["lr"])

    def train_epoch(self, on_batch: Callable[[Trainer, int], bool] | None = None) -> dict[str, Any]:
        """Train epoch `self.epoch + 1` from batch `self.step` on. `on_batch(trainer, images)` runs after each
        batch; returning True stops at that batch boundary (StopRequested). Returns the epoch's train row."""
        cfg = self.config
        epoch = self.epoch
        if cfg.mode == "head-then-all" and self.backbone_frozen and epoch >= cfg.head_epochs:
            self._freeze_backbone(False)
        self.set_train_mode()
        batches = self.batches_of_epoch(epoch)
        on_device = self.epoch_positions(batches)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        lr = self.current_lr()
        t0 = time.perf_counter()
        for i in range(self.step, len(batches)):
            pos = batches[i]
            lr = self.current_lr()
            try:
                loss, right = self.train_batch(pos, None if on_device is None else on_device[i])
            except torch.OutOfMemoryError:  # the batches done so far stay counted, for last.pt
                self._fold_partial(loss_sum, correct, time.perf_counter() - t0)
                raise
            loss_sum += loss * len(pos)
            correct += right
            self.step = i + 1
            self.partial["seen"] += len(pos)
            if self.step % FP16_CHECK_STEPS == 0:
                self.check_fp16()
            if on_batch is not None and on_batch(self, len(pos)):
                self._fold_partial(loss_sum, correct, time.perf_counter() - t0)
                raise StopRequested()
        self._fold_partial(loss_sum, correct, time.perf_counter() - t0)
        p = self.partial
        if self.world > 1:
            loss_total, right_total, seen = sum_over_ranks([p["loss_sum"], p["correct"], p["seen"]], self.device)
            p = {"loss_sum": loss_total, "correct": int(right_total), "seen": int(seen), "seconds": p["seconds"]}
        row = {
            "epoch": epoch + 1,
            "train_loss": p["loss_sum"] / max(1, p["seen"]),
            "train_acc": p["correct"] / max(1, p["seen"]),
            "lr": lr,
            "seconds": p["seconds"],
            "images_per_s": p["seen"] / max(p["seconds"], 1e-9),
        }
        if self.scheduler is not None and not self.per_batch_schedule:
            self.scheduler.step()
        end_epoch = getattr(self.criterion, "end_epoch", None)
        if end_epoch is not None:  # e.g. boot's loss split, refitted on this epoch's losses (kept in last.pt)
            end_epoch(epoch + 1, cfg.epochs)
        wants, observe = getattr(self.criterion, "wants_predictions", None), getattr(self.criterion, "observe", None)
        if wants is not None and observe is not None and wants(epoch + 1, cfg.epochs):  # divide: its split's input
            observe(torch.from_numpy(self.predict(self.data.train)), self.data.train_labels, epoch + 1, cfg.epochs)
        self.epoch += 1
        self.step = 0
        self.partial = _empty_partial()
        return row

    def _fold_partial(self, loss_sum: torch.Tensor, correct: torch.Tensor, seconds: float) -> None:
        self.partial["loss_sum"] += float(loss_sum)
        self.partial["correct"] += int(correct)
        self.partial["seconds"] += seconds

    # -- evaluation ------------------------------------------------------------------------------------
    def input_spec(self) -> InputSpec:
        return InputSpec.of(self.data, channels_last=self.channels_last, amp_dtype=self.amp_dtype)

    def predict(
        self, source: pipeline.TileSource, tta: bool = False, on_batch: Callable[[], None] | None = None
    ) -> np.ndarray:
        """Softmax probabilities (N, K) float32 of a whole source (`histo_core.predict`, the one loop). Under
        torchrun every rank must call it: each predicts its contiguous share (`pipeline.shard_range`) and every
        rank gets all the rows, in order."""
        rows = pipeline.shard_range(len(source), self.rank, self.world) if self.world > 1 else None
        broadcast_buffers(self.model, self.world)  # every share seen by rank 0's model
        probs = predict_tiles(
            self.model,
            source,
            self.input_spec(),
            tta=tta,
            on_batch=on_batch,
            num_classes=self.data.info.num_classes,
            rows=rows,
        )
        if self.world <= 1:
            return probs
        return np.concatenate(gather_objects(probs, self.world))

    # -- resumable state (last.pt; weights_only-loadable: tensors, numbers, strings, lists, dicts) --------
    def rank_state(self) -> dict[str, Any]:
        """What differs between torchrun's ranks: their partial epoch counts and random streams (each rank
        augments and draws noise with its own generator). last.pt keeps one per rank under "ranks"."""
        return {
            "partial": dict(self.partial),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if self.cuda else None,
            "aug_gen": self.aug_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
        }

    def state(self, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The resumable state; `ranks`: every rank's `rank_state` (gathered by the caller), else this rank's."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "partial": dict(self.partial),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "backbone_frozen": self.backbone_frozen,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if self.cuda else None,
            "aug_gen": self.aug_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "fp32_fallback": self.fallback,
            "batch_size": self.config.batch_size,
            "ranks": ranks if ranks is not None else [self.rank_state()],
            "mixup_gen": self.mixup_gen.get_state(),
            "criterion": {k: v.detach().cpu() for k, v in self.criterion.state_dict().items()},
        }

    def batch_size_changed(self, state: dict[str, Any]) -> bool:
        saved = state.get("batch_size")
        return saved is not None and int(saved) != self.config.batch_size

    def load_state(self, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        ranks = state.get("ranks")
        own = ranks[self.rank] if ranks and len(ranks) == self.world else None
        own_streams = True
        if own is not None:
            state = {**state, **own}  # this rank's own counts and random streams
        elif self.world > 1 and (self.rank != 0 or ranks):
            # saved by another number of processes (or before per-rank state): rank 0's partial counts once; or
            # this rank's state was lost (a peer ran out of memory while this rank hung): its own seeded streams,
            # never another rank's
            state = {**state, "partial": _empty_partial()}
            own_streams = ranks is None or len(ranks) != self.world
        self.model.load_state_dict(weights)
        if self.config.mode in HEAD_MODES:
            self._freeze_backbone(bool(state["backbone_frozen"]))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.partial = dict(state["partial"])
        if self.batch_size_changed(state):  # e.g. lowered after running out of GPU memory
            # the epoch's batches are other slices now: it restarts at its first batch, and a per-batch schedule
            # continues from the first step of this epoch at the new number of steps per epoch
            self.step, self.partial = 0, _empty_partial()
            if self.per_batch_schedule:
                self.scheduler = self._build_scheduler()
                done = self.epoch * self.steps_per_epoch
                if done:
                    self.scheduler.last_epoch = done - 1
                    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose
                        warnings.simplefilter("ignore", UserWarning)
                        self.scheduler.step()
        if own_streams:
            torch.set_rng_state(state["torch_rng"])
            if self.cuda and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"])
            self.aug_gen.set_state(state["aug_gen"])
            self.noise_gen.set_state(state["noise_gen"])
        if state.get("fp32_fallback") and self.scaler.is_enabled():  # fp16 overflowed before the stop: stay in fp32
            self.fall_back_to_fp32(str(state["fp32_fallback"]))
        if self.scaler.is_enabled() and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        if state.get("mixup_gen") is not None:  # absent in the last.pt of runs from before --mixup
            self.mixup_gen.set_state(state["mixup_gen"])
        if state.get("criterion"):
            self.criterion.load_state_dict(state["criterion"])
