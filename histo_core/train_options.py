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
import functools
from collections.abc import Callable, Iterable

from histo_core import config as C
from histo_core.config import ELSEWHERE, Getter, Option, number_box, registry_choices, when
from histo_core.datasets.sources import registered_names
from histo_core.loss_options import LOSS_SECTION
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


def _in(group: str, *options: Option) -> tuple[Option, ...]:
    """`options` in the page's section `group`."""
    return tuple(dataclasses.replace(o, group=group) for o in options)


def _set(path: str) -> Callable[[Getter], bool]:
    return lambda get: bool(get(path))


_OPT, _LOSS, _AUG = "Optimiser and schedule", "Loss", "Augmentation"
_STAIN, _STOP = "Stain and scale", "Early stopping and splits"
_MODE, _DEVICE = "Model mode and pretrained weights", "Device and performance"


_FRAC = number_box(0.05, "%.2f")  # a fraction's number box

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
        widget=number_box(0.05, "%.2f"),
    ),
    Option(
        "noise_mode",
        "Label-noise mode",
        "batch (fresh wrong labels every batch), fixed (a fixed set of samples, symmetric) or pair (class k -> k+1)",
        choices=registry_choices(C.NOISE_MODES),
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
        Option("optimizer", "Optimiser", "optimiser", choices=registry_choices(C.OPTIMIZERS)),
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
            applies=when("optimizer", "sgd"),
            widget=number_box(0.01, "%.3f"),
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
            choices=registry_choices(C.SCHEDULES),
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
            applies=when("schedule", "step"),
            widget={"step": 1},
        ),
        Option(
            "gamma",
            "Gamma (step schedule)",
            "step schedule: LR multiplier at each drop",
            applies=when("schedule", "step"),
            widget=number_box(0.05, "%.3f"),
        ),
    ),
    *_in(_LOSS, *LOSS_SECTION),
    # -- augmentation --------------------------------------------------------------------------------------------
    *_in(
        _AUG,
        Option("augment.flip", "Random flips", "random horizontal/vertical flips"),
        Option("augment.rot90", "Random 90° rotations", "random 90-degree rotations"),
        Option(
            "augment.rotate",
            "Small rotation (max degrees, 0 = off)",
            "random rotations up to this many degrees (0 = off)",
            widget=number_box(5.0),
        ),
        Option("augment.resized_crop", "Random resized crop", "random resized crops"),
        Option(
            "augment.crop_scale",
            "Crop: minimum area fraction",
            "smallest area fraction kept by --resized-crop",
            applies=_set("augment.resized_crop"),
            widget=number_box(0.05, "%.2f"),
        ),
        Option("augment.brightness", "Brightness jitter", "random brightness change up to this fraction", widget=_FRAC),
        Option("augment.contrast", "Contrast jitter", "random contrast change up to this fraction", widget=_FRAC),
        Option("augment.saturation", "Saturation jitter", "random saturation change up to this fraction", widget=_FRAC),
        Option(
            "augment.hue",
            "Hue jitter",
            "random hue shift up to this fraction of the colour wheel (0..0.5)",
            widget=number_box(0.01, "%.2f"),
        ),
        Option(
            "augment.stain_jitter",
            "H&E stain jitter (HED space, 0 = off)",
            "H&E stain augmentation: random scale/shift of each HED channel by up to this much (0..0.2)",
            widget=number_box(0.01, "%.2f"),
            page_note="Strong even when small: 0.05 changes a tile's pixels by about 39 of 255 on average, and on the "
            "real sample with 40% wrong labels it cost 15-27 points of accuracy (0.02: 7-12); README, 'Noise lab'.",
        ),
    ),
    # -- stain and scale -----------------------------------------------------------------------------------------
    *_in(
        _STAIN,
        Option(
            "stain_norm",
            "Stain normalisation (training tiles and every input alike)",
            "stain normalisation of every tile, in training and at inference, to the training set's stain",
            choices=registry_choices(C.STAIN_NORMS),
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
            choices=registry_choices(C.MONITORS),
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
            widget=number_box(1e-3),
        ),
        Option(
            "train_splits",
            "Train on",
            "train (validate on val) or train+val (train on both; no validation, the last epoch is kept)",
            choices=registry_choices(C.TRAIN_SPLITS),
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
            choices=registry_choices(C.MODES),
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
            applies=when("mode", "head-then-all"),
            widget={"step": 1},
        ),
        Option(
            "backbone_lr_mult",
            "Backbone LR multiplier (head, then all layers)",
            "head-then-all: backbone learning rate = --lr times this, once unfrozen",
            applies=when("mode", "head-then-all"),
            widget=number_box(0.05),
        ),
    ),
    # -- device and performance ----------------------------------------------------------------------------------
    *_in(
        _DEVICE,
        Option(
            "device",
            "Device",
            "auto (CUDA when present), cpu or cuda",
            choices=registry_choices(C.DEVICES),
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


def ignored(names: Iterable[str], config: C.TrainConfig) -> list[Option]:
    """The options among `names` (fields as the command line names them: "sce_alpha", "flip") that have no effect
    with `config`'s values (their `applies` is false: the Train page greys them out)."""
    by_name = {o.name: o for o in TABLE}

    def get(path: str) -> object:
        return functools.reduce(getattr, path.split("."), config)

    return [by_name[n] for n in names if n in by_name and not by_name[n].is_active(get)]
