"""codivide (DivideMix's co-divide): the crossed split against hand-computed targets, the pair's training (each
network's targets come from the other's predictions), a run that completes with a model the normal path loads and
predicts with (the pair's mean), and a cancel + resume inside either network's epoch that continues exactly."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from histo_core import checkpoint
from histo_core import training as T
from histo_core.config import TrainConfig, method_of, networks_of, with_method
from histo_core.losses import Divide, build_loss
from histo_core.runs import RunDir
from histo_core.training.codivide import PairTrainer, cross_observe, partner_seed
from tests.test_train import assert_same_curves
from tests.test_train import quick_config as train_quick_config


def quick_config(**changes) -> TrainConfig:
    """A seconds-long synthetic codivide run: tests/test_train.py's (simplecnn, 240 training tiles, 1 thread) for 3
    epochs, 4 batches a network."""
    return with_method(train_quick_config(epochs=3), "codivide").replace(**changes)


def test_each_network_is_split_by_the_others_averaged_predictions(monkeypatch):
    from histo_core import losses

    a, b = (build_loss("codivide", 2, num_samples=3, divide_warmup=0.5) for _ in range(2))
    assert isinstance(a, Divide) and a.window(8) == (3, 4) and a.window(60) == (16, 30)  # the pilot's epochs 16-30
    # in the window, but the trainer must not observe a codivide network's own predictions: the pair does, crossed
    assert a.in_window(3, 8) and not a.wants_predictions(3, 8)
    # the split's doubt, fixed here (its GMM has its own test): tile 0 0, tile 1 0.9, tile 2 0.5
    monkeypatch.setattr(losses, "gmm_high_posterior", lambda x: torch.tensor([0.0, 0.9, 0.5]))
    labels = torch.tensor([0, 0, 1])
    nets = [SimpleNamespace(criterion=c, data=SimpleNamespace(train_labels=labels)) for c in (a, b)]
    pa = [torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])] * 2  # network A after epochs 3 and 4
    pb = [torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]), torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.8, 0.2]])]
    cross_observe(nets, [pa[0], pb[0]], 3, 8)  # type: ignore[arg-type]
    assert int(a.fitted) == int(b.fitted) == 0
    cross_observe(nets, [pa[1], pb[1]], 4, 8)  # type: ignore[arg-type]
    assert int(a.fitted) == int(b.fitted) == 4
    # A's targets from B's mean: tiles 0 and 1 (0.9, 0.1), (0.8, 0.2) agree with label 0 and keep it; tile 2
    # (0.75, 0.25), label 1, doubt 0.5: 0.5 * (0, 1) + 0.5 * (0.75, 0.25) = (0.375, 0.625)
    assert a.targets.flatten().tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0, 0.375, 0.625], abs=1e-6)
    # B's targets from A's mean: tile 1 (0.3, 0.7) disagrees with label 0, doubt 0.9: 0.1 * (1, 0) + 0.9 * (0.3,
    # 0.7) = (0.37, 0.63); tiles 0 and 2 agree with their labels and keep them
    assert b.targets.flatten().tolist() == pytest.approx([1.0, 0.0, 0.37, 0.63, 0.0, 1.0], abs=1e-6)
    # --divide-temperature 0.5 sharpens: (0.37^2, 0.63^2) / 0.5338 = (0.256463, 0.743537)
    sharp = build_loss("codivide", 2, num_samples=3, divide_temperature=0.5)
    sharp.fit_split(pa[0], labels, 4)  # type: ignore[operator]
    assert sharp.targets[1].tolist() == pytest.approx([0.256463, 0.743537], abs=1e-6)
    # --divide-window: the last fraction of the warm-up's epochs averaged (at least one)
    assert build_loss("codivide", 2, num_samples=3, divide_window=1.0).window(8) == (1, 4)  # type: ignore[operator]
    assert build_loss("divide", 2, num_samples=3, divide_window=0.1).window(8) == (4, 4)  # type: ignore[operator]


def test_the_pair_trains_each_network_on_the_others_split():
    cfg = quick_config(epochs=8, noise=0.4, noise_mode="fixed", max_train_samples=128, batch_size=32)
    cfg = cfg.replace(divide_warmup=0.25).validate()  # split after epoch 2 from epoch 2's predictions (one epoch)
    device = T.setup_device(cfg)
    data = T.build_train_data(cfg, T.open_config_dataset(cfg), str(device), need_test=False)
    pair = T.make_trainer(cfg, data, device)
    assert isinstance(pair, PairTrainer) and networks_of(cfg) == 2
    one, two = pair.nets
    assert (one.config.seed, two.config.seed) == (0, partner_seed(0)) == (0, 100)
    assert one.data is two.data  # the same tiles and noisy labels
    for _ in range(2):
        row = pair.train_epoch()
        assert math.isfinite(row["train_loss"])
    assert pair.epoch == 2 and int(one.criterion.fitted) == int(two.criterion.fitted) == 2
    p1, p2 = (torch.from_numpy(t.predict(data.train)) for t in pair.nets)
    assert not torch.allclose(p1, p2, atol=1e-3)  # two different networks
    # each network's split was fitted from the OTHER's predictions of the training tiles (summed: one epoch here)
    assert torch.allclose(one.criterion.prob_sum, p2, atol=1e-5)
    assert torch.allclose(two.criterion.prob_sum, p1, atol=1e-5)
    # the pair's prediction is the mean of the two networks' probabilities
    assert np.allclose(pair.predict(data.train), ((p1 + p2) / 2).numpy(), atol=1e-5)
    for _ in range(6):
        assert math.isfinite(pair.train_epoch()["train_loss"])
    assert pair.epoch == 8


@pytest.mark.slow
def test_a_codivide_run_completes_and_its_model_predicts_through_the_normal_path():
    from histo_core.explain import compute_cams
    from histo_core.model_cache import load_model
    from histo_core.models import MeanEnsemble
    from histo_core.predict import InputSpec, predict, predict_tiles

    cfg = quick_config(noise=0.4, noise_mode="fixed", tta=True)
    result = T.run_training(T.prepare_run(cfg))
    assert result["state"] == "completed", result.get("error")
    run = RunDir(result["run_dir"])
    saved = TrainConfig.from_dict(run.config())
    assert saved.loss == "codivide" and method_of(saved) == "codivide"
    best = checkpoint.load_checkpoint(run.best_ckpt)
    assert best["members"] == 2 and {k.split(".")[1] for k in best["state_dict"]} == {"0", "1"}
    loaded = load_model(run.best_ckpt, device="cpu")
    assert isinstance(loaded.model, MeanEnsemble)
    test = T.open_config_dataset(saved).split("test")
    tiles = np.asarray(test.images[:16])
    probs = predict(loaded, tiles, tta=True)
    # the pair's mean, computed here from the two networks on their own
    spec = InputSpec.of(loaded.meta)
    members = [predict_tiles(m, tiles, spec, tta=True) for m in loaded.model.members]
    assert np.allclose(probs, (members[0] + members[1]) / 2, atol=1e-5)
    assert not np.allclose(members[0], members[1], atol=1e-3)
    # the run's own test predictions are that mean too (TTA as configured)
    saved_probs = np.load(run.predictions_path("test"))["probs"]
    assert np.allclose(saved_probs[:16], probs, atol=1e-5)
    # Grad-CAM (network 1's layer, the pair's output) and the feature map's features work on it
    cams = compute_cams(loaded.model, loaded.meta, tiles[:2])
    assert cams.shape == (2, loaded.meta.input_size, loaded.meta.input_size) and np.isfinite(cams).all()
    assert (run.path / "embeddings").is_dir()


def _cancel_in_pair_epoch(monkeypatch, epochs: int, step: int):
    """A cancel request once the pair has finished `epochs` epochs and `step` batches of the next (both networks'
    batches counted: 1-4 inside network 1's epoch, 5-8 inside network 2's)."""
    holder = {}
    orig_init = PairTrainer.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        holder["pair"] = self

    monkeypatch.setattr(PairTrainer, "__init__", init)

    def requested(self):
        pair = holder.get("pair")
        return pair is not None and (pair.epoch > epochs or (pair.epoch == epochs and pair.step >= step))

    monkeypatch.setattr(T.CancelFlag, "requested", requested)


@pytest.mark.slow
@pytest.mark.parametrize("mid_step", [2, 6])
def test_cancel_then_resume_continues_exactly(monkeypatch, mid_step):
    # the split is fitted after epoch 2 (warm-up 0.5 of 3 epochs): a cancel in epoch 2, inside network 1's epoch
    # (step 2) or network 2's (step 6, with network 1's row of the epoch kept), resumes to the same run
    cfg = quick_config(noise=0.2, noise_mode="batch", schedule="onecycle")
    reference = T.run_training(T.prepare_run(cfg))
    ref_rows = RunDir(reference["run_dir"]).metrics()
    run = T.prepare_run(cfg)
    with monkeypatch.context() as m:
        _cancel_in_pair_epoch(m, 1, mid_step)
        assert T.run_training(run)["state"] == "cancelled"
    state = checkpoint.load_checkpoint(run.last_ckpt)["train_state"]
    assert (state["epoch"], state["step"]) == (1, mid_step)
    assert [s["epoch"] for s in state["networks"]] == ([1, 1] if mid_step < 4 else [2, 1])
    assert (state["rows"][0] is not None) == (mid_step > 4)
    result = T.run_training(run, resume=True)
    assert result["state"] == "completed"
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert_same_curves(rows, ref_rows)
    assert result["test"]["accuracy"] == pytest.approx(reference["test"]["accuracy"])


def test_codivide_under_torchrun_is_refused_in_one_line():
    from histo_core.errors import HistoError

    with pytest.raises(HistoError, match="trains its two networks in one process; run it without torchrun"):
        PairTrainer(quick_config(), None, torch.device("cpu"), rank=0, world=2)  # type: ignore[arg-type]
