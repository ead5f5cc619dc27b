"""How long will this training run take? Measured, not guessed: on this device, with this model and the real
dataset, in a process like the trainer's.

    est = estimate_run_time(config)   # {"per_epoch_s", "fixed_s", "total_s", "train_images_per_s", ...}

Training steps are timed only after warm-up (the first batches of a fresh process are several times slower:
allocator, oneDNN/cuDNN kernel selection), until two consecutive timings agree; validation, the final test
pass, the end-of-run feature pass and the divide losses' prediction passes over the training tiles are timed at
evaluation speed; the checkpoints written every epoch (last.pt, best.pt) are timed by writing them; fixed costs
(process start with the torch import, opening/decoding the dataset, building the model) are measured as they
happen here, so a cold cache is counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from histo_core.config import TrainConfig, window_epochs
from histo_core.procs import process_age_s

WARMUP_MIN, WARMUP_MAX, TIMED_BATCHES = 2, 8, 4
_clock = time.perf_counter  # tests replace it with a deterministic clock
STABLE = 0.25  # warm when two consecutive batch times differ by less than this fraction


def _time_checkpoints(config: TrainConfig, data: Any, trainer: Any) -> float:
    """Seconds to write what a run writes every epoch: last.pt with the optimizer's state, and best.pt (small
    models on small sets spend more time on these atomic, synced writes than on their batches)."""
    import tempfile
    from pathlib import Path

    from histo_core import checkpoint as ckpt_mod
    from histo_core.training import model_meta

    meta = model_meta(config, data)
    with tempfile.TemporaryDirectory() as tmp:
        t = _clock()
        ckpt_mod.save_checkpoint(Path(tmp) / "last.pt", trainer.model, meta, epoch=1, train_state=trainer.state())
        ckpt_mod.save_checkpoint(Path(tmp) / "best.pt", trainer.model, meta, epoch=1, metrics={})
        return max(0.0, _clock() - t)


def estimate_run_time(
    config: TrainConfig, progress: Callable[[float, str], None] | None = None, startup_s: float | None = None
) -> dict[str, Any]:
    """`startup_s`: the process's start-up (interpreter + torch import), as the trainer's own process pays it;
    by default this process's age (a task passes its age before it waited for a device slot)."""
    from histo_core import training as T

    say = progress or (lambda f, m: None)
    startup = process_age_s() if startup_s is None else float(startup_s)
    t0 = _clock()
    say(0.05, "opening the dataset")
    T.check_config(config)
    device = T.setup_device(config)
    ds = T.open_config_dataset(config)
    data = T.build_train_data(config, ds, str(device))
    trainer = T.make_trainer(config, data, device)  # codivide: a pair, whose step trains both networks
    fixed = startup + _clock() - t0
    trainer.set_train_mode()
    batches = trainer.batches_of_epoch(0)
    steps = len(batches)
    times: list[float] = []
    warm_at = None
    for i in range(min(len(batches), WARMUP_MAX + TIMED_BATCHES)):
        say(0.1 + 0.7 * i / (WARMUP_MAX + TIMED_BATCHES), "timing training batches")
        t = _clock()
        pos = batches[i]
        trainer.train_batch(pos)
        if trainer.cuda:
            import torch

            torch.cuda.synchronize()
        times.append(_clock() - t)
        if (
            warm_at is None
            and i + 1 >= WARMUP_MIN
            and len(times) >= 2
            and abs(times[-1] - times[-2]) <= STABLE * max(times[-2], 1e-9)
        ):
            warm_at = i + 1
        if warm_at is not None and i + 1 >= warm_at + TIMED_BATCHES:
            break
    warm = times[warm_at:] if warm_at is not None and len(times) > warm_at else times[len(times) // 2 :]
    per_batch = float(np.median(warm))
    warmup_extra = float(sum(times[: warm_at or 0]) - per_batch * (warm_at or 0))  # paid once, first epoch
    train_epoch = per_batch * steps

    val_n = len(data.val) if data.val is not None else 0
    test_n = len(data.test) if data.test is not None else 0
    eval_ips = None
    source = data.val if data.val is not None else data.test
    if source is not None and len(source):
        say(0.85, "timing evaluation")
        t = _clock()
        trainer.predict(source)  # the whole split: what every epoch's validation costs
        eval_ips = len(source) / max(_clock() - t, 1e-9)
    val_s = val_n / eval_ips if eval_ips else 0.0
    test_s = (test_n + val_n) / eval_ips if eval_ips else 0.0  # final evaluation: test and val predictions
    # the feature map's features of every tile at the end of the run (one more pass over all splits)
    embed_s = (len(data.train) + val_n + test_n) / eval_ips if eval_ips else 0.0
    # divide, codivide: every training tile predicted after each epoch of the averaging window (by both networks
    # of a pair, as `trainer.predict` is timed here)
    window_s = window_epochs(config) * len(data.train) / eval_ips if eval_ips else 0.0
    say(0.92, "timing the checkpoint writes")
    save_s = _time_checkpoints(config, data, trainer)
    per_epoch = train_epoch + val_s + save_s
    fixed_total = fixed + max(warmup_extra, 0.0) + test_s + embed_s + window_s
    say(1.0, "done")
    return {
        "train_tiles": len(data.train),
        "steps_per_epoch": steps,
        "batch_size": config.batch_size,
        "train_images_per_s": config.batch_size / per_batch if per_batch else math.nan,
        "eval_images_per_s": eval_ips,
        "val_tiles": val_n,
        "test_tiles": test_n,
        "warmup_batches": warm_at or len(times) // 2,
        "per_epoch_s": per_epoch,
        "checkpoint_s": save_s,
        "window_s": window_s,
        "fixed_s": fixed_total,
        "total_s": fixed_total + per_epoch * config.epochs,
        "epochs": config.epochs,
    }


def task_main(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    """The `estimate` process kind (histo_core.kinds): params config (a TrainConfig dict)."""
    return estimate_run_time(
        TrainConfig.from_dict(params["config"]), progress=progress, startup_s=params.get("_startup_s")
    )
