"""Training without a run folder, in this process: a model fitted on in-memory arrays (label-error
cross-validation, the shipped model) and the training throughput of a config (`measure_throughput`).

    model, meta = fit_arrays(config, images, labels, classes=["ADI", ...])
    probs = predict_probs(model, meta, images)           # the one predict loop (histo_core.predict)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from histo_core.config import TrainConfig
from histo_core.metrics import classification_report
from histo_core.models import check_input
from histo_core.predict import EVAL_BATCH, InputSpec, eval_batch_size, match_channels, model_device, predict_tiles
from histo_core.training.codivide import make_trainer
from histo_core.training.data import array_dataset, build_train_data, model_meta
from histo_core.training.defaults import check_config, input_size_of
from histo_core.training.device import setup_device
from histo_core.training.trainer import Trainer


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
    if config.mode == "head-then-all" and config.head_epochs >= config.epochs:
        config = config.replace(head_epochs=config.epochs - 1)
    config.validate()
    ds = array_dataset(images_uint8, np.asarray(labels), classes, val)
    check_input(config.arch, input_size_of(config, ds.info), ds.info.channels)
    device = setup_device(config)
    data = build_train_data(config, ds, str(device), need_test=False)
    trainer = make_trainer(config, data, device)  # a codivide config: the pair, its model their mean
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


def predict_probs(
    model: nn.Module, meta: dict[str, Any], images_uint8: np.ndarray, batch_size: int = EVAL_BATCH, tta: bool = False
) -> np.ndarray:
    """Class probabilities (N, K) float32 of uint8 tiles (N, H, W[, C]) for a `fit_arrays` model and its meta,
    resized to the model's input size (gray tiles repeated for an RGB model)."""
    images = match_channels(images_uint8, int(meta["in_channels"]))
    spec = InputSpec.of(meta)
    batch = eval_batch_size(spec.input_size, model_device(model), batch_size)
    return predict_tiles(model, images, spec, tta=tta, batch_size=batch, num_classes=int(meta["num_classes"]))


def measure_throughput(config: TrainConfig, n_batches: int = 3) -> float:
    """Training images per second for this config on its device (one warm-up batch, then `n_batches`),
    measured on random tiles of the dataset's shape."""
    info = check_config(
        config.replace(pretrained=False, mode="scratch" if config.mode == "all-layers" else config.mode)
    )
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
    data = build_train_data(cfg, array_dataset(images, labels, info.classes), str(device), need_test=False)
    trainer = Trainer(cfg, data, device)
    trainer.set_train_mode()
    batches = [np.arange(i * cfg.batch_size, (i + 1) * cfg.batch_size) for i in range(n_batches + 1)]
    times = []
    for i, pos in enumerate(batches):
        t0 = time.perf_counter()
        trainer.train_batch(pos)
        if trainer.cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return cfg.batch_size * len(times) / sum(times)
