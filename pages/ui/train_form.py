"""The Train page's form: one widget per TrainConfig field, grouped, with defaults from
`histo_core.training.default_config(dataset, device)`.

Every widget is keyed `train.<field>` (augmentation: `train.augment.<field>`) and always rendered (irrelevant
ones disabled, not hidden) because Streamlit drops the state of widgets a run does not draw. Defaults are
written into st.session_state whenever the dataset or the device changes, before the widgets are drawn.
`FORM_FIELDS` + `OUTSIDE_FORM` must cover every TrainConfig field; tests/test_page_train.py checks it, so a
new option cannot silently miss the page.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import streamlit as st

from histo_core import config as C
from histo_core.config import Augment, TrainConfig
from histo_core.models import ARCHITECTURES
from pages.ui.common import WRAP

PREFIX = "train."
# chosen elsewhere on the page (dataset picker) or not a training choice (data_dir comes with the picker;
# started_by is the signed-in user, set when the run is submitted; corrections has its own picker)
OUTSIDE_FORM = ("dataset", "size", "as_rgb", "data_dir", "started_by", "corrections")

CHOICES: dict[str, tuple[str, ...]] = {
    "arch": tuple(ARCHITECTURES),
    "optimizer": C.OPTIMIZERS,
    "schedule": C.SCHEDULES,
    "noise_mode": C.NOISE_MODES,
    "loss": C.LOSSES,
    "mode": C.MODES,
    "monitor": C.MONITORS,
    "device": C.DEVICES,
    "train_splits": getattr(C, "TRAIN_SPLITS", ("train",)),
    "stain_norm": C.STAIN_NORMS,
}
# float fields where None means "unknown": a number input on which 0 stands for None
UNKNOWN_AS_ZERO = ("mpp",)

CHOICE_LABELS = {
    "noise_mode": {
        "batch": "batch: labels re-flipped in every batch",
        "fixed": "fixed: one noisy label set for all epochs (like a mislabelled dataset)",
        "pair": "pair: each class flipped into its neighbour",
    },
    "loss": {
        "ce": "cross-entropy",
        "smooth": "cross-entropy + label smoothing",
        "sce": "symmetric cross-entropy",
        "gce": "generalized cross-entropy",
        "elr": "early-learning regularisation",
        "boot": "dynamic bootstrapping (doubtful labels -> the model's guess)",
    },
    "mode": {
        "scratch": "scratch: train every layer",
        "all-layers": "all layers: train every layer from the start (from ImageNet with pretrained)",
        "frozen": "frozen: backbone frozen, MLP head trained",
        "head-then-all": "head, then all layers: the head alone first, then every layer with a lower backbone LR",
    },
    "schedule": {"none": "constant", "step": "step decay", "cosine": "cosine annealing", "onecycle": "one-cycle"},
    "train_splits": {"train": "train (validate on val)", "train+val": "train+val (no validation; last epoch wins)"},
    "device": {"auto": "auto (GPU when present)", "cpu": "cpu", "cuda": "cuda"},
    "stain_norm": {
        "none": "none",
        "macenko": "Macenko (stain vectors and concentrations)",
        "reinhard": "Reinhard (colour statistics in CIELAB)",
    },
}

# What the measurement says (benchmarks/RESULTS.md, "Noise lab"), not what the papers promise.
LOSS_ADVICE = (
    "Measured on the real 240-tile PathMNIST sample with 20% and 40% of the training labels wrong (6-fold "
    "cross-validation, 3 seeds; benchmarks/RESULTS.md, 'Noise lab'): plain cross-entropy was the best choice. "
    "Label smoothing matched it, and so did dynamic bootstrapping under noise (it was 2.5 points worse on clean "
    "labels); mixup, symmetric cross-entropy, generalized cross-entropy and early-learning regularisation were 3 "
    "to 13 points worse with the short schedules a small set trains with. Training longer helped more than any "
    "of them. None of them is robust to noise here; run a study (Studies page, `python -m histo_core study`) to "
    "check on your own data."
)

# group -> [(field, label, extra widget kwargs)]
GROUPS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "": [
        ("name", "Run name (optional)", {"help": "a label shown in the runs table"}),
        ("arch", "Architecture", {}),
        ("epochs", "Epochs", {"min_value": 1, "step": 1}),
        (
            "noise",
            "Label-noise rate",
            {
                "help": "fraction of training labels replaced by a wrong class (0 = clean; up to 0.9)",
                "step": 0.05,
                "format": "%.2f",
            },
        ),
        ("noise_mode", "Label-noise mode", {}),
    ],
    "Optimiser and schedule": [
        ("batch_size", "Batch size", {"min_value": 1, "step": 16}),
        ("optimizer", "Optimiser", {}),
        (
            "lr",
            "Learning rate",
            {"min_value": 0.0, "step": 1e-4, "format": "%g", "help": "the LR finder below suggests one"},
        ),
        ("momentum", "Momentum (SGD)", {"step": 0.01, "format": "%.3f"}),
        ("weight_decay", "Weight decay", {"min_value": 0.0, "step": 1e-4, "format": "%g"}),
        ("schedule", "LR schedule", {}),
        ("step_size", "Step size (epochs, step schedule)", {"step": 1}),
        ("gamma", "Gamma (step schedule)", {"step": 0.05, "format": "%.3f"}),
    ],
    "Loss": [
        ("loss", "Loss", {"help": LOSS_ADVICE}),
        ("label_smoothing", "Label smoothing", {"step": 0.05, "format": "%.2f"}),
        ("sce_alpha", "SCE alpha (cross-entropy weight)", {"step": 0.05, "format": "%g"}),
        ("sce_beta", "SCE beta (reverse cross-entropy weight)", {"step": 0.1, "format": "%g"}),
        ("gce_q", "GCE q (0..1]", {"step": 0.05, "format": "%g"}),
        ("elr_lambda", "ELR lambda (regulariser weight)", {"step": 0.5, "format": "%g"}),
        ("elr_beta", "ELR beta (target momentum)", {"step": 0.05, "format": "%g"}),
        ("boot_warmup", "Bootstrapping warm-up (fraction of epochs)", {"step": 0.05, "format": "%g"}),
        ("mixup", "Mixup alpha (0 = off)", {"min_value": 0.0, "step": 0.1, "format": "%g"}),
    ],
    "Augmentation": [
        ("augment.flip", "Random flips", {}),
        ("augment.rot90", "Random 90° rotations", {}),
        ("augment.rotate", "Small rotation (max degrees, 0 = off)", {"step": 5.0, "format": "%g"}),
        ("augment.resized_crop", "Random resized crop", {}),
        ("augment.crop_scale", "Crop: minimum area fraction", {"step": 0.05, "format": "%.2f"}),
        ("augment.brightness", "Brightness jitter", {"step": 0.05, "format": "%.2f"}),
        ("augment.contrast", "Contrast jitter", {"step": 0.05, "format": "%.2f"}),
        ("augment.saturation", "Saturation jitter", {"step": 0.05, "format": "%.2f"}),
        ("augment.hue", "Hue jitter", {"step": 0.01, "format": "%.2f"}),
        ("augment.stain_jitter", "H&E stain jitter (HED space, 0 = off)", {"step": 0.01, "format": "%.2f"}),
    ],
    "Stain and scale": [
        (
            "stain_norm",
            "Stain normalisation (training tiles and every input alike)",
            {
                "help": "normalise every tile to the training set's stain; helps on tiles from other labs "
                "(benchmarks/RESULTS.md)"
            },
        ),
        (
            "mpp",
            "µm per pixel of the dataset's images (0 = unknown)",
            {
                "min_value": 0.0,
                "step": 0.05,
                "format": "%.3f",
                "help": "known for PathMNIST and PCam; for a folder or CSV it lets the model record its field of view",
            },
        ),
    ],
    "Early stopping and splits": [
        ("early_stopping", "Stop early when the monitored metric stops improving", {}),
        ("monitor", "Monitor (also picks best.pt)", {}),
        ("patience", "Patience (epochs)", {"step": 1}),
        ("min_delta", "Minimum improvement", {"step": 1e-3, "format": "%g"}),
        ("train_splits", "Train on", {}),
        ("max_train_samples", "Use at most N training tiles (0 = all)", {"min_value": 0, "step": 100}),
        ("seed", "Random seed", {"step": 1}),
    ],
    "Model mode and pretrained weights": [
        ("mode", "Training mode", {}),
        ("pretrained", "Start from ImageNet weights (ResNet/DenseNet; needs the weights cached or internet)", {}),
        ("head_epochs", "Head-only epochs (head, then all layers)", {"step": 1}),
        ("backbone_lr_mult", "Backbone LR multiplier (head, then all layers)", {"step": 0.05, "format": "%g"}),
    ],
    "Device and performance": [
        ("device", "Device", {}),
        ("threads", "CPU threads (0 = all cores)", {"min_value": 0, "step": 1}),
        ("amp", "Mixed precision on CUDA (bf16/fp16)", {}),
        ("channels_last", "channels-last memory format (CPU and CUDA)", {}),
        ("compile", "torch.compile (slow first epoch)", {}),
        ("tta", "Test-time augmentation at evaluation (flips/rotations)", {}),
    ],
}

FORM_FIELDS = [f for group in GROUPS.values() for f, _, _ in group]


def all_config_fields() -> set[str]:
    """Every TrainConfig field as the form names it (augmentation fields as augment.<name>)."""
    top = {f.name for f in fields(TrainConfig) if f.name != "augment"}
    return top | {f"augment.{f.name}" for f in fields(Augment)}


def _get(config: TrainConfig, path: str) -> Any:
    obj = config
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def apply_defaults(defaults: TrainConfig) -> None:
    """Put `defaults` into the widgets' session state (call before the widgets are drawn)."""
    for path in FORM_FIELDS:
        if path == "device":
            continue  # the user's device choice produced these defaults; keep it
        value, kind = _get(defaults, path), _field_type(path)
        if path in UNKNOWN_AS_ZERO:
            value = float(value or 0.0)
        if kind is float and value is not None:
            value = float(value)  # number_input refuses an int value next to float steps
        st.session_state[PREFIX + path] = value


def _field_type(path: str) -> type:
    cls, name = (Augment, path.split(".", 1)[1]) if path.startswith("augment.") else (TrainConfig, path)
    default = next(f for f in fields(cls) if f.name == name).default
    return type(default)


def _disabled(path: str) -> bool:
    s = st.session_state
    get = lambda f: s.get(PREFIX + f)  # noqa: E731
    rules = {
        "momentum": get("optimizer") != "sgd",
        "step_size": get("schedule") != "step",
        "gamma": get("schedule") != "step",
        "label_smoothing": get("loss") != "smooth",
        "sce_alpha": get("loss") != "sce",
        "sce_beta": get("loss") != "sce",
        "gce_q": get("loss") != "gce",
        "elr_lambda": get("loss") != "elr",
        "elr_beta": get("loss") != "elr",
        "boot_warmup": get("loss") != "boot",
        "noise_mode": not get("noise"),
        "augment.crop_scale": not get("augment.resized_crop"),
        "monitor": get("train_splits") == "train+val",  # no validation split: nothing to monitor
        "patience": not get("early_stopping"),
        "min_delta": not get("early_stopping"),
        "head_epochs": get("mode") != "head-then-all",
        "backbone_lr_mult": get("mode") != "head-then-all",
    }
    return bool(rules.get(path, False))


def field_widget(path: str, label: str, kwargs: dict[str, Any]) -> None:
    key = PREFIX + path
    kwargs = dict(kwargs)
    kwargs.setdefault("disabled", _disabled(path))
    if path in CHOICES:
        options = list(ARCHITECTURES) if path == "arch" else list(CHOICES[path])  # registered now, not at import
        labels = CHOICE_LABELS.get(path, {})
        if path == "arch":
            labels = {n: a.title for n, a in ARCHITECTURES.items()}
        value = st.selectbox(label, options, key=key, format_func=lambda v, labels=labels: labels.get(v, v), **kwargs)
        if path == "arch" and value in ARCHITECTURES:
            st.caption(ARCHITECTURES[value].description)
        return
    kind = float if path in UNKNOWN_AS_ZERO else _field_type(path)
    if kind is bool:
        st.checkbox(label, key=key, **WRAP, **{k: v for k, v in kwargs.items() if k in ("help", "disabled")})
    elif kind is int:
        st.number_input(label, key=key, **kwargs)
    elif kind is float:
        kwargs.setdefault("format", "%g")
        st.number_input(label, key=key, **kwargs)
    else:
        st.text_input(label, key=key, **{k: v for k, v in kwargs.items() if k in ("help", "disabled")})


def render_fields(columns: int = 3) -> None:
    """The ungrouped fields first, then one expander per group."""
    for group, items in GROUPS.items():
        container = st.container() if not group else st.expander(group)
        with container:
            cols = st.columns(columns)
            for i, (path, label, kwargs) in enumerate(items):
                with cols[i % columns]:
                    field_widget(path, label, kwargs)


def config_from_state(base: TrainConfig) -> TrainConfig:
    """`base` (dataset, size, as_rgb, data_dir and the defaults) with every form value applied. Numbers typed
    in the widgets are coerced to the field's type; validation is left to TrainConfig.validate()."""
    d = base.to_dict()
    for path in FORM_FIELDS:
        key = PREFIX + path
        if key not in st.session_state:
            continue
        value = st.session_state[key]
        if path in UNKNOWN_AS_ZERO:
            value = float(value) if value else None
        kind = _field_type(path)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if path.startswith("augment."):
            d["augment"][path.split(".", 1)[1]] = value
        else:
            d[path] = value
    d["name"] = (d.get("name") or "").strip()
    return TrainConfig.from_dict(d)


def form_message(text: str) -> str:
    """A config error as the form says it: CLI flags (`--noise`, `--data-dir`) become the widgets' labels."""
    import re

    labels = {path.split(".")[-1].replace("_", "-"): label for group in GROUPS.values() for path, label, _ in group}

    def label(m: re.Match) -> str:
        name = labels.get(m.group(1))
        return f"'{name}'" if name else m.group(1).replace("-", " ")

    return re.sub(r"--([a-z][a-z0-9-]*)", label, text)
