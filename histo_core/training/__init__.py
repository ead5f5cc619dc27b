"""The training engine, one concern per module.

    config = default_config("pathmnist")       # defaults.py: defaults for the data and the device, check_config
    info = check_config(config)                # every check, before any process or run dir
    run = prepare_run(config)                  # run.py: runs/<id>/ with config.json, status "queued"
    results = run_training(run)                # run.py: in this process; what `python -m histo_core train` does

- defaults.py     default_config, check_config, the input size, opening the config's dataset
- data.py         TrainData (sources, labels, noise, normalisation, stain reference), model_meta, array_dataset
- trainer.py      Trainer: batches of an epoch, gather/labels of a batch, one step, an epoch, predict, state
- codivide.py     PairTrainer: two Trainers with crossed splits (--loss codivide); make_trainer picks the kind
- run.py          the run lifecycle: slot, status, cancel, checkpoints, resume, final evaluation
- status.py       status.json writer with heartbeat, the cancel flag, error lines
- distributed.py  torchrun/DDP helpers (rank, broadcast, any_rank)
- device.py       device set-up, fused optimizers, torch.compile
- fit.py          in-process fitting on arrays (fit_arrays, predict_probs) and throughput measurement

One `Trainer` does the work for runs, in-process fits, throughput and run-time estimates and the LR finder
(`codivide` runs two, in a `PairTrainer`, from `make_trainer`).
Batches come from `histo_core.pipeline` (uint8 tiles, converted and augmented on the device); predictions go
through `histo_core.predict`, the one batched forward pass; DDP is used under torchrun (WORLD_SIZE > 1).
"""

from histo_core.distributed import any_rank, broadcast, dist_env, init_distributed, shutdown_distributed
from histo_core.runtime import resolve_device
from histo_core.training.codivide import PairTrainer, make_trainer
from histo_core.training.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainData,
    array_dataset,
    build_train_data,
    model_meta,
    uses_mlp_head,
)
from histo_core.training.defaults import (
    SMALL_TRAIN_SET,
    check_config,
    default_config,
    input_size_of,
    open_config_dataset,
)
from histo_core.training.device import compile_cache_dir, compile_module, fused_optimizer_ok, setup_device
from histo_core.training.final import epoch_line, final_evaluation, ood_calibration
from histo_core.training.fit import fit_arrays, measure_throughput, predict_probs
from histo_core.training.run import prepare_run, run_training
from histo_core.training.status import CancelFlag, RunFolderGone, StatusWriter
from histo_core.training.trainer import StopRequested, Trainer

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SMALL_TRAIN_SET",
    "CancelFlag",
    "PairTrainer",
    "RunFolderGone",
    "StatusWriter",
    "StopRequested",
    "TrainData",
    "Trainer",
    "any_rank",
    "array_dataset",
    "broadcast",
    "build_train_data",
    "check_config",
    "compile_cache_dir",
    "compile_module",
    "default_config",
    "dist_env",
    "epoch_line",
    "final_evaluation",
    "fit_arrays",
    "fused_optimizer_ok",
    "init_distributed",
    "input_size_of",
    "make_trainer",
    "measure_throughput",
    "model_meta",
    "ood_calibration",
    "open_config_dataset",
    "predict_probs",
    "prepare_run",
    "resolve_device",
    "run_training",
    "setup_device",
    "shutdown_distributed",
    "uses_mlp_head",
]
