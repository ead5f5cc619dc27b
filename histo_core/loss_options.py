"""The Loss section of the one table of training options (`histo_core/train_options.py`): the loss, which is the
label-noise method, its knobs, and what the measurements say about them (the Train page shows that advice under
the loss)."""

from __future__ import annotations

from histo_core import config as C
from histo_core.config import Getter, Option, number_box, registry_choices, when

# What the measurement says (benchmarks/RESULTS.md, "Noise lab"), not what the papers promise.
LOSS_ADVICE = (
    "Measured on the real 240-tile PathMNIST sample with 20% and 40% of the training labels wrong (6-fold cross-"
    "validation, 3 seeds; benchmarks/RESULTS.md, 'Noise lab'): with short schedules plain cross-entropy was the "
    "best choice; mixup, symmetric and generalized cross-entropy and early-learning regularisation were 3 to 13 "
    "points worse. With resnet9 at 40% noise ('Noise lab III' and 'IV'), codivide (two networks, each trained on "
    "the other's split: about 2.8x the time) was the best measured: 0.794 against cross-entropy's 0.758 at this "
    "default's 90 epochs (+3.6), and 0.798 against 0.780 at 60 epochs (+1.8); at 20% noise it was 1.1 points "
    "behind cross-entropy. The one-network divide and label smoothing were CE's equal, mixup 1.3 points, dynamic "
    "bootstrapping 2.6 and early-learning regularisation 5 points behind. None of them is robust to noise at every "
    "level; run a study (Studies page, `python -m histo_core study`) to check on your own data."
)


def _divides(get: Getter) -> bool:
    return get("loss") in C.DIVIDE_LOSSES


LOSS_SECTION: tuple[Option, ...] = (
    Option(
        "loss",
        "Loss",
        "ce (cross-entropy), smooth (label smoothing), sce (symmetric cross-entropy), gce (generalized "
        "cross-entropy), elr (early-learning regularisation), boot (dynamic bootstrapping: tiles whose loss marks "
        "their label as doubtful train towards the model's own guess), divide (a one-network DivideMix: after a "
        "warm-up, doubtful tiles train on the model's averaged guess) or codivide (DivideMix's co-divide: two "
        "networks, each split by the other's averaged guess; the model is their mean; about 3x the time); "
        "measured under label noise in benchmarks/RESULTS.md",
        choices=registry_choices(C.LOSSES),
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
            "codivide": "two networks, each split by the other (co-divide; best measured at 40% noise, ~3x time)",
        },
        page_note=LOSS_ADVICE,
    ),
    Option(
        "label_smoothing",
        "Label smoothing",
        "smoothing factor for --loss smooth",
        applies=when("loss", "smooth"),
        widget=number_box(0.05, "%.2f"),
    ),
    Option(
        "sce_alpha",
        "SCE alpha (cross-entropy weight)",
        "sce: weight of the cross-entropy term",
        applies=when("loss", "sce"),
        widget=number_box(0.05),
    ),
    Option(
        "sce_beta",
        "SCE beta (reverse cross-entropy weight)",
        "sce: weight of the reverse cross-entropy term",
        applies=when("loss", "sce"),
        widget=number_box(0.1),
    ),
    Option(
        "gce_q",
        "GCE q (0..1]",
        "gce: the exponent q in (0, 1] (near 0 behaves like cross-entropy, 1 like mean absolute error)",
        applies=when("loss", "gce"),
        widget=number_box(0.05),
    ),
    Option(
        "elr_lambda",
        "ELR lambda (regulariser weight)",
        "elr: weight of the early-learning regulariser",
        applies=when("loss", "elr"),
        widget=number_box(0.5),
    ),
    Option(
        "elr_beta",
        "ELR beta (target momentum)",
        "elr: momentum of each tile's running-average target, in [0, 1)",
        applies=when("loss", "elr"),
        widget=number_box(0.05),
    ),
    Option(
        "boot_warmup",
        "Bootstrapping warm-up (fraction of epochs)",
        "boot: fraction of the epochs trained with plain cross-entropy before doubtful labels are split off, in [0, 1)",
        applies=when("loss", "boot"),
        widget=number_box(0.05),
    ),
    Option(
        "divide_warmup",
        "Divide warm-up (fraction of epochs)",
        "divide, codivide: fraction of the epochs trained with plain cross-entropy before the split, in (0, 1)",
        applies=_divides,
        widget=number_box(0.05),
    ),
    Option(
        "divide_window",
        "Divide averaging window (fraction of the warm-up)",
        "divide, codivide: the split uses the predictions averaged over this last fraction of the warm-up, (0, 1]",
        applies=_divides,
        widget=number_box(0.05),
    ),
    Option(
        "divide_temperature",
        "Divide target temperature (1 = as is)",
        "divide, codivide: sharpening temperature of the soft targets (DivideMix used 0.5), in (0, 10]",
        applies=_divides,
        widget=number_box(0.1),
    ),
    Option(
        "mixup",
        "Mixup alpha (0 = off)",
        f"mixup: train on blends of two tiles and their labels, Beta(a, a) weights; a in 0 (off)..{C.MAX_MIXUP}",
        widget={"min_value": 0.0, "step": 0.1, "format": "%g"},
    ),
)
