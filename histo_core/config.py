"""`TrainConfig`: the one description of a training run.

Built by the CLI (`python -m histo_core train ...`) and by the Train page alike, validated here once
(`validate()` raises `ConfigError` naming the option and the allowed values), and saved as config.json in
the run directory. Each field's label, help, group, choices and when it applies are in the one table of
options, `histo_core/train_options.py`, from which the CLI's flags and the Train page's form are made.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from histo_core.errors import ConfigError

MAX_TILE_SIZE = 1024  # px per side of a model input
MAX_THREADS = 512

# Enum-like options: each Literal is the one list of allowed values (validation and the Train form use get_args).
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["none", "step", "cosine", "onecycle"]
NoiseMode = Literal["batch", "fixed", "pair"]
# cross-entropy, label smoothing, symmetric cross-entropy, generalized cross-entropy, early-learning regularisation,
# dynamic bootstrapping with a loss split, a one-network DivideMix (a held loss split + the model's averaged guess),
# DivideMix's co-divide (two networks, each split by the other; histo_core.training.codivide)
Loss = Literal["ce", "smooth", "sce", "gce", "elr", "boot", "divide", "codivide"]
# scratch: random init, every layer trained; all-layers: every layer trained from the start (usually from
# ImageNet weights); frozen: only an MLP head on a frozen backbone; head-then-all: fastai-style, the head alone
# for --head-epochs, then every layer with the backbone at a lower LR
Mode = Literal["scratch", "all-layers", "frozen", "head-then-all"]
Monitor = Literal["val_loss", "val_acc", "val_auc"]
TrainSplits = Literal["train", "train+val"]  # train+val: no validation split; the last epoch is the model
Device = Literal["auto", "cpu", "cuda"]
StainNorm = Literal["none", "macenko", "reinhard"]  # histo_core.stain.METHODS

OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
NOISE_MODES: tuple[str, ...] = get_args(NoiseMode)
LOSSES: tuple[str, ...] = get_args(Loss)
MODES: tuple[str, ...] = get_args(Mode)
MONITORS: tuple[str, ...] = get_args(Monitor)
TRAIN_SPLITS: tuple[str, ...] = get_args(TrainSplits)
DEVICES: tuple[str, ...] = get_args(Device)
STAIN_NORMS: tuple[str, ...] = get_args(StainNorm)
MAX_NOISE = 0.9
MAX_MIXUP = 4.0

# Label-noise methods: one name per recipe, each a set of TrainConfig changes (a loss, mixup, or both). The
# studies (`python -m histo_core study --methods ...`), benchmarks/noise_methods.py and the Train page's advice
# use this one table; how each fares is measured in benchmarks/RESULTS.md ("Noise lab").
NOISE_METHODS: dict[str, dict[str, Any]] = {
    "ce": {"loss": "ce", "mixup": 0.0},
    "smooth": {"loss": "smooth", "mixup": 0.0},
    "sce": {"loss": "sce", "mixup": 0.0},
    "gce": {"loss": "gce", "mixup": 0.0},
    "elr": {"loss": "elr", "mixup": 0.0},
    "mixup": {"loss": "ce", "mixup": 0.4},
    "elr+mixup": {"loss": "elr", "mixup": 0.4},
    "boot": {"loss": "boot", "mixup": 0.0},
    "divide": {"loss": "divide", "mixup": 0.0},
    "codivide": {"loss": "codivide", "mixup": 0.0},
}
PAIRED_LOSSES = ("codivide",)  # losses trained by two networks at once, whose model is the pair's mean
DIVIDE_LOSSES = ("divide", "codivide")  # losses whose split averages the training tiles' predictions over a window
# A prediction pass over the training tiles (forward only, no augmentation) in training epochs: what the divide
# losses' averaging window adds to a run's time (benchmarks/RESULTS.md, "Noise lab III" and "IV")
PREDICTION_PASS = 1 / 3

# Mode names before they said what they do; accepted from the CLI and from the config.json of older runs.
LEGACY_MODES = {"finetune": "all-layers", "fine_tune": "head-then-all"}
HEAD_MODES = ("frozen", "head-then-all")  # an MLP head on a backbone that is frozen for a while (or always)


def _baseline_arch() -> str:
    """The architecture of a bare TrainConfig(), from the registry's module (imported when first needed: torch)."""
    from histo_core.models import BASELINE_ARCH

    return BASELINE_ARCH


def canonical_mode(mode: str) -> str:
    """The current name of a training mode (old names -> new ones; anything else unchanged)."""
    return LEGACY_MODES.get(mode, mode)


@dataclass
class Augment:
    flip: bool = True
    rot90: bool = True
    rotate: float = 0.0  # max degrees of small random rotation; 0 = off
    resized_crop: bool = False
    crop_scale: float = 0.8  # min area fraction for random resized crop
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    stain_jitter: float = 0.0  # HED stain jitter strength (Tellez et al. 2018); 0 = off


@dataclass
class TrainConfig:
    dataset: str = "synthetic"
    size: int | None = None  # tile size fed to the model; None = the dataset's native size
    as_rgb: bool = False  # expand 1-channel sets to 3 channels
    arch: str = field(default_factory=_baseline_arch)  # models.BASELINE_ARCH
    mode: Mode = "scratch"
    pretrained: bool = False
    head_epochs: int = 1  # head-then-all: epochs with the backbone frozen first
    backbone_lr_mult: float = 0.1  # head-then-all: backbone LR = lr * this once unfrozen
    epochs: int = 10
    train_splits: TrainSplits = "train"
    batch_size: int = 128
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Schedule = "none"
    step_size: int = 5
    gamma: float = 0.1
    loss: Loss = "ce"
    label_smoothing: float = 0.1
    sce_alpha: float = 0.1
    sce_beta: float = 1.0
    gce_q: float = 0.7
    elr_lambda: float = 3.0
    elr_beta: float = 0.7
    boot_warmup: float = 0.3  # boot: fraction of the epochs trained with plain CE before the first split
    divide_warmup: float = 0.5  # divide, codivide: fraction of the epochs trained with plain CE before the split
    divide_window: float = 0.5  # divide, codivide: the last fraction of the warm-up whose predictions are averaged
    divide_temperature: float = 1.0  # divide, codivide: sharpening temperature of the targets (1: none)
    mixup: float = 0.0  # mixup Beta(alpha, alpha) parameter; 0 = off
    noise: float = 0.0
    noise_mode: NoiseMode = "batch"
    corrections: str = ""  # a label-corrections file (histo_core.corrections); "" = the labels as given
    augment: Augment = field(default_factory=Augment)
    early_stopping: bool = False
    monitor: Monitor = "val_loss"
    patience: int = 5
    min_delta: float = 0.0
    seed: int = 0
    device: Device = "auto"
    amp: bool = True  # bf16 autocast on CUDA, and on CPUs with native bf16 (AMX / AVX-512 BF16)
    channels_last: bool = True  # channels-last memory format (measured faster on CPU and GPU)
    compile: bool = False
    threads: int = 0  # CPU threads; 0 = all cores
    tta: bool = False  # flip/rot90 test-time augmentation at evaluation
    stain_norm: StainNorm = "none"  # none | macenko | reinhard: normalise every tile to the training set's stain
    mpp: float | None = None  # µm per pixel of the dataset's source images, when known (folders, CSV)
    max_train_samples: int = 0  # 0 = all; for quick tries on big sets
    data_dir: str | None = None
    name: str = ""  # optional human label for the run
    started_by: str = ""  # who started it, when the web app requires sign-in ([auth] in secrets.toml)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
        aug = d.pop("augment", None) or {}
        if isinstance(aug, Augment):
            aug = asdict(aug)
        aug_known = {f.name for f in fields(Augment)}
        bad = sorted(set(aug) - aug_known)
        if bad:
            raise ConfigError(f"unknown augmentation option(s): {', '.join(bad)}")
        if "mode" in d:
            d["mode"] = canonical_mode(d["mode"])
        return cls(augment=Augment(**aug), **d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # -- validation ---------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Check every value that does not need the dataset or the model. Raises ConfigError."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("noise-mode", self.noise_mode, NOISE_MODES)
        _choice("loss", self.loss, LOSSES)
        if self.mode in LEGACY_MODES:
            raise ConfigError(f"--mode {self.mode} is now called {LEGACY_MODES[self.mode]}; use that name")
        _choice("mode", self.mode, MODES)
        _choice("monitor", self.monitor, MONITORS)
        _choice("device", self.device, DEVICES)
        _choice("train-splits", self.train_splits, TRAIN_SPLITS)
        from histo_core.models import ARCHITECTURES

        _choice("arch", self.arch, tuple(ARCHITECTURES))
        _positive_int("epochs", self.epochs)
        _positive_int("batch-size", self.batch_size)
        _positive_float("lr", self.lr)
        if not 0.0 <= self.noise <= MAX_NOISE:
            raise ConfigError(f"--noise must be between 0 and {MAX_NOISE}, got {self.noise}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.schedule == "step":
            _positive_int("step-size", self.step_size)
            if not 0.0 < self.gamma <= 1.0:
                raise ConfigError(f"--gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.patience < 1:
            raise ConfigError(f"--patience must be >= 1, got {self.patience}")
        if self.min_delta < 0:
            raise ConfigError(f"--min-delta must be >= 0, got {self.min_delta}")
        if self.size is not None:
            _positive_int("size", self.size)
            if self.size > MAX_TILE_SIZE:  # 100000 px would allocate 149 GiB for one batch
                raise ConfigError(f"--size must be at most {MAX_TILE_SIZE} px (a tile, not a slide), got {self.size}")
        if self.mpp is not None and not 0.01 <= self.mpp <= 100:
            raise ConfigError(f"--mpp must be between 0.01 and 100 µm per pixel, got {self.mpp}")
        if not 0 <= self.threads <= MAX_THREADS:
            raise ConfigError(
                f"--threads must be between 0 (all cores) and {MAX_THREADS}, got {self.threads} "
                f"(this machine has {os.cpu_count() or '?'} cores)"
            )
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be a whole number from 0 to {2**32 - 1}, got {self.seed}")
        if self.max_train_samples < 0:
            raise ConfigError(f"--max-train-samples must be >= 0, got {self.max_train_samples}")
        if self.mode in HEAD_MODES and not ARCHITECTURES[self.arch].has_backbone:
            backbones = ", ".join(n for n, a in ARCHITECTURES.items() if a.has_backbone)
            raise ConfigError(f"--mode {self.mode} needs a backbone architecture ({backbones}), not {self.arch}")
        if self.pretrained and self.mode == "scratch":
            raise ConfigError(
                "--pretrained loads ImageNet weights, --mode scratch starts from random ones: "
                "choose --mode all-layers, frozen or head-then-all, or drop --pretrained"
            )
        if not 0.0 < self.backbone_lr_mult <= 1.0:
            raise ConfigError(f"--backbone-lr-mult must be in (0, 1], got {self.backbone_lr_mult}")
        if self.sce_alpha < 0 or self.sce_beta < 0 or self.sce_alpha + self.sce_beta == 0:
            raise ConfigError(
                f"--sce-alpha and --sce-beta must be >= 0 and not both 0, got {self.sce_alpha}, {self.sce_beta}"
            )
        if not 0.0 < self.gce_q <= 1.0:
            raise ConfigError(f"--gce-q must be in (0, 1], got {self.gce_q}")
        if self.elr_lambda < 0:
            raise ConfigError(f"--elr-lambda must be >= 0, got {self.elr_lambda}")
        if not 0.0 <= self.elr_beta < 1.0:
            raise ConfigError(f"--elr-beta must be in [0, 1), got {self.elr_beta}")
        if not 0.0 <= self.boot_warmup < 1.0:
            raise ConfigError(f"--boot-warmup must be in [0, 1), got {self.boot_warmup}")
        if not 0.0 < self.divide_warmup < 1.0:
            raise ConfigError(f"--divide-warmup must be in (0, 1), got {self.divide_warmup}")
        if not 0.0 < self.divide_window <= 1.0:
            raise ConfigError(f"--divide-window must be in (0, 1], got {self.divide_window}")
        if not 0.0 < self.divide_temperature <= 10.0:
            raise ConfigError(f"--divide-temperature must be in (0, 10], got {self.divide_temperature}")
        if not 0.0 <= self.mixup <= MAX_MIXUP:
            raise ConfigError(f"--mixup must be between 0 (off) and {MAX_MIXUP}, got {self.mixup}")
        if self.early_stopping and self.train_splits == "train+val":
            raise ConfigError(
                "--early-stopping needs a validation split, but --train-splits train+val trains on it; "
                "use --train-splits train or drop --early-stopping"
            )
        if self.mode == "head-then-all":
            if not 0 <= self.head_epochs < self.epochs:
                raise ConfigError(
                    f"--head-epochs must be in 0..{self.epochs - 1} (less than --epochs), got {self.head_epochs}"
                )
        a = self.augment
        if not 0.0 <= a.rotate <= 180.0:
            raise ConfigError(f"--rotate must be between 0 and 180 degrees, got {a.rotate}")
        if not 0.05 <= a.crop_scale <= 1.0:
            raise ConfigError(f"--crop-scale must be between 0.05 and 1, got {a.crop_scale}")
        for k in ("brightness", "contrast", "saturation"):
            v = getattr(a, k)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"--{k} must be between 0 and 1, got {v}")
        if not 0.0 <= a.hue <= 0.5:
            raise ConfigError(f"--hue must be between 0 and 0.5, got {a.hue}")
        if not 0.0 <= a.stain_jitter <= 0.2:
            raise ConfigError(f"--stain-jitter must be between 0 and 0.2, got {a.stain_jitter}")
        _choice("stain-norm", self.stain_norm, STAIN_NORMS)
        return self


def with_method(config: TrainConfig, method: str) -> TrainConfig:
    """`config` trained with the label-noise method `method` (a NOISE_METHODS name). Raises ConfigError."""
    _choice("methods", method, tuple(NOISE_METHODS))
    return config.replace(**NOISE_METHODS[method])


def networks_of(config: TrainConfig) -> int:
    """How many networks a run of `config` trains (and its model averages): 2 for PAIRED_LOSSES, else 1."""
    return 2 if config.loss in PAIRED_LOSSES else 1


def divide_window(warmup: float, window: float, total: int) -> tuple[int, int]:
    """(first, last) epoch, counted from 1, of a divide loss's averaging window: the last `window` of the warm-up's
    epochs (`warmup` of `total`), at least one; the split is fitted after `last` (histo_core.losses.Divide)."""
    last = min(total - 1, max(1, round(warmup * total)))
    return last - max(1, math.floor(round(window * last, 6))) + 1, last


def window_epochs(config: TrainConfig) -> int:
    """After how many epochs a run of `config` predicts every training tile (with each of its networks): the
    epochs of the averaging window of DIVIDE_LOSSES (15 of 60 at the defaults), else none."""
    if config.loss not in DIVIDE_LOSSES or config.epochs < 2:
        return 0
    first, last = divide_window(config.divide_warmup, config.divide_window, config.epochs)
    return last - first + 1


def training_passes(config: TrainConfig) -> float:
    """A run's passes over its training tiles, in training epochs: each network's epochs plus a prediction pass
    per epoch of the averaging window (`window_epochs`, PREDICTION_PASS each). `codivide` at 60 epochs: 2 x (60 +
    15/3) = 130, 2.2 times a 60-epoch `ce` run. The time of a run of another method is the estimate of one run
    times the ratio of their passes (histo_core.study.StudySpec.time_in_runs: the study's total on the Train page
    and in the CLI); a quiet timing measured `codivide` at 2.8x (README, "Where the target stands"), so this
    runs low."""
    return networks_of(config) * (config.epochs + PREDICTION_PASS * window_epochs(config))


def method_of(config: TrainConfig) -> str:
    """The NOISE_METHODS name of a config's loss and mixup, or "<loss>+mixup<a>" when none matches."""
    for name, changes in NOISE_METHODS.items():
        if all(getattr(config, k) == v for k, v in changes.items()):
            return name
    return f"{config.loss}+mixup{config.mixup:g}" if config.mixup else config.loss


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """`allowed`: a Literal's values (typing.get_args), so the type and the check cannot disagree."""
    if value not in allowed:
        raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"--{name} must be a positive integer, got {value!r}")


def _positive_float(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
        raise ConfigError(f"--{name} must be a positive finite number, got {value!r}")


# -- the options' descriptions: one `Option` per field in histo_core/train_options.py (the table) --------------
ELSEWHERE = "elsewhere"  # group of the options the Train page picks outside the form (dataset picker, sign-in)
Getter = Callable[[str], Any]  # an option's current value by path, e.g. `values.get`


@dataclass(frozen=True)
class Option:
    """One training option: a field of TrainConfig ("epochs") or of its Augment ("augment.flip")."""

    path: str
    label: str  # the Train page's label
    help: str | Callable[[], str]  # one line: `train --help` and the page's tooltip (a function: read a registry)
    group: str = ""  # the page's section ("": the top of the form; ELSEWHERE: picked outside the form)
    choices: Callable[[], tuple[str, ...]] | None = None  # the allowed values, read from their registry when called
    # how the page words each choice (default: its name), and a line it shows under the chosen one; a mapping,
    # or a function giving one (read from a registry when asked)
    choice_labels: Mapping[str, str] | Callable[[], Mapping[str, str]] = field(default_factory=dict)
    choice_captions: Mapping[str, str] | Callable[[], Mapping[str, str]] = field(default_factory=dict)
    applies: Callable[[Getter], bool] | None = None  # given the other values: does this option matter? (None: always)
    widget: Mapping[str, Any] = field(default_factory=dict)  # the page's number box: min_value, step, format
    page_note: str = ""  # more words for the page's tooltip (advice that points at the page or a measurement)
    none_as_zero: bool = False  # a `float | None` option the page shows as a number, 0 standing for None

    @property
    def name(self) -> str:
        """The field's own name (augmentation options without the "augment." prefix)."""
        return self.path.rsplit(".", 1)[-1]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def kind(self) -> type:
        """bool, int, float or str (enum-like Literals and paths), from the dataclass annotation."""
        return field_kind(self.path)

    def help_text(self) -> str:
        """The help, with a registry's names as registered now (not at import)."""
        return self.help() if callable(self.help) else self.help

    def choice_label(self, value: str) -> str:
        labels = self.choice_labels() if callable(self.choice_labels) else self.choice_labels
        return labels.get(value, value)

    def choice_caption(self, value: str) -> str:
        captions = self.choice_captions() if callable(self.choice_captions) else self.choice_captions
        return captions.get(value, "")

    def is_active(self, get: Getter) -> bool:
        return True if self.applies is None else bool(self.applies(get))


def when(path: str, value: Any) -> Callable[[Getter], bool]:
    """An Option's `applies`: when the option at `path` has `value`."""
    return lambda get: get(path) == value


def registry_choices(values: tuple[str, ...]) -> Callable[[], tuple[str, ...]]:
    """An Option's `choices` from a fixed tuple (a Literal's values)."""
    return lambda: values


def number_box(step: float, fmt: str = "%g", **more: Any) -> dict[str, Any]:
    """An Option's `widget`: the page's number box, its step, display format and bounds."""
    return {"step": step, "format": fmt, **more}


def field_kind(path: str) -> type:
    """bool, int, float or str for a TrainConfig path, from its annotation ("int | None" -> int)."""
    cls, name = (Augment, path.split(".", 1)[1]) if path.startswith("augment.") else (TrainConfig, path)
    annotation = str(next(f for f in fields(cls) if f.name == name).type).replace(" ", "")
    for kind in (bool, int, float):
        if annotation == kind.__name__ or annotation.startswith(kind.__name__ + "|"):
            return kind
    return str


def config_paths() -> list[str]:
    """Every TrainConfig field as the table names it (augmentation fields as augment.<name>), in dataclass order."""
    top = [f.name for f in fields(TrainConfig) if f.name != "augment"]
    return top + [f"augment.{f.name}" for f in fields(Augment)]
