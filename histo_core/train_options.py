"""The one table of training options: every field of `TrainConfig` (and of its `Augment`) with its label, its help,
its group, its choices (read from their registries when asked), its type and when it applies.

The command line's flags (`commands/train.add_config_options`: `train`, `lr-find`, `study`) and the Train page's
form (`pages/ui/train_form.py`) are both made from this table. A new training option is a field of `TrainConfig`
(with its check in `config.py`) plus one `Option` here (`config.Option` says what an entry holds); it then
shows in `--help` and on the page (tests/test_train_options.py checks that every field has exactly one entry
and that both expose it).

    for opt in TABLE:                        # in the page's order, group by group
        opt.path, opt.flag, opt.kind         # "augment.flip", "--flip", bool
        opt.label, opt.help_text(), opt.group
        opt.choices(), opt.choice_label(v)   # choice fields: the registry's names now, and how the page words each
        opt.choice_caption(v)                # a line under the chosen one (an architecture's description)
        opt.applies(values.get)              # False: irrelevant given the other values (the page disables it)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from histo_core import config as C
from histo_core.config import ELSEWHERE, Getter, Option
from histo_core.datasets.sources import registered_names
from histo_core.models import ARCHITECTURES


def _architectures() -> tuple[str, ...]:
    return tuple(ARCHITECTURES)


def _dataset_help() -> str:
    return f"registered name ({', '.join(registered_names())}) or a path (.npz, .csv, image folder, PCam folder)"


def _pretrained_help() -> str:
    backbones = ", ".join(n for n, a in ARCHITECTURES.items() if a.has_backbone)
    return f"start from ImageNet weights ({backbones}; needs them cached or internet)"


def _architecture_titles() -> dict[str, str]:
    """The short name (the title before its brackets: "ResNet-9"); the description is said under the choice."""
    return {n: a.title.split(" (")[0] for n, a in ARCHITECTURES.items()}


def _architecture_descriptions() -> dict[str, str]:
    return {n: a.description for n, a in ARCHITECTURES.items()}


def _choices(values: tuple[str, ...]) -> Callable[[], tuple[str, ...]]:
    return lambda: values


# What the measurement says (benchmarks/RESULTS.md, "Noise lab"), not what the papers promise.
LOSS_ADVICE = (
    "Measured on the real 240-tile PathMNIST sample with 20% and 40% of the training labels wrong (6-fold cross-"
    "validation, 3 seeds; benchmarks/RESULTS.md, 'Noise lab'): with short schedules plain cross-entropy was the "
    "best choice; mixup, symmetric and generalized cross-entropy and early-learning regularisation were 3 to 13 "
    "points worse. With the small-set recipe of the time (resnet9, 60 epochs; 'Noise lab III') at 40% noise, "
    "codivide (two networks, each trained on the other's split: twice the time) was the best measured, 1.8 points "
    "above cross-entropy (0.798 against 0.780, 3 seeds; +0.7 to +2.9 seed by seed); the one-network divide and "
    "label smoothing were CE's equal, mixup 1.3 points, dynamic bootstrapping 2.6 and early-learning regularisation"
    " 5 points behind. None of them is robust to noise here; run a study (Studies page, `python -m histo_core "
    "study`) to check on your own data."
)


def _in(group: str, *options: Option) -> tuple[Option, ...]:
    """`options` in the page's section `group`."""
    return tuple(dataclasses.replace(o, group=group) for o in options)


def _is(path: str, value: Any) -> Callable[[Getter], bool]:
    return lambda get: get(path) == value


def _divides(get: Getter) -> bool:
    return get("loss") in ("divide", "codivide")


def _set(path: str) -> Callable[[Getter], bool]:
    return lambda get: bool(get(path))


_OPT, _LOSS, _AUG = "Optimiser and schedule", "Loss", "Augmentation"
_STAIN, _STOP = "Stain and scale", "Early stopping and splits"
_MODE, _DEVICE = "Model mode and pretrained weights", "Device and performance"


def _num(step: float, fmt: str = "%g", **more: Any) -> dict[str, Any]:
    """The page's number box: its step, display format and bounds."""
    return {"step": step, "format": fmt, **more}


_FRAC = _num(0.05, "%.2f")  # a fraction's number box

TABLE: tuple[Option, ...] = (
    # -- picked outside the form: the dataset picker, the corrections picker, the signed-in user ----------------
    *_in(
        ELSEWHERE,
        Option("dataset", "Dataset", _dataset_help),
        Option(
            "size",
            "Tile size",
            "tile size fed to the model in px (default: the dataset's own size; other sizes are resized)",
        ),
        Option("as_rgb", "Grayscale → RGB", "expand 1-channel (grayscale) tiles to 3 channels"),
        Option("data_dir", "Data folder", "dataset cache folder (default $HISTO_DATA_DIR or ~/.medmnist)"),
        Option(
            "started_by",
            "Started by",
            "who started the run (the web app records the signed-in user when sign-in is required)",
        ),
        Option(
            "corrections",
            "Label corrections",
            "a label-corrections file (made on the Review page, listed on the Curation page): its relabels and "
            "exclusions change the training labels only; val/test labels and everything else stay as they are",
        ),
    ),
    # -- the top of the form -------------------------------------------------------------------------------------
    Option("name", "Run name (optional)", "a label for the run, shown in the runs table and part of its id"),
    Option(
        "arch",
        "Architecture",
        "the network (the registry in histo_core/models.py)",
        choices=_architectures,
        choice_labels=_architecture_titles,
        choice_captions=_architecture_descriptions,
    ),
    Option("epochs", "Epochs", "number of training epochs", widget={"min_value": 1, "step": 1}),
    Option(
        "noise",
        "Label-noise rate",
        f"fraction of training labels made wrong, 0..{C.MAX_NOISE} (0 = clean; val/test labels are never touched)",
        widget=_num(0.05, "%.2f"),
    ),
    Option(
        "noise_mode",
        "Label-noise mode",
        "batch (fresh wrong labels every batch), fixed (a fixed set of samples, symmetric) or pair (class k -> k+1)",
        choices=_choices(C.NOISE_MODES),
        choice_labels={"batch": "per batch", "fixed": "fixed set", "pair": "pair (k -> k+1)"},
        choice_captions={
            "batch": "labels re-flipped in every batch",
            "fixed": "one noisy label set for all epochs (like a mislabelled dataset)",
            "pair": "each class flipped into its neighbour",
        },
        applies=_set("noise"),
    ),
    # -- optimiser and schedule ----------------------------------------------------------------------------------
    *_in(
        _OPT,
        Option(
            "batch_size",
            "Batch size",
            "training batch size (per process under torchrun)",
            widget={"min_value": 1, "step": 16},
        ),
        Option("optimizer", "Optimiser", "optimiser", choices=_choices(C.OPTIMIZERS)),
        Option(
            "lr",
            "Learning rate",
            "learning rate (the peak rate with --schedule onecycle)",
            widget={"min_value": 0.0, "step": 1e-4, "format": "%g"},
            page_note="The LR finder below suggests one.",
        ),
        Option(
            "momentum",
            "Momentum (SGD)",
            "SGD momentum (Nesterov when > 0)",
            applies=_is("optimizer", "sgd"),
            widget=_num(0.01, "%.3f"),
        ),
        Option(
            "weight_decay",
            "Weight decay",
            "weight decay (decoupled for adamw)",
            widget={"min_value": 0.0, "step": 1e-4, "format": "%g"},
        ),
        Option(
            "schedule",
            "LR schedule",
            "learning-rate schedule: none, step, cosine (per epoch) or onecycle (per batch)",
            choices=_choices(C.SCHEDULES),
            choice_labels={
                "none": "constant",
                "step": "step decay",
                "cosine": "cosine annealing",
                "onecycle": "one-cycle",
            },
        ),
        Option(
            "step_size",
            "Step size (epochs, step schedule)",
            "step schedule: epochs between LR drops",
            applies=_is("schedule", "step"),
            widget={"step": 1},
        ),
        Option(
            "gamma",
            "Gamma (step schedule)",
            "step schedule: LR multiplier at each drop",
            applies=_is("schedule", "step"),
            widget=_num(0.05, "%.3f"),
        ),
    ),
    # -- loss ----------------------------------------------------------------------------------------------------
    *_in(
        _LOSS,
        Option(
            "loss",
            "Loss",
            "ce (cross-entropy), smooth (label smoothing), sce (symmetric cross-entropy), gce (generalized "
            "cross-entropy), elr (early-learning regularisation), boot (dynamic bootstrapping: tiles whose loss marks "
            "their label as doubtful train towards the model's own guess), divide (a one-network DivideMix: after a "
            "warm-up, doubtful tiles train on the model's averaged guess) or codivide (DivideMix's co-divide: two "
            "networks, each split by the other's averaged guess; the model is their mean; twice the time); "
            "measured under label noise in benchmarks/RESULTS.md",
            choices=_choices(C.LOSSES),
            choice_labels={
                "ce": "cross-entropy",
                "smooth": "label smoothing",
                "sce": "symmetric CE",
                "gce": "generalized CE",
                "elr": "early-learning reg.",
                "boot": "bootstrapping",
                "divide": "DivideMix (1 network)",
                "codivide": "co-divide (2 networks)",
            },
            choice_captions={
                "smooth": "cross-entropy + label smoothing",
                "sce": "symmetric cross-entropy",
                "gce": "generalized cross-entropy",
                "elr": "early-learning regularisation",
                "boot": "dynamic bootstrapping: doubtful labels -> the model's guess",
                "divide": "loss split, doubtful labels -> the averaged guess (one-network DivideMix)",
                "codivide": "two networks, each split by the other (co-divide; best measured at 40% noise, 2x time)",
            },
            page_note=LOSS_ADVICE,
        ),
        Option(
            "label_smoothing",
            "Label smoothing",
            "smoothing factor for --loss smooth",
            applies=_is("loss", "smooth"),
            widget=_num(0.05, "%.2f"),
        ),
        Option(
            "sce_alpha",
            "SCE alpha (cross-entropy weight)",
            "sce: weight of the cross-entropy term",
            applies=_is("loss", "sce"),
            widget=_num(0.05),
        ),
        Option(
            "sce_beta",
            "SCE beta (reverse cross-entropy weight)",
            "sce: weight of the reverse cross-entropy term",
            applies=_is("loss", "sce"),
            widget=_num(0.1),
        ),
        Option(
            "gce_q",
            "GCE q (0..1]",
            "gce: the exponent q in (0, 1] (near 0 behaves like cross-entropy, 1 like mean absolute error)",
            applies=_is("loss", "gce"),
            widget=_num(0.05),
        ),
        Option(
            "elr_lambda",
            "ELR lambda (regulariser weight)",
            "elr: weight of the early-learning regulariser",
            applies=_is("loss", "elr"),
            widget=_num(0.5),
        ),
        Option(
            "elr_beta",
            "ELR beta (target momentum)",
            "elr: momentum of each tile's running-average target, in [0, 1)",
            applies=_is("loss", "elr"),
            widget=_num(0.05),
        ),
        Option(
            "boot_warmup",
            "Bootstrapping warm-up (fraction of epochs)",
            "boot: fraction of the epochs trained with plain cross-entropy before doubtful labels are split off, in [0, 1)",
            applies=_is("loss", "boot"),
            widget=_num(0.05),
        ),
        Option(
            "divide_warmup",
            "Divide warm-up (fraction of epochs)",
            "divide, codivide: fraction of the epochs trained with plain cross-entropy before the split, in (0, 1)",
            applies=_divides,
            widget=_num(0.05),
        ),
        Option(
            "divide_window",
            "Divide averaging window (fraction of the warm-up)",
            "divide, codivide: the split uses the predictions averaged over this last fraction of the warm-up, (0, 1]",
            applies=_divides,
            widget=_num(0.05),
        ),
        Option(
            "divide_temperature",
            "Divide target temperature (1 = as is)",
            "divide, codivide: sharpening temperature of the soft targets (DivideMix used 0.5), in (0, 10]",
            applies=_divides,
            widget=_num(0.1),
        ),
        Option(
            "mixup",
            "Mixup alpha (0 = off)",
            f"mixup: train on blends of two tiles and their labels, Beta(a, a) weights; a in 0 (off)..{C.MAX_MIXUP}",
            widget={"min_value": 0.0, "step": 0.1, "format": "%g"},
        ),
    ),
    # -- augmentation --------------------------------------------------------------------------------------------
    *_in(
        _AUG,
        Option("augment.flip", "Random flips", "random horizontal/vertical flips"),
        Option("augment.rot90", "Random 90° rotations", "random 90-degree rotations"),
        Option(
            "augment.rotate",
            "Small rotation (max degrees, 0 = off)",
            "random rotations up to this many degrees (0 = off)",
            widget=_num(5.0),
        ),
        Option("augment.resized_crop", "Random resized crop", "random resized crops"),
        Option(
            "augment.crop_scale",
            "Crop: minimum area fraction",
            "smallest area fraction kept by --resized-crop",
            applies=_set("augment.resized_crop"),
            widget=_num(0.05, "%.2f"),
        ),
        Option("augment.brightness", "Brightness jitter", "random brightness change up to this fraction", widget=_FRAC),
        Option("augment.contrast", "Contrast jitter", "random contrast change up to this fraction", widget=_FRAC),
        Option("augment.saturation", "Saturation jitter", "random saturation change up to this fraction", widget=_FRAC),
        Option(
            "augment.hue",
            "Hue jitter",
            "random hue shift up to this fraction of the colour wheel (0..0.5)",
            widget=_num(0.01, "%.2f"),
        ),
        Option(
            "augment.stain_jitter",
            "H&E stain jitter (HED space, 0 = off)",
            "H&E stain augmentation: random scale/shift of each HED channel by up to this much (0..0.2)",
            widget=_num(0.01, "%.2f"),
        ),
    ),
    # -- stain and scale -----------------------------------------------------------------------------------------
    *_in(
        _STAIN,
        Option(
            "stain_norm",
            "Stain normalisation (training tiles and every input alike)",
            "stain normalisation of every tile, in training and at inference, to the training set's stain",
            choices=_choices(C.STAIN_NORMS),
            choice_labels={"none": "none", "macenko": "Macenko", "reinhard": "Reinhard"},
            choice_captions={
                "macenko": "stain vectors and concentrations",
                "reinhard": "colour statistics in CIELAB",
            },
            page_note="It helps on tiles from other labs (benchmarks/RESULTS.md).",
        ),
        Option(
            "mpp",
            "µm per pixel of the dataset's images (0 = unknown)",
            "µm per pixel of the dataset's source images, when known (PathMNIST and PCam are known): the model then "
            "records the field of view of its tiles and brings inputs of other resolutions to it",
            widget={"min_value": 0.0, "step": 0.05, "format": "%.3f"},
            none_as_zero=True,
        ),
    ),
    # -- early stopping and splits -------------------------------------------------------------------------------
    *_in(
        _STOP,
        Option(
            "early_stopping",
            "Stop early when the monitored metric stops improving",
            "stop when --monitor has not improved for --patience epochs",
        ),
        Option(
            "monitor",
            "Monitor (also picks best.pt)",
            "validation metric that selects best.pt and drives early stopping",
            choices=_choices(C.MONITORS),
            applies=lambda get: get("train_splits") != "train+val",  # no validation split: nothing to monitor
        ),
        Option(
            "patience",
            "Patience (epochs)",
            "early stopping: epochs without improvement before stopping",
            applies=_set("early_stopping"),
            widget={"step": 1},
        ),
        Option(
            "min_delta",
            "Minimum improvement",
            "early stopping: smallest change that counts as an improvement",
            applies=_set("early_stopping"),
            widget=_num(1e-3),
        ),
        Option(
            "train_splits",
            "Train on",
            "train (validate on val) or train+val (train on both; no validation, the last epoch is kept)",
            choices=_choices(C.TRAIN_SPLITS),
            choice_captions={
                "train": "validate on val",
                "train+val": "no validation; the last epoch is kept",
            },
        ),
        Option(
            "max_train_samples",
            "Use at most N training tiles (0 = all)",
            "train on a random subset of this many tiles (0 = all)",
            widget={"min_value": 0, "step": 100},
        ),
        Option(
            "seed",
            "Random seed",
            "random seed (same seed, same device and threads -> same results on CPU)",
            widget={"step": 1},
        ),
    ),
    # -- model mode and pretrained weights -----------------------------------------------------------------------
    *_in(
        _MODE,
        Option(
            "mode",
            "Training mode",
            "scratch (random init, every layer trained), all-layers (every layer trained from the start; with "
            "--pretrained from ImageNet weights), frozen (only an MLP head trained on a frozen backbone), head-then-all "
            "(the head alone for --head-epochs, then every layer with a lower backbone LR); the old names finetune "
            "(= all-layers) and fine_tune (= head-then-all) are still accepted",
            choices=_choices(C.MODES),
            choice_labels={
                "scratch": "scratch",
                "all-layers": "all layers",
                "frozen": "frozen backbone",
                "head-then-all": "head, then all",
            },
            choice_captions={
                "scratch": "every layer trained from random weights",
                "all-layers": "every layer trained from the start (from ImageNet with the option below)",
                "frozen": "the backbone frozen, an MLP head trained",
                "head-then-all": "the head alone first, then every layer with a lower backbone LR",
            },
        ),
        Option("pretrained", "Start from ImageNet weights (needs the weights cached or internet)", _pretrained_help),
        Option(
            "head_epochs",
            "Head-only epochs (head, then all layers)",
            "head-then-all: epochs training only the head before unfreezing the backbone",
            applies=_is("mode", "head-then-all"),
            widget={"step": 1},
        ),
        Option(
            "backbone_lr_mult",
            "Backbone LR multiplier (head, then all layers)",
            "head-then-all: backbone learning rate = --lr times this, once unfrozen",
            applies=_is("mode", "head-then-all"),
            widget=_num(0.05),
        ),
    ),
    # -- device and performance ----------------------------------------------------------------------------------
    *_in(
        _DEVICE,
        Option(
            "device",
            "Device",
            "auto (CUDA when present), cpu or cuda",
            choices=_choices(C.DEVICES),
            choice_labels={"auto": "auto (GPU if any)"},
        ),
        Option(
            "threads", "CPU threads (0 = all cores)", "CPU threads (0 = all cores)", widget={"min_value": 0, "step": 1}
        ),
        Option(
            "amp",
            "Mixed precision (bf16 where the device computes it natively)",
            "bf16 autocast on CUDA, and on CPUs that compute bf16 natively (AMX or AVX-512 BF16); elsewhere fp32",
        ),
        Option(
            "channels_last",
            "channels-last memory format (CPU and CUDA)",
            "channels-last memory format (measured faster for every architecture, CPU and CUDA)",
        ),
        Option(
            "compile",
            "torch.compile (slow first epoch)",
            "torch.compile the model (inductor; kernels cached under <data dir>/torchinductor). Off by default: on 2 "
            "CPU cores it did not pay back its compile time (benchmarks/RESULTS.md)",
        ),
        Option(
            "tta",
            "Test-time augmentation at evaluation (flips/rotations)",
            "test-time augmentation: average predictions over the 8 flips/rotations of each tile",
        ),
    ),
)

OPTIONS: dict[str, Option] = {o.path: o for o in TABLE}
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(o.group for o in TABLE if o.group != ELSEWHERE))  # the page's order
