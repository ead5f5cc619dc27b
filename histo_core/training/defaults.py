"""Default configurations that fit the data and the device, and every check that can fail before training.

config = default_config("pathmnist")     # sensible defaults for the data and the device
info = check_config(config)              # raises a HistoError naming the option and the fix
"""

from __future__ import annotations

from histo_core.config import TrainConfig
from histo_core.datasets import DatasetInfo, TileDataset, open_dataset
from histo_core.errors import ConfigError, DatasetError, HistoError
from histo_core.models import ARCHITECTURES, check_input, default_arch, get_arch, load_pretrained_state
from histo_core.runtime import resolve_device

SMALL_TRAIN_SET = 1000  # below this many training tiles, hold-out validation costs more than it tells
SMALL_SET_EPOCHS = 90  # measured against 60 and 120 (benchmarks/RESULTS.md, "The clean default for small sets")


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
    train+val for SMALL_SET_EPOCHS (90) epochs: about half a minute on 2 cores for 200 tiles (60 epochs scored
    2.3 points lower in cross-validation on the real sample). Larger sets get fewer epochs and bigger batches (a
    full 90k-tile PathMNIST epoch takes minutes).
    Tiles above 64 px on CPU get cnn3 (ResNet-9 costs 12x more at 96 px). CUDA: ResNet-18 with the
    small-input stem below 64 px, bf16 autocast, channels-last, larger batches. The architecture comes from
    `models.default_arch`, next to the registry.
    """
    dev = "cuda" if device in ("auto", "cuda") and resolve_device("auto") == "cuda" else "cpu"
    info, n_train, has_val = _peek_dataset(dataset_spec)
    size = info.size if info else 28
    cfg = TrainConfig(dataset=dataset_spec, device=device)  # type: ignore[arg-type]  # validated by check_config
    cfg.optimizer, cfg.schedule, cfg.weight_decay, cfg.lr = "adamw", "onecycle", 5e-4, 3e-3
    cfg.augment.flip = cfg.augment.rot90 = True
    cfg.tta = True
    small = 0 < n_train < SMALL_TRAIN_SET
    if small and has_val:
        cfg.train_splits = "train+val"
    if small:
        cfg.epochs, cfg.batch_size = SMALL_SET_EPOCHS, 32
    elif n_train < 10_000:
        cfg.epochs, cfg.batch_size = 30, 64
    elif n_train < 50_000:
        cfg.epochs, cfg.batch_size = 15, 128
    elif n_train < 150_000:
        cfg.epochs, cfg.batch_size = 8, 128
    else:
        cfg.epochs, cfg.batch_size = 3, 128
    cfg.arch = default_arch(dev, size)
    if dev == "cuda":
        cfg.lr = 2e-3
        cfg.batch_size = 32 if small else 256
        cfg.epochs = cfg.epochs if small else max(cfg.epochs, 10)
    return cfg


def open_config_dataset(config: TrainConfig) -> TileDataset:
    """The dataset a config trains on, opened at its size, channels and data folder."""
    return open_dataset(
        config.dataset, size=config.size, as_rgb=config.as_rgb, data_dir=config.data_dir, seed=config.seed
    )


def input_size_of(config: TrainConfig, info: DatasetInfo) -> int:
    """The tile size fed to the model: --size, else the dataset's own."""
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
    if config.corrections:
        from histo_core.corrections import check_corrections, dataset_identity

        check_corrections(config.corrections, dataset_identity(ds))
    if config.pretrained:
        if not get_arch(config.arch).has_backbone:
            raise ConfigError(
                f"--pretrained: no ImageNet weights exist for {config.arch}; use "
                + " or ".join(n for n, a in ARCHITECTURES.items() if a.has_backbone)
            )
        load_pretrained_state(config.arch)  # raises a HistoError naming where to put the file when offline
    return info
