"""The training engine.

    config = default_config("pathmnist")                  # sensible defaults for the data and the device
    info = check_config(config)                           # every check, before any process or run dir
    run = prepare_run(config)                             # runs/<id>/ with config.json, status "queued"
    results = run_training(run)                           # in this process; what `python -m histo_core train` does

One `Trainer` does the work for runs, for in-process fits (`fit_arrays`, used by label-error detection),
for throughput estimates and for the LR finder. Batches come from `histo_core.pipeline` (uint8 tiles,
converted and augmented on the device); DDP is used when started under torchrun (WORLD_SIZE > 1).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histo_core import checkpoint as ckpt_mod
from histo_core import ood, pipeline, runtime, stain
from histo_core.config import TrainConfig
from histo_core.datasets import DatasetInfo, Split, TileDataset, open_dataset
from histo_core.errors import ConfigError, DatasetError, HistoError
from histo_core.fsutil import savez_atomic, write_json_atomic
from histo_core.losses import build_loss
from histo_core.metrics import classification_report, per_sample_loss
from histo_core.models import (
    build_model,
    check_input,
    get_arch,
    head_module,
    load_pretrained_state,
    set_backbone_trainable,
)
from histo_core.noise import batch_noise, fixed_noise
from histo_core.runs import RunDir, RunStatus, create_run_dir, new_run_id

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HEARTBEAT_S = 3.0
EVAL_BATCH = 512
EVAL_PIXELS = 128 * 96 * 96  # per evaluation batch on CPU: large batches, bounded activation memory


def eval_batch_size(input_size: int, device: torch.device | str = "cpu", requested: int = EVAL_BATCH) -> int:
    """Evaluation batch: `requested`, but no more pixels than EVAL_PIXELS (x4 on a GPU) and at least 8 tiles."""
    budget = EVAL_PIXELS * (4 if torch.device(device).type == "cuda" else 1)
    return int(max(8, min(requested, budget // max(1, input_size * input_size))))


# -- defaults and checks ---------------------------------------------------------------------------
def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; an unavailable 'cuda' is a ConfigError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False); "
            "use --device cpu or auto"
        )
    return name


SMALL_TRAIN_SET = 1000  # below this many training tiles, hold-out validation costs more than it tells


def _peek_dataset(spec: str) -> tuple[DatasetInfo | None, int, bool]:
    """(info, train tiles, has a val split) of a dataset, or (None, 0, False) when it cannot be opened yet."""
    try:
        ds = open_dataset(spec)
    except HistoError:
        return None, 0, False
    val = ds.splits.get("val")
    return ds.info, len(ds.splits.get("train", ())), val is not None and len(val) > 0


def default_config(dataset_spec: str, device: str = "auto") -> TrainConfig:
    """Defaults that fit the data and the device (see benchmarks/RESULTS.md for the measurements).

    CPU, tiles up to 64 px: ResNet-9 (compact), AdamW + one-cycle at 3e-3, flips + 90-degree rotations
    (label-preserving for tissue; colour jitter and geometric warps measured worse on PathMNIST), flip and
    rotation TTA. On a small labelled set (< 1000 training tiles, e.g. pathmnist-mini) it trains on
    train+val for 60 epochs: about a minute on 2 cores for 200 tiles, >= 90% on held-out real PathMNIST
    tiles. Larger sets get fewer epochs and bigger batches (a full 90k-tile PathMNIST epoch takes minutes).
    Tiles above 64 px on CPU get cnn3 (ResNet-9 costs 12x more at 96 px). CUDA: ResNet-18 with the
    small-input stem below 64 px, bf16 autocast, channels-last, larger batches.
    """
    dev = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    info, n_train, has_val = _peek_dataset(dataset_spec)
    size = info.size if info else 28
    cfg = TrainConfig(dataset=dataset_spec, device=device)
    cfg.optimizer, cfg.schedule, cfg.weight_decay, cfg.lr = "adamw", "onecycle", 5e-4, 3e-3
    cfg.augment.flip = cfg.augment.rot90 = True
    cfg.tta = True
    small = 0 < n_train < SMALL_TRAIN_SET
    if small and has_val:
        cfg.train_splits = "train+val"
    if small:
        cfg.epochs, cfg.batch_size = 60, 32
    elif n_train < 10_000:
        cfg.epochs, cfg.batch_size = 30, 64
    elif n_train < 50_000:
        cfg.epochs, cfg.batch_size = 15, 128
    elif n_train < 150_000:
        cfg.epochs, cfg.batch_size = 8, 128
    else:
        cfg.epochs, cfg.batch_size = 3, 128
    if dev == "cuda":
        cfg.arch, cfg.lr = "resnet18", 2e-3
        cfg.batch_size = 32 if small else 256
        cfg.epochs = cfg.epochs if small else max(cfg.epochs, 10)
    else:
        cfg.arch = "resnet9" if size <= 64 else "cnn3"
    return cfg


def open_config_dataset(config: TrainConfig) -> TileDataset:
    return open_dataset(
        config.dataset, size=config.size, as_rgb=config.as_rgb, data_dir=config.data_dir, seed=config.seed
    )


def input_size_of(config: TrainConfig, info: DatasetInfo) -> int:
    return int(config.size or info.size)


def check_config(config: TrainConfig) -> DatasetInfo:
    """Every check that can fail before training starts. Raises HistoError subclasses."""
    config.validate()
    resolve_device(config.device)
    ds = open_config_dataset(config)
    info = ds.info
    if "train" not in ds.splits or len(ds.splits["train"]) == 0:
        raise DatasetError(f"{config.dataset}: has no (non-empty) train split to train on")
    if config.train_splits == "train+val" and "val" not in ds.splits:
        raise DatasetError(f"{config.dataset}: --train-splits train+val, but the dataset has no val split")
    if config.early_stopping and "val" not in ds.splits:
        raise DatasetError(f"{config.dataset}: --early-stopping needs a val split, and this dataset has none")
    if info.num_classes < 2:
        raise DatasetError(f"{config.dataset}: a classifier needs at least 2 classes, found {info.num_classes}")
    check_input(config.arch, input_size_of(config, info), info.channels)
    if config.pretrained:
        if not get_arch(config.arch).has_backbone:
            raise ConfigError(
                f"--pretrained: no ImageNet weights exist for {config.arch}; use resnet18, resnet50 or densenet121"
            )
        load_pretrained_state(config.arch)  # raises a HistoError naming where to put the file when offline
    return info


# -- data ------------------------------------------------------------------------------------------
class ConcatSplit:
    """Several splits served as one (for --train-splits train+val); indices run through them in order."""

    def __init__(self, name: str, parts: list[Split]):
        self.name = name
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.labels = np.concatenate([p.labels for p in parts])
        self.lazy = any(p.lazy for p in parts)
        shapes = {p.tile_shape for p in parts}
        if len(shapes) != 1:
            raise DatasetError(f"cannot train on splits with different tile shapes: {sorted(shapes)}")
        self.tile_shape = shapes.pop()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, indices: Any) -> np.ndarray:
        idx = np.arange(len(self))[indices] if isinstance(indices, slice) else np.asarray(indices, np.int64).reshape(-1)
        h, w, c = self.tile_shape
        out = np.empty((len(idx), h, w, c), np.uint8)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        for i, p in enumerate(self.parts):
            sel = np.flatnonzero(part == i)
            if len(sel):
                out[sel] = p.get(idx[sel] - self.offsets[i])
        return out

    def load_all(self) -> np.ndarray:
        return np.concatenate([p.load_all() for p in self.parts])


@dataclass
class TrainData:
    info: DatasetInfo
    input_size: int
    train: pipeline.TileSource
    train_labels: torch.Tensor  # (possibly noisy) labels used for training, CPU int64
    clean_train_labels: np.ndarray
    val: pipeline.TileSource | None
    test: pipeline.TileSource | None
    mean: list[float]
    std: list[float]
    train_indices: np.ndarray  # rows of the training split(s) used (max_train_samples may subsample)
    noise_flipped: np.ndarray | None = None
    stain: dict[str, Any] | None = None  # stain reference fitted on the training tiles (histo_core.stain)


def _sample_for_stats(split) -> np.ndarray:
    n = len(split)
    if not (split.lazy or isinstance(getattr(split, "images", None), np.memmap)):
        idx = np.sort(np.random.default_rng(0).choice(n, min(n, 10_000), replace=False))
        return split.get(idx)
    # file-backed: four contiguous blocks spread over the file (sequential reads, bounded memory)
    blocks = [split.get(slice(s, min(n, s + 512))) for s in np.linspace(0, max(0, n - 512), 4).astype(int)]
    return np.concatenate(blocks)


def build_train_data(config: TrainConfig, ds: TileDataset, device: str, *, need_test: bool = True) -> TrainData:
    info = ds.info
    train_split = ds.split("train")
    if config.train_splits == "train+val":
        train_split = ConcatSplit("train+val", [ds.split("train"), ds.split("val")])
    n = len(train_split)
    indices = np.arange(n)
    if config.max_train_samples and config.max_train_samples < n:
        rng = np.random.default_rng([config.seed, 2024])
        indices = np.sort(rng.choice(n, config.max_train_samples, replace=False))
    train = pipeline.TileSource(train_split, device, indices=None if len(indices) == n else indices)
    clean = train.labels.numpy().copy()
    labels, flipped = clean, None
    if config.noise > 0 and config.noise_mode in ("fixed", "pair"):
        labels, flipped = fixed_noise(clean, config.noise, info.num_classes, config.seed, config.noise_mode)
    if config.pretrained:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        if info.channels == 1:
            mean, std = [float(np.mean(mean))], [float(np.mean(std))]
    sample = _sample_for_stats(train_split)
    if not config.pretrained:
        mean, std = pipeline.channel_stats(sample)
    stain_ref = _fit_stain(config, sample)
    val = None
    if config.train_splits == "train" and "val" in ds.splits and len(ds.splits["val"]):
        val = pipeline.TileSource(ds.splits["val"], device)
    test = (
        pipeline.TileSource(ds.splits["test"], device)
        if need_test and "test" in ds.splits and len(ds.splits["test"])
        else None
    )
    return TrainData(
        info,
        input_size_of(config, info),
        train,
        torch.from_numpy(np.asarray(labels, np.int64)),
        clean,
        val,
        test,
        mean,
        std,
        indices,
        flipped,
        stain_ref,
    )


def _fit_stain(config: TrainConfig, sample: np.ndarray) -> dict[str, Any] | None:
    try:
        return stain.fit_reference(config.stain_norm, sample, seed=config.seed)
    except ValueError as exc:
        raise ConfigError(f"--stain-norm {config.stain_norm}: {exc}") from None


def model_meta(config: TrainConfig, data: TrainData) -> dict[str, Any]:
    info = data.info
    return {
        "arch": config.arch,
        "num_classes": info.num_classes,
        "in_channels": info.channels,
        "input_size": data.input_size,
        "classes": list(info.classes),
        "mean": list(data.mean),
        "std": list(data.std),
        "mlp_head": uses_mlp_head(config),
        "stain": data.stain,
        "tta": bool(config.tta),
        "dataset": {
            "name": info.name,
            "title": info.title,
            "synthetic": info.synthetic,
            "source": info.source,
            "size": info.size,
            "channels": info.channels,
            **_scale_of(config, info),
        },
    }


def _scale_of(config: TrainConfig, info: DatasetInfo) -> dict[str, Any]:
    """The source scale of the training tiles, when known: native tile px and µm per px (see inference.source_scale)."""
    from histo_core.inference import source_scale

    px, mpp = source_scale({**info.to_dict(), **({"mpp": config.mpp} if config.mpp else {})})
    return {k: v for k, v in (("native_tile_px", px), ("mpp", config.mpp or mpp)) if v}


def uses_mlp_head(config: TrainConfig) -> bool:
    return config.mode in ("frozen", "fine_tune")


# -- device setup ----------------------------------------------------------------------------------
def setup_device(config: TrainConfig, local_rank: int = 0) -> torch.device:
    dev = resolve_device(config.device)
    if dev == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    torch.set_num_threads(config.threads or runtime.default_threads())
    return torch.device("cpu")


def fused_optimizer_ok(model: nn.Module) -> bool:
    """Fused optimizer kernels exist for floating-point parameters on CPU and CUDA; $HISTO_FUSED_OPTIMIZER=0 turns
    them off (the per-parameter loop, torch's CPU default)."""
    if os.environ.get("HISTO_FUSED_OPTIMIZER", "1") == "0":
        return False
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels and FX graphs between runs: $TORCHINDUCTOR_CACHE_DIR, else
    <data dir>/torchinductor (next to the dataset cache, so it survives reboots, unlike /tmp)."""
    from histo_core import paths

    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(env) if env else paths.data_dir() / "torchinductor"


def compile_module(module: nn.Module) -> nn.Module:
    """torch.compile (inductor: C++/OpenMP on CPU, Triton on CUDA) with the on-disk caches switched on, so a second
    run of the same architecture skips most of the compile. The checkpointed module stays the uncompiled one
    (Trainer.model), so saved state dicts carry no `_orig_mod.` prefix."""
    cache = compile_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return torch.compile(module)


# -- the trainer -----------------------------------------------------------------------------------
class StopRequested(Exception):
    """Raised inside an epoch when a cancel was requested; the trainer state is consistent at that point."""


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
        # channels-last measured faster on CPU too (x1.1-1.6 for every architecture here; benchmarks/RESULTS.md)
        self.channels_last = bool(config.channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = torch.bfloat16 if (self.cuda and config.amp) else None
        self.head_ids = (
            {id(p) for p in head_module(self.model, config.arch).parameters()}
            if get_arch(config.arch).has_backbone
            else set()
        )
        self.backbone_frozen = False
        self.shard_log = os.environ.get("HISTO_SHARD_LOG") or None
        self.net: nn.Module = self.model
        if world > 1:  # wrapped before freezing, so that DDP also syncs the backbone once it is unfrozen
            self.net = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[device.index] if self.cuda else None,
                find_unused_parameters=config.mode in ("frozen", "fine_tune"),
            )
        if config.mode in ("frozen", "fine_tune") and (config.mode == "frozen" or config.head_epochs > 0):
            self._freeze_backbone(True)
        if config.compile:
            self.net = compile_module(self.net)
        self.optimizer = self._build_optimizer()
        self.steps_per_epoch = len(self._batches_of_epoch(0))
        self.scheduler = self._build_scheduler()
        self.criterion = build_loss(
            config.loss,
            info.num_classes,
            label_smoothing=config.label_smoothing,
            sce_alpha=config.sce_alpha,
            sce_beta=config.sce_beta,
        )
        gen_device = device if self.cuda else torch.device("cpu")
        self.aug_gen = torch.Generator(device=gen_device).manual_seed(config.seed * 1000 + 17 + rank)
        self.noise_gen = torch.Generator().manual_seed(config.seed * 1000 + 29 + rank)
        self.epoch = 0  # epochs finished
        self.step = 0  # batches finished in the current epoch
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.mean_t = torch.tensor(pipeline._per_channel(data.mean, info.channels), device=device).view(1, -1, 1, 1)
        self.std_t = torch.tensor(pipeline._per_channel(data.std, info.channels), device=device).view(1, -1, 1, 1)

    # setup
    def _freeze_backbone(self, frozen: bool) -> None:
        set_backbone_trainable(self.model, self.config.arch, not frozen)
        self.backbone_frozen = frozen

    def _param_groups(self) -> list[dict[str, Any]]:
        cfg = self.config
        params = list(self.model.parameters())
        if cfg.mode == "frozen":
            return [{"params": [p for p in params if id(p) in self.head_ids], "lr": cfg.lr}]
        if cfg.mode == "fine_tune":
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
        fused = {"fused": True} if fused_optimizer_ok(self.model) else {}
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(
                groups,
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                nesterov=cfg.momentum > 0,
                **fused,
            )
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)

    def _build_scheduler(self):
        cfg = self.config
        if cfg.schedule == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.step_size, cfg.gamma)
        if cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        if cfg.schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer,
                max_lr=[g["lr"] for g in self.optimizer.param_groups],
                total_steps=max(1, cfg.epochs * self.steps_per_epoch),
                pct_start=0.25,
                cycle_momentum=cfg.optimizer == "sgd",
            )
        return None

    @property
    def per_batch_schedule(self) -> bool:
        return self.config.schedule == "onecycle"

    # batches
    def _batches_of_epoch(self, epoch: int) -> list[np.ndarray]:
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

    def _gather(self, pos: np.ndarray) -> torch.Tensor:
        if self.shard_log is not None:  # $HISTO_SHARD_LOG: which tiles each rank trained on (the multi-node test)
            with open(Path(self.shard_log) / f"rank{self.rank}.txt", "a") as fh:
                fh.write(f"{self.epoch + 1} {','.join(str(int(i)) for i in np.asarray(pos).reshape(-1))}\n")
        return self.data.train.gather(pos)

    def prepare_batch(self, tiles_uint8: torch.Tensor, train: bool) -> torch.Tensor:
        """The steps of `pipeline.to_model_input`, with augmentation after stain normalisation when training."""
        x = stain.normalize_batch(pipeline.to_float01(tiles_uint8, self.device, self.data.input_size), self.data.stain)
        if train:
            x = pipeline.augment_batch(x, self.config.augment, self.aug_gen)
        x = (x - self.mean_t) / self.std_t
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def set_train_mode(self) -> None:
        self.net.train()
        if self.backbone_frozen:  # frozen BatchNorm statistics too: only the head learns
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _labels_for(self, pos: np.ndarray) -> torch.Tensor:
        y = self.data.train_labels[torch.from_numpy(np.asarray(pos, np.int64))]
        if self.config.noise > 0 and self.config.noise_mode == "batch":
            y = batch_noise(y, self.config.noise, self.data.info.num_classes, self.noise_gen)
        return y.to(self.device, non_blocking=True)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            logits = self.net(x)
            loss = self.criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None and self.per_batch_schedule:
            self.scheduler.step()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[-1]["lr"])

    def train_epoch(self, on_batch: Callable[[Trainer, int], bool] | None = None) -> dict[str, Any]:
        """Train epoch `self.epoch + 1` from batch `self.step` on. `on_batch(trainer, images)` runs after each
        batch; returning True stops at that batch boundary (StopRequested). Returns the epoch's train row."""
        cfg = self.config
        epoch = self.epoch
        if cfg.mode == "fine_tune" and self.backbone_frozen and epoch >= cfg.head_epochs:
            self._freeze_backbone(False)
        self.set_train_mode()
        batches = self._batches_of_epoch(epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        lr = self.current_lr()
        t0 = time.perf_counter()
        for i in range(self.step, len(batches)):
            pos = batches[i]
            x = self.prepare_batch(self._gather(pos), train=True)
            y = self._labels_for(pos)
            lr = self.current_lr()
            loss, right = self.train_step(x, y)
            loss_sum += loss * len(pos)
            correct += right
            self.step = i + 1
            self.partial["seen"] += len(pos)
            if on_batch is not None and on_batch(self, len(pos)):
                self._fold_partial(loss_sum, correct, time.perf_counter() - t0)
                raise StopRequested()
        self._fold_partial(loss_sum, correct, time.perf_counter() - t0)
        p = self.partial
        if self.world > 1:
            p = self._all_reduce_partial(p)
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
        self.epoch += 1
        self.step = 0
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        return row

    def _fold_partial(self, loss_sum: torch.Tensor, correct: torch.Tensor, seconds: float) -> None:
        self.partial["loss_sum"] += float(loss_sum)
        self.partial["correct"] += int(correct)
        self.partial["seconds"] += seconds

    def _all_reduce_partial(self, p: dict[str, Any]) -> dict[str, Any]:
        import torch.distributed as dist

        t = torch.tensor(
            [p["loss_sum"], p["correct"], p["seen"]], dtype=torch.float64, device=self.device if self.cuda else "cpu"
        )
        dist.all_reduce(t)
        return {"loss_sum": float(t[0]), "correct": int(t[1]), "seen": int(t[2]), "seconds": p["seconds"]}

    # evaluation
    def predict(
        self, source: pipeline.TileSource, tta: bool = False, on_batch: Callable[[], None] | None = None
    ) -> np.ndarray:
        return predict_source(
            self.model,
            source,
            self.data.mean,
            self.data.std,
            self.device,
            self.data.input_size,
            tta=tta,
            channels_last=self.channels_last,
            amp_dtype=self.amp_dtype,
            on_batch=on_batch,
            stain_ref=self.data.stain,
        )

    # resumable state (checkpointed in last.pt; weights_only-loadable: tensors, numbers, strings, lists, dicts)
    def state(self) -> dict[str, Any]:
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
        }

    def load_state(self, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)
        self._freeze_backbone(bool(state["backbone_frozen"])) if self.config.mode in ("frozen", "fine_tune") else None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.partial = dict(state["partial"])
        torch.set_rng_state(state["torch_rng"])
        if self.cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.aug_gen.set_state(state["aug_gen"])
        self.noise_gen.set_state(state["noise_gen"])


def predict_source(
    model: nn.Module,
    source: pipeline.TileSource,
    mean,
    std,
    device: torch.device,
    input_size: int,
    *,
    tta: bool = False,
    channels_last: bool = False,
    amp_dtype=None,
    batch_size: int = EVAL_BATCH,
    on_batch: Callable[[], None] | None = None,
    stain_ref: dict | None = None,
) -> np.ndarray:
    """Softmax probabilities (N, K) float32 for a whole source, in large batches under inference_mode;
    with `tta`, the mean over the 8 flips/rotations of each tile."""
    model.eval()
    out = []
    with torch.inference_mode():
        for _, tiles in source.iter_sequential(eval_batch_size(input_size, device, batch_size)):
            out.append(
                _predict_tensor(model, tiles, mean, std, device, input_size, tta, channels_last, amp_dtype, stain_ref)
            )
            if on_batch is not None:
                on_batch()
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out).astype(np.float32)


def _predict_tensor(
    model, tiles, mean, std, device, input_size, tta, channels_last, amp_dtype, stain_ref=None
) -> np.ndarray:
    x = pipeline.to_model_input(
        tiles, mean, std, device, channels_last=channels_last, size=input_size, stain_ref=stain_ref
    )
    views = pipeline.dihedral_views(x) if tta else [x]
    ctx = torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with ctx:
        probs = sum(F.softmax(model(v).float(), dim=1) for v in views) / len(views)
    return probs.cpu().numpy()


# -- distributed -----------------------------------------------------------------------------------
def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: str) -> tuple[int, int]:
    """Join the process group when started by torchrun (gloo on CPU, nccl on CUDA)."""
    import datetime

    import torch.distributed as dist

    rank, world, local = dist_env()
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if resolve_device(device) == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return dist.get_rank(), dist.get_world_size()


def _broadcast(obj: Any, world: int) -> Any:
    if world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    if world <= 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# -- runs ------------------------------------------------------------------------------------------
def prepare_run(config: TrainConfig, runs_root: str | os.PathLike | None = None) -> RunDir:
    """Check everything, then create the run directory with config.json, dataset.json and a queued status."""
    info = check_config(config)
    run = create_run_dir(
        runs_root,
        new_run_id(config.name, config.arch, info.name if not Path(info.name).exists() else Path(info.name).stem),
    )
    write_json_atomic(run.config_path, config.to_dict())
    write_json_atomic(run.dataset_path, info.to_dict())
    run.write_status(RunStatus(state="queued", epochs=config.epochs, device=resolve_device(config.device)))
    return run


class _StatusWriter:
    """The run's status, kept in memory and written atomically; a daemon thread refreshes the heartbeat
    every few seconds, so even one slow batch (ResNet-50 on CPU) never looks like a dead process."""

    def __init__(self, run: RunDir, enabled: bool):
        self.run, self.enabled = run, enabled
        self.status = run.status()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, **changes: Any) -> None:
        if not self.enabled:
            return
        with self.lock:
            for k, v in changes.items():
                setattr(self.status, k, v)
            self.status.heartbeat = time.time()
            self.run.write_status(self.status)

    def start_heartbeat(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.update()
            except OSError:
                pass  # a full disk is reported by the main thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _CancelFlag:
    """Set by SIGTERM/SIGINT or by the run's `cancel` file; checked at batch boundaries."""

    def __init__(self, run: RunDir):
        self.run = run
        self.signalled = False
        self._last_check = 0.0
        self._file = False

    def install(self) -> None:
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signalled:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the batch to end
        self.signalled = True

    def requested(self) -> bool:
        """Checked at every batch (and while queued); raises RunFolderGone when the run folder was deleted."""
        now = time.monotonic()
        if now - self._last_check > 0.25:
            self._last_check = now
            if not self.run.path.is_dir():
                raise RunFolderGone(str(self.run.path))
            self._file = self._file or self.run.cancel_requested()
        return self.signalled or self._file


class RunFolderGone(Exception):
    """The run folder disappeared while training: the trainer stops and writes nothing."""


def _own_start_time() -> int | None:
    from histo_core.jobs import proc_start_time

    return proc_start_time(os.getpid())


def _log(run: RunDir, text: str, rank: int = 0) -> None:
    if rank != 0:
        return
    print(text, file=sys.stderr, flush=True)


def _append_log(run: RunDir, text: str) -> None:
    try:
        with open(run.log_path, "a", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
    except OSError:
        pass


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, HistoError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing the run ({exc.filename or ''}): free space and resume the run"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return f"cannot write the run directory ({exc.filename or ''}: {exc.strerror}); check its permissions"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]


def _monitor_value(row: dict[str, Any], monitor: str) -> float | None:
    v = row.get(monitor)
    return None if v is None else float(v)


def _improved(value: float | None, best: float | None, monitor: str, min_delta: float) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    return value < best - min_delta if monitor == "val_loss" else value > best + min_delta


def run_training(run: RunDir, resume: bool = False) -> dict[str, Any]:
    """Execute the run described by run/config.json in this process (see the module doc of runs.py for the
    files written). Returns {"run_dir", "state", "test", "val", ...}; never raises for a failed run."""
    rank, world, local_rank = dist_env()
    if world > 1:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    writer = _StatusWriter(run, enabled=rank == 0)
    cancel = _CancelFlag(run)
    cancel.install()
    try:
        config = TrainConfig.from_dict(run.config())
        device_name = resolve_device(config.device)
        if world > 1:
            results = _train_when_slot_free(run, config, writer, cancel, resume, rank, world, local_rank)
        else:
            from histo_core.slots import device_slot

            def waiting() -> None:
                writer.update(state="queued")
                if cancel.requested():
                    raise StopRequested()

            writer.update(state="queued", pid=os.getpid(), pid_start=_own_start_time())
            with device_slot(device_name, runs_root=run.path.parent, on_wait=waiting):
                results = _train_when_slot_free(run, config, writer, cancel, resume, rank, world, local_rank)
        return results
    except RunFolderGone:  # deleted under us: stop, write nothing (writers never re-create the folder)
        _log(run, f"{run.path}: the run folder was deleted; stopping without saving", rank)
        return {"run_dir": str(run.path), "state": "deleted", "test": None}
    except StopRequested:
        writer.update(state="cancelled", finished_at=time.time(), phase="")
        _log(run, f"{run.id}: cancelled", rank)
        return {"run_dir": str(run.path), "state": "cancelled", "test": None}
    except BaseException as exc:  # noqa: BLE001 - every failure must end as state "failed"
        if isinstance(exc, KeyboardInterrupt):
            line = "interrupted (Ctrl-C)"
        else:
            line = _error_line(exc)
        if rank == 0:
            _append_log(run, traceback.format_exc())
            try:
                writer.update(state="failed", error=line, finished_at=time.time(), phase="")
            except OSError:
                pass
        _log(run, f"{run.id}: failed: {line}", rank)
        return {"run_dir": str(run.path), "state": "failed", "error": line, "test": None}
    finally:
        writer.stop()
        cancel.restore()


def _train_when_slot_free(
    run: RunDir,
    config: TrainConfig,
    writer: _StatusWriter,
    cancel: _CancelFlag,
    resume: bool,
    rank: int,
    world: int,
    local_rank: int,
) -> dict[str, Any]:
    device = setup_device(config, local_rank)
    writer.update(
        state="running",
        pid=os.getpid(),
        pid_start=_own_start_time(),
        started_at=time.time(),
        error=None,
        finished_at=None,
        epochs=config.epochs,
        device=str(device),
        phase="loading data",
    )
    writer.start_heartbeat()
    ds = open_config_dataset(config)
    data = build_train_data(config, ds, str(device))
    trainer = Trainer(config, data, device, rank=rank, world=world)
    meta = model_meta(config, data)
    best = {"value": None, "epoch": 0, "bad_epochs": 0}
    if resume:
        best = _resume(run, trainer, rank)
    elif rank == 0:
        write_json_atomic(run.dataset_path, data.info.to_dict())
        if run.metrics_path.exists():
            run.metrics_path.unlink()
    if rank == 0 and data.noise_flipped is not None:
        savez_atomic(
            run.noise_path,
            noisy_labels=data.train_labels.numpy(),
            flipped=data.noise_flipped,
            clean_labels=data.clean_train_labels,
            indices=data.train_indices,
        )

    steps = trainer.steps_per_epoch
    writer.update(phase="train", epoch=trainer.epoch, step=trainer.step, steps_per_epoch=steps)
    started = time.time()
    state = {"last_write": 0.0, "t0": time.perf_counter(), "images": 0}

    def on_batch(tr: Trainer, images: int) -> bool:
        state["images"] += images
        now = time.perf_counter()
        stop = cancel.requested()
        if world > 1:
            stop = _any_rank(stop, world, device)
        if now - state["last_write"] >= 1.0 or stop:
            ips = state["images"] * world / max(now - state["t0"], 1e-9)
            left = (config.epochs - tr.epoch) * steps - tr.step
            writer.update(
                step=tr.step,
                images_per_s=round(ips, 1),
                eta_s=round(left * config.batch_size * world / max(ips, 1e-9), 1),
            )
            state["last_write"] = now
        return stop

    def save_last(extra_best: dict[str, Any]) -> None:
        if rank == 0:
            ckpt_mod.save_checkpoint(
                run.last_ckpt,
                trainer.model,
                meta,
                epoch=trainer.epoch,
                train_state={**trainer.state(), "best": dict(extra_best)},
            )

    stopped_early = False
    while trainer.epoch < config.epochs:
        try:
            row = trainer.train_epoch(on_batch)
        except StopRequested:
            save_last(best)
            raise
        writer.update(phase="validate", epoch=trainer.epoch, step=0)
        val_report = None
        if data.val is not None and rank == 0:
            val_probs = trainer.predict(data.val)
            val_report = classification_report(val_probs, data.val.labels.numpy(), data.info.classes)
            write_json_atomic(run.file("val_latest.json"), {**val_report, "epoch": trainer.epoch, "split": "val"})
        row.update(
            val_loss=val_report["loss"] if val_report else None,
            val_acc=val_report["accuracy"] if val_report else None,
            val_auc=val_report["auc"] if val_report else None,
        )
        row = {
            k: row[k]
            for k in (
                "epoch",
                "train_loss",
                "train_acc",
                "val_loss",
                "val_acc",
                "val_auc",
                "lr",
                "seconds",
                "images_per_s",
            )
        }
        if rank == 0:
            value = _monitor_value(row, config.monitor)
            if data.val is None or _improved(value, best["value"], config.monitor, config.min_delta):
                best.update(value=value, epoch=trainer.epoch, bad_epochs=0)
                ckpt_mod.save_checkpoint(run.best_ckpt, trainer.model, meta, epoch=trainer.epoch, metrics=row)
            else:
                best["bad_epochs"] += 1
            run.append_metrics(row)
            save_last(best)
            _log(run, _epoch_line(row, config.epochs), rank)
        stop_now = config.early_stopping and best["bad_epochs"] >= config.patience and trainer.epoch < config.epochs
        stop_now = bool(_broadcast(stop_now, world))
        writer.update(phase="train", epoch=trainer.epoch, step=0)
        if stop_now:
            stopped_early = True
            _log(run, f"early stopping: no {config.monitor} improvement for {config.patience} epochs", rank)
            break
        if _any_rank(cancel.requested(), world, device):
            raise StopRequested()

    train_seconds = time.time() - started
    results: dict[str, Any] = {"run_dir": str(run.path), "state": "completed"}
    if rank == 0:
        writer.update(phase="test")
        final = _final_evaluation(run, config, data, device, trainer, best)
        results.update(final)
        results_doc = {
            **final,
            "stopped_early": stopped_early,
            "train_seconds": round(train_seconds, 2),
            "device": str(device),
        }
        write_json_atomic(run.results_path, results_doc)
        results.update(stopped_early=stopped_early, train_seconds=results_doc["train_seconds"])
        writer.update(phase="embed")  # features + 2-D map of every tile, for the Feature map page (never fails the run)
        from histo_core.embeddings import embed_at_end_of_training

        embed_at_end_of_training(run, trainer.model, lambda line: _log(run, line, rank))
        writer.update(state="completed", finished_at=time.time(), phase="", epoch=trainer.epoch, step=0, eta_s=0.0)
        t = final.get("test")
        _log(
            run,
            f"{run.id}: completed"
            + (
                f", test accuracy {t['accuracy']:.4f}, auc {t['auc'] if t['auc'] is None else round(t['auc'], 4)}"
                if t
                else ""
            ),
            rank,
        )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return results


def _resume(run: RunDir, trainer: Trainer, rank: int) -> dict[str, Any]:
    if not run.last_ckpt.exists():
        raise HistoError(f"{run.path}: nothing to resume (no last.pt); start the run again without --resume")
    ckpt = ckpt_mod.load_checkpoint(run.last_ckpt)
    state = ckpt.get("train_state")
    if not state:
        raise HistoError(f"{run.last_ckpt}: has no training state to resume from")
    trainer.load_state(state, ckpt["state_dict"])
    if rank == 0:
        run.truncate_metrics(trainer.epoch)
    return dict(state.get("best") or {"value": None, "epoch": 0, "bad_epochs": 0})


def _final_evaluation(
    run: RunDir, config: TrainConfig, data: TrainData, device: torch.device, trainer: Trainer, best: dict[str, Any]
) -> dict[str, Any]:
    """Test (and val) reports and prediction files from best.pt."""
    ckpt = ckpt_mod.load_checkpoint(run.best_ckpt) if run.best_ckpt.exists() else None
    if ckpt is not None:
        trainer.model.load_state_dict(ckpt["state_dict"])
    out: dict[str, Any] = {
        "best_epoch": int(best.get("epoch") or trainer.epoch),
        "epochs_run": trainer.epoch,
        "test": None,
        "val": None,
    }
    heldout: dict[str, np.ndarray] = {}
    for split, source in (("test", data.test), ("val", data.val)):
        if source is None:
            continue
        probs = heldout[split] = trainer.predict(source, tta=config.tta)
        labels = source.labels.numpy()
        out[split] = classification_report(probs, labels, data.info.classes)
        out[split]["tta"] = bool(config.tta)
        savez_atomic(
            run.predictions_path(split),
            probs=probs.astype(np.float32),
            labels=labels,
            indices=np.arange(len(labels)),
            loss=per_sample_loss(probs, labels),
        )
    out["ood"] = ood_calibration(data, heldout, device)
    return out


def ood_calibration(data: TrainData, heldout: dict[str, np.ndarray], device: torch.device) -> dict[str, Any]:
    """The "unlike the training tiles" thresholds (histo_core.ood): colour statistics of the training tiles as
    the model sees them, and the confidence on the validation split (else the test split)."""
    split = "val" if "val" in heldout else "test" if "test" in heldout else None
    limit = pipeline.LAZY_CHUNK if data.train.streamed else 2000  # streamed: one contiguous chunk, one read
    sample = data.train.read_range(0, min(len(data.train), limit))
    tiles01 = stain.normalize_batch(pipeline.to_float01(sample, "cpu", data.input_size), data.stain)
    return ood.calibrate(tiles01, heldout.get(split) if split else None, split or "")


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    def f(v):
        return "-" if v is None else f"{v:.4f}"

    return (
        f"epoch {row['epoch']}/{epochs}  train loss {f(row['train_loss'])} acc {f(row['train_acc'])}  "
        f"val loss {f(row['val_loss'])} acc {f(row['val_acc'])} auc {f(row['val_auc'])}  "
        f"lr {row['lr']:.2e}  {row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s"
    )


# -- in-process fitting and prediction --------------------------------------------------------------
def _array_dataset(images_uint8: np.ndarray, labels: np.ndarray, classes: list[str], val=None) -> TileDataset:
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DatasetError(f"images must be uint8 (N,H,W) or (N,H,W,C), got {images.dtype} {images.shape}")
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[1] != images.shape[2]:
        raise DatasetError(f"tiles must be square, got {images.shape[1]}x{images.shape[2]}")
    splits = {"train": Split("train", images, labels)}
    if val is not None:
        vi, vl = val
        vi = np.asarray(vi)
        splits["val"] = Split("val", vi if vi.ndim == 4 else vi[..., None], vl)
    info = DatasetInfo(
        name="arrays",
        title="in-memory arrays",
        source="arrays",
        classes=list(classes),
        channels=int(images.shape[3]),
        size=int(images.shape[1]),
        task="binary" if len(classes) == 2 else "multi-class",
        native_channels=int(images.shape[3]),
    )
    return TileDataset(info, splits)


def fit_arrays(
    config: TrainConfig,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    *,
    classes: list[str],
    val: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train on in-memory arrays in this process, without a run directory. Returns (model in eval mode, meta)."""
    config = config.replace(
        dataset="arrays", epochs=int(epochs or config.epochs), early_stopping=False, train_splits="train"
    )
    if config.mode == "fine_tune" and config.head_epochs >= config.epochs:
        config = config.replace(head_epochs=config.epochs - 1)
    config.validate()
    ds = _array_dataset(images_uint8, np.asarray(labels), classes, val)
    check_input(config.arch, input_size_of(config, ds.info), ds.info.channels)
    device = setup_device(config)
    data = build_train_data(config, ds, str(device), need_test=False)
    trainer = Trainer(config, data, device)
    while trainer.epoch < config.epochs:
        row = trainer.train_epoch()
        if data.val is not None:
            rep = classification_report(trainer.predict(data.val), data.val.labels.numpy(), classes)
            row.update(val_loss=rep["loss"], val_acc=rep["accuracy"])
        if log is not None:
            log(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    meta = model_meta(config, data)
    meta["dataset"] = {"name": "arrays", "title": "in-memory arrays", "synthetic": False, "source": "arrays"}
    return trainer.model.eval(), meta


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def predict_probs(
    model: nn.Module, meta: dict[str, Any], images_uint8: np.ndarray, batch_size: int = EVAL_BATCH, tta: bool = False
) -> np.ndarray:
    """Class probabilities (N, K) float32 for uint8 tiles (N, H, W[, C]), resized to the model's input size."""
    images = np.asarray(images_uint8)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1 and int(meta["in_channels"]) == 3:
        images = np.repeat(images, 3, axis=-1)
    if images.shape[-1] != int(meta["in_channels"]):
        raise DatasetError(f"tiles have {images.shape[-1]} channels, the model takes {meta['in_channels']}")
    model.eval()
    device = _model_device(model)
    batch_size = eval_batch_size(int(meta["input_size"]), device, batch_size)
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            out.append(
                _predict_tensor(
                    model,
                    images[s : s + batch_size],
                    meta["mean"],
                    meta["std"],
                    device,
                    int(meta["input_size"]),
                    tta,
                    False,
                    None,
                    meta.get("stain"),
                )
            )
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, int(meta["num_classes"])), np.float32)


# -- evaluation of a finished run: histo_core/evaluation.py ----------------------------------------------
from histo_core.evaluation import evaluate_run  # noqa: E402,F401  (kept importable from here)


# -- estimates ---------------------------------------------------------------------------------------
def measure_throughput(config: TrainConfig, n_batches: int = 3) -> float:
    """Training images per second for this config on its device (one warm-up batch, then `n_batches`),
    measured on random tiles of the dataset's shape."""
    info = check_config(config.replace(pretrained=False, mode="scratch" if config.mode == "finetune" else config.mode))
    size = input_size_of(config, info)
    n = config.batch_size * (n_batches + 1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, info.size, info.size, info.channels), dtype=np.uint8)
    labels = rng.integers(0, info.num_classes, n)
    cfg = config.replace(
        dataset="arrays",
        pretrained=False,
        epochs=1,
        schedule="none",
        noise=0.0,
        size=size,
        max_train_samples=0,
        train_splits="train",
        early_stopping=False,
    )
    device = setup_device(cfg)
    data = build_train_data(cfg, _array_dataset(images, labels, info.classes), str(device), need_test=False)
    trainer = Trainer(cfg, data, device)
    trainer.set_train_mode()
    batches = [np.arange(i * cfg.batch_size, (i + 1) * cfg.batch_size) for i in range(n_batches + 1)]
    times = []
    for i, pos in enumerate(batches):
        t0 = time.perf_counter()
        x = trainer.prepare_batch(trainer._gather(pos), train=True)
        trainer.train_step(x, trainer._labels_for(pos))
        if trainer.cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return cfg.batch_size * len(times) / sum(times)
