"""The data a run trains on: tile sources on the device, (possibly noisy) labels, normalisation statistics
and the stain reference, assembled from a config and a dataset; and the model metadata saved with it.

    data = build_train_data(config, open_config_dataset(config), "cpu")
    meta = model_meta(config, data)          # what a checkpoint records about the model's input
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from histo_core import pipeline, stain
from histo_core.config import HEAD_MODES, TrainConfig, networks_of
from histo_core.datasets import DatasetInfo, Split, TileDataset
from histo_core.datasets.concat import ConcatSplit
from histo_core.datasets.sources import source_scale
from histo_core.errors import ConfigError, DatasetError
from histo_core.noise import fixed_noise
from histo_core.slots import runs_per_gpu
from histo_core.training.defaults import input_size_of

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


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
    corrections: dict[str, Any] | None = None  # what --corrections changed (histo_core.corrections)
    dataset: TileDataset | None = None  # the dataset opened for the run: the end-of-training embedding reuses it


def _sample_for_stats(split: Any) -> np.ndarray:
    n = len(split)
    if not (split.lazy or isinstance(getattr(split, "images", None), np.memmap)):
        idx = np.sort(np.random.default_rng(0).choice(n, min(n, 10_000), replace=False))
        return split.get(idx)
    # file-backed: four contiguous blocks spread over the file (sequential reads, bounded memory)
    blocks = [split.get(slice(s, min(n, s + 512))) for s in np.linspace(0, max(0, n - 512), 4).astype(int)]
    return np.concatenate(blocks)


def build_train_data(
    config: TrainConfig, ds: TileDataset, device: str, *, need_test: bool = True, evaluates: bool = True
) -> TrainData:
    """Sources for train (train or train+val, maybe subsampled), val and test; labels with the configured noise;
    ImageNet statistics for pretrained models, else the training tiles'; the stain reference. `evaluates` False
    (torchrun ranks other than 0, which evaluate only their share of each split): val and test stay in host
    memory, off the GPU."""
    info = ds.info
    train_split: Any = ds.split("train")
    if config.train_splits == "train+val":
        train_split = ConcatSplit("train+val", [ds.split("train"), ds.split("val")])
    n = len(train_split)
    indices = np.arange(n)
    if config.max_train_samples and config.max_train_samples < n:
        rng = np.random.default_rng([config.seed, 2024])
        indices = np.sort(rng.choice(n, config.max_train_samples, replace=False))
    clean = np.asarray(train_split.labels, np.int64)[indices]
    labels, flipped = clean, None
    if config.noise > 0 and config.noise_mode in ("fixed", "pair"):
        labels, flipped = fixed_noise(clean, config.noise, info.num_classes, config.seed, config.noise_mode)
    applied = None
    if config.corrections:  # after the noise: a user corrects the labels as they are (noisy ones included)
        from histo_core.corrections import apply_corrections, check_corrections, dataset_identity

        corr = check_corrections(config.corrections, dataset_identity(ds))
        labels, keep, applied = apply_corrections(corr, indices, labels, len(ds.split("train")))
        indices, labels, clean = indices[keep], labels[keep], clean[keep]
        if flipped is not None:
            flipped = labels != clean  # what is still wrong after the corrections
    budget = resident_budget(device)
    train = pipeline.TileSource(
        train_split, device, indices=None if len(indices) == n else indices, resident_max_bytes=budget
    )
    budget = None if budget is None else budget - train.resident_bytes
    if not evaluates and budget is not None:
        budget = 0
    sample = _sample_for_stats(train_split)
    if config.pretrained:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        if info.channels == 1:
            mean, std = [float(np.mean(mean))], [float(np.mean(std))]
    else:
        mean, std = pipeline.channel_stats(sample)
    stain_ref = fit_stain(config, sample)
    val = None
    if config.train_splits == "train" and "val" in ds.splits and len(ds.splits["val"]):
        val = pipeline.TileSource(ds.splits["val"], device, resident_max_bytes=budget)
        budget = None if budget is None else budget - val.resident_bytes
    test = (
        pipeline.TileSource(ds.splits["test"], device, resident_max_bytes=budget)
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
        applied,
        ds,
    )


def resident_budget(device: str | torch.device) -> int | None:
    """GPU bytes the three splits may take together (train first, then val, then test; a split that does not fit
    is served from host memory, streamed when file-backed): CUDA_RESIDENT_FRACTION of the card's free memory,
    shared among the runs that HISTO_MAX_RUNS_CUDA puts on one card. None on the CPU (each split its own limit)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None

    free, _ = torch.cuda.mem_get_info(device)
    return int(free * pipeline.CUDA_RESIDENT_FRACTION) // runs_per_gpu()


def fit_stain(config: TrainConfig, sample: np.ndarray) -> dict[str, Any] | None:
    """The stain reference of --stain-norm fitted on training tiles (None for "none")."""
    try:
        return stain.fit_reference(config.stain_norm, sample, seed=config.seed)
    except ValueError as exc:
        raise ConfigError(f"--stain-norm {config.stain_norm}: {exc}") from None


def uses_mlp_head(config: TrainConfig) -> bool:
    return config.mode in HEAD_MODES


def model_meta(config: TrainConfig, data: TrainData) -> dict[str, Any]:
    """What a checkpoint records besides the weights: architecture, classes, input geometry, normalisation,
    stain reference, TTA and the training data's provenance and scale."""
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
        "members": networks_of(config),  # 2: a models.MeanEnsemble of the pair (codivide)
        "stain": data.stain,
        "tta": bool(config.tta),
        "corrections": data.corrections,
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
    """The source scale of the training tiles, when known: native tile px and µm per px (datasets.source_scale)."""
    px, mpp = source_scale({**info.to_dict(), **({"mpp": config.mpp} if config.mpp else {})})
    return {k: v for k, v in (("native_tile_px", px), ("mpp", config.mpp or mpp)) if v}


def array_dataset(
    images_uint8: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> TileDataset:
    """In-memory uint8 tiles (N, H, W[, C]) and labels as a dataset with a train (and val) split."""
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
