"""The label-noise methods: each loss against a value computed by hand, mixup, the method table and its checks."""

from __future__ import annotations

import math

import pytest
import torch

from histo_core import config as C
from histo_core.config import NOISE_METHODS, TrainConfig, method_of, with_method
from histo_core.errors import ConfigError
from histo_core.losses import build_loss, mixup_batch


def test_gce_matches_the_hand_computed_value():
    # two classes, equal logits: p_y = 0.5; (1 - 0.5 ** 0.7) / 0.7 = (1 - 0.615572) / 0.7 = 0.549183
    loss = build_loss("gce", 2, gce_q=0.7)(torch.zeros(1, 2), torch.tensor([0]))
    assert float(loss) == pytest.approx(0.549183, abs=1e-5)
    # q = 1 is the mean absolute error of p_y: logits (ln 3, 0) -> p = (0.75, 0.25); target 1 -> 1 - 0.25
    loss = build_loss("gce", 2, gce_q=1.0)(torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([1]))
    assert float(loss) == pytest.approx(0.75, abs=1e-6)


def test_elr_matches_the_hand_computed_value_and_keeps_its_targets():
    elr = build_loss("elr", 2, elr_lambda=3.0, elr_beta=0.7, num_samples=4)
    logits, y, idx = torch.zeros(1, 2), torch.tensor([0]), torch.tensor([2])
    # step 1: t = 0.3 * (0.5, 0.5) = (0.15, 0.15); <p, t> = 0.15; CE = ln 2
    # loss = ln 2 + 3 * ln(1 - 0.15) = 0.693147 - 0.487555 = 0.205592
    assert float(elr(logits, y, idx)) == pytest.approx(0.205592, abs=1e-5)
    assert elr.targets[2].tolist() == pytest.approx([0.15, 0.15]) and elr.targets[0].sum() == 0
    # step 2: t = 0.7 * 0.15 + 0.3 * 0.5 = 0.255 each; <p, t> = 0.255; ln 2 + 3 ln(0.745) = -0.189791
    assert float(elr(logits, y, idx)) == pytest.approx(0.693147 + 3 * math.log(0.745), abs=1e-5)
    # without positions in the training source (e.g. a validation batch) it is plain cross-entropy
    assert float(elr(logits, y)) == pytest.approx(math.log(2), abs=1e-6)


def test_elr_gradient_pushes_towards_its_running_target():
    elr = build_loss("elr", 2, elr_lambda=3.0, elr_beta=0.0, num_samples=1)
    logits = torch.tensor([[2.0, 0.0]], requires_grad=True)
    # the label says class 1, the model (and so the target) says class 0: the regulariser resists the label
    ce_grad = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, torch.tensor([1])), logits)[0]
    elr_grad = torch.autograd.grad(elr(logits, torch.tensor([1]), torch.tensor([0])), logits)[0]
    assert abs(float(elr_grad[0, 0])) < abs(float(ce_grad[0, 0]))


def test_gmm_split_gives_the_high_loss_cluster_its_posterior():
    from histo_core.losses import gmm_high_posterior

    x = torch.tensor([0.10, 0.12, 0.11, 0.09, 2.0, 2.1, 1.9])
    post = gmm_high_posterior(x)
    assert post[:4].max() < 1e-3 and post[4:].min() > 1 - 1e-3
    assert torch.equal(post, gmm_high_posterior(x))  # deterministic
    assert gmm_high_posterior(torch.ones(5)).tolist() == [0.5] * 5  # nothing to split


def test_boot_matches_the_hand_computed_value_and_splits_after_its_warmup():
    boot = build_loss("boot", 2, num_samples=6, boot_warmup=0.3)
    logits, y, idx = torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([1]), torch.tensor([4])
    # before any split w = 0: cross-entropy, -ln 0.25; the tile's loss is recorded
    assert float(boot(logits, y, idx)) == pytest.approx(math.log(4.0), abs=1e-6)
    assert float(boot.losses[4]) == pytest.approx(math.log(4.0), abs=1e-6) and torch.isnan(boot.losses[0])
    # doubt 0.5; the model says class 0 with confidence 0.75, so w = 0.5 * 0.75 = 0.375; p = (0.75, 0.25)
    # sharpened (T 0.5) to (0.5625, 0.0625) / 0.625 = (0.9, 0.1); target 0.625 * (0, 1) + 0.375 * (0.9, 0.1)
    # = (0.3375, 0.6625); loss = 0.3375 ln(4/3) + 0.6625 ln 4 = 0.097093 + 0.918420 = 1.015513
    boot.noisy[4] = 0.5
    assert float(boot(logits, y, idx)) == pytest.approx(1.015513, abs=1e-5)
    # a tile whose label the model agrees with keeps it, however doubtful: cross-entropy, ln(4/3)
    assert float(boot(logits, torch.tensor([0]), idx)) == pytest.approx(math.log(4 / 3), abs=1e-6)
    assert float(boot(logits, y)) == pytest.approx(math.log(4.0), abs=1e-6)  # not a training tile: plain CE
    boot.noisy.zero_()
    boot.losses.copy_(torch.tensor([0.1, 0.12, 0.09, 2.0, 2.2, 0.11]))
    boot.end_epoch(2, 10)  # 30% of 10 epochs = 3: still warming up
    assert boot.noisy.sum() == 0
    boot.end_epoch(3, 10)
    assert (boot.noisy > 0.99).tolist() == [False, False, False, True, True, False]


def test_boot_gradient_moves_a_doubtful_tile_towards_the_models_guess():
    boot = build_loss("boot", 2, num_samples=1)
    logits = torch.tensor([[2.0, 0.0]], requires_grad=True)
    # the label says class 1, the model says class 0 (p0 = 0.881): once the split doubts the label fully, the
    # target is 0.119 * (0, 1) + 0.881 * (0.982, 0.018) = (0.865, 0.135) and the gradient p - target is
    # (0.016, -0.016), where cross-entropy's, p - (0, 1), is (0.881, -0.881): the wrong label's pull is gone
    boot.noisy[0] = 1.0
    grad = torch.autograd.grad(boot(logits, torch.tensor([1]), torch.tensor([0])), logits)[0]
    ce_grad = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, torch.tensor([1])), logits)[0]
    assert float(grad[0, 0]) == pytest.approx(0.0160, abs=2e-3) and abs(float(grad[0, 0])) < 0.05 * float(ce_grad[0, 0])


def test_divide_matches_the_hand_computed_value_after_its_averaged_split(monkeypatch):
    from histo_core import losses

    sm = build_loss("divide", 2, num_samples=3, divide_warmup=0.5)
    logits, idx = torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([2])
    # 8 epochs, warm-up 0.5: the split is fitted after epoch 4 from the predictions of epochs 3-4
    assert sm.window(8) == (3, 4)
    assert [sm.wants_predictions(e, 8) for e in range(1, 9)] == [False, False, True, True] + [False] * 4
    # before the split: cross-entropy, -ln 0.25, and no mixup
    assert float(sm(logits, torch.tensor([1]), idx)) == pytest.approx(math.log(4.0), abs=1e-6) and not sm.mixup_now
    # the split's doubt, fixed here (its GMM has its own test): tile 0 0, tile 1 0.9, tile 2 0.5
    monkeypatch.setattr(losses, "gmm_high_posterior", lambda x: torch.tensor([0.0, 0.9, 0.5]))
    labels = torch.tensor([0, 0, 1])
    sm.observe(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]), labels, 3, 8)
    assert int(sm.fitted) == 0  # epoch 3 only adds to the mean
    sm.observe(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.8, 0.2]]), labels, 4, 8)
    assert int(sm.fitted) == 4 and sm.mixup_now and not sm.wants_predictions(4, 8)
    # mean p: tile 0 (0.9, 0.1) and tile 1 (0.8, 0.2) agree with their label 0: they keep it, whatever the doubt;
    # tile 2 (0.75, 0.25), label 1, doubt 0.5: 0.5 * (0, 1) + 0.5 * (0.75, 0.25) = (0.375, 0.625) (T 1: as is)
    assert sm.targets.flatten().tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0, 0.375, 0.625], abs=1e-6)
    # prior pi = mean target = (2.375 / 3, 0.625 / 3) = (0.791667, 0.208333)
    assert sm.class_prior.tolist() == pytest.approx([0.791667, 0.208333], abs=1e-6)
    # loss for tile 2 at logits (ln 3, 0), s = (0.75, 0.25): -(0.375 ln 0.75 + 0.625 ln 0.25) = 0.974315,
    # plus 0.791667 ln(0.791667 / 0.75) + 0.208333 ln(0.208333 / 0.25) = 0.004820; its label is not used
    for y in (0, 1):
        assert float(sm(logits, torch.tensor([y]), idx)) == pytest.approx(0.979134, abs=1e-5)
    # DivideMix's sharpening, T 0.5: (0.375^2, 0.625^2) / 0.53125 = (0.264706, 0.735294)
    sharp = losses.Divide(3, 2, warmup=0.5, temperature=0.5)
    sharp.fit_split(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.75, 0.25]]), labels, 4)
    assert sharp.targets[2].tolist() == pytest.approx([0.264706, 0.735294], abs=1e-6)
    assert float(sm(logits, torch.tensor([1]))) == pytest.approx(math.log(4.0), abs=1e-6)  # not a training tile


def test_mixup_blends_with_a_permutation_and_is_reproducible():
    x = torch.arange(8.0).view(4, 2)
    a = mixup_batch(x, 0.4, torch.Generator().manual_seed(3))
    b = mixup_batch(x, 0.4, torch.Generator().manual_seed(3))
    mixed, perm, lam = a
    assert torch.equal(mixed, b[0]) and torch.equal(perm, b[1]) and lam == b[2]
    assert 0.5 <= lam <= 1.0 and sorted(perm.tolist()) == [0, 1, 2, 3]
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])


def test_every_method_is_a_valid_config_and_named_back():
    base = TrainConfig()
    for name in NOISE_METHODS:
        cfg = with_method(base, name).validate()
        assert method_of(cfg) == name
    assert set(C.LOSSES) <= set(NOISE_METHODS)  # every loss is also a method of the studies


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"loss": "focal"}, "--loss must be one of"),
        ({"gce_q": 0.0}, "--gce-q must be in (0, 1]"),
        ({"elr_beta": 1.0}, "--elr-beta must be in [0, 1)"),
        ({"elr_lambda": -1.0}, "--elr-lambda must be >= 0"),
        ({"mixup": -0.1}, "--mixup must be between 0 (off)"),
        ({"boot_warmup": 1.0}, "--boot-warmup must be in [0, 1)"),
        ({"divide_warmup": 0.0}, "--divide-warmup must be in (0, 1)"),
        ({"divide_window": 0.0}, "--divide-window must be in (0, 1]"),
        ({"divide_temperature": 0.0}, "--divide-temperature must be in (0, 10]"),
    ],
)
def test_bad_method_options_name_the_option(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        TrainConfig(**changes).validate()
    with pytest.raises(ConfigError, match="--methods must be one of"):
        with_method(TrainConfig(), "dividemix")


def test_the_train_page_calls_no_loss_robust_and_points_at_the_measurement():
    from pathlib import Path

    from histo_core.loss_options import LOSS_ADVICE
    from histo_core.train_options import OPTIONS

    loss = OPTIONS["loss"]
    labels = {name: loss.choice_label(name) for name in C.LOSSES}
    assert set(loss.choice_labels) == set(C.LOSSES)  # every loss has its words on the page
    assert not any("robust" in text for text in labels.values())  # SCE measured worse than CE under noise
    assert "Noise lab" in LOSS_ADVICE and "None of them is robust" in LOSS_ADVICE
    assert loss.page_note == LOSS_ADVICE  # the page's tooltip of the loss (pages/ui/train_form.field_widget)
    results = (Path(__file__).resolve().parent.parent / "benchmarks" / "RESULTS.md").read_text()
    assert "## Noise lab" in results  # the measurement the advice cites is recorded


def test_every_loss_option_is_a_training_option_of_the_same_name():
    """The trainer passes build_loss its options by name from the TrainConfig: each must exist on both sides."""
    import dataclasses
    import inspect

    from histo_core.config import TrainConfig
    from histo_core.losses import LOSS_OPTIONS

    keywords = {p.name for p in inspect.signature(build_loss).parameters.values() if p.kind is p.KEYWORD_ONLY}
    assert set(LOSS_OPTIONS) == keywords - {"num_samples"}
    assert set(LOSS_OPTIONS) <= {f.name for f in dataclasses.fields(TrainConfig)}
