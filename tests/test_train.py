"""The training engine: run artifacts, resume, cancellation, failures, schedules, optimizers, modes, losses,
reproducibility, evaluation on other datasets, and a real-data check."""

from __future__ import annotations

import errno
import json
import math
import os

import numpy as np
import pytest
import torch

from histo_core import checkpoint
from histo_core import training as T
from histo_core.config import TrainConfig, with_method
from histo_core.datasets import open_dataset
from histo_core.errors import ConfigError, DatasetError, HistoError
from histo_core.models import get_arch
from histo_core.runs import RunDir

ROW_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds", "images_per_s"}
REPORT_KEYS = {
    "n",
    "loss",
    "accuracy",
    "auc",
    "auc_kind",
    "ece",
    "classes",
    "per_class",
    "confusion",
    "roc",
    "reliability",
}


def quick_config(**changes) -> TrainConfig:
    """A seconds-long synthetic run: simplecnn, 240 training tiles, 1 thread."""
    cfg = TrainConfig(
        dataset="synthetic",
        arch="simplecnn",
        epochs=2,
        batch_size=64,
        lr=3e-3,
        optimizer="adamw",
        max_train_samples=240,
        threads=1,
        seed=0,
    )
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg


def assert_same_curves(rows: list[dict], ref_rows: list[dict]) -> None:
    """An interrupted and resumed run is the same run: its epochs' losses are the uninterrupted run's."""
    for a, b in zip(rows, ref_rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_run_produces_every_artifact():
    run = T.prepare_run(quick_config(epochs=2, tta=True))
    assert run.status().state == "queued" and run.status().epochs == 2
    assert json.loads(run.config_path.read_text())["arch"] == "simplecnn"
    assert run.dataset()["classes"][0] == "adipose"
    result = T.run_training(run)
    assert result["state"] == "completed", result
    st = run.status()
    assert st.state == "completed" and st.epoch == 2 and st.steps_per_epoch == 4 and st.pid and st.heartbeat
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [1, 2] and all(set(r) == ROW_KEYS for r in rows)
    assert all(0 <= r["val_acc"] <= 1 and r["val_auc"] is not None and r["images_per_s"] > 0 for r in rows)
    latest = json.loads(run.val_latest_path.read_text())
    assert REPORT_KEYS <= set(latest) and latest["epoch"] == 2 and latest["n"] == 300
    for path in (run.best_ckpt, run.last_ckpt):
        ck = checkpoint.load_checkpoint(path)
        model = checkpoint.model_from_checkpoint(ck)
        assert ck["classes"] == run.dataset()["classes"] and ck["input_size"] == 28 and len(ck["mean"]) == 3
        assert model(torch.zeros(1, 3, 28, 28)).shape == (1, 6)
    assert "train_state" in checkpoint.load_checkpoint(run.last_ckpt)
    # the "unlike the training tiles" flag has one threshold, set on the combined score of the val tiles: 5% of
    # them are flagged (each check at its own 5% flagged more together)
    from histo_core.model_cache import load_model
    from histo_core.ood import ood_check
    from histo_core.predict import predict

    combined = run.results()["ood"]["combined"]  # a run keeps its calibration in results.json
    assert combined["split"] == "val" and combined["heldout_tiles"] == 300 and combined["quantile"] == 0.95
    loaded = load_model(str(run.best_ckpt))
    val = open_dataset("synthetic").split("val").images[:300]
    found = ood_check(loaded.meta, predict(loaded, val, tta=True), val, loaded.model)
    assert found is not None and 0.02 <= found.flags.mean() <= 0.06, found.flags.mean()
    res = run.results()
    assert {"test", "val", "best_epoch", "epochs_run", "stopped_early", "train_seconds", "device"} <= set(res)
    assert REPORT_KEYS <= set(res["test"]) and res["test"]["n"] == 300 and res["epochs_run"] == 2
    assert res["test"]["accuracy"] > 0.5 and res["test"]["tta"] is True and res["device"] == "cpu"
    for split, n in (("test", 300), ("val", 300)):
        with np.load(run.predictions_path(split)) as z:
            assert z["probs"].shape == (n, 6) and z["probs"].dtype == np.float32
            assert np.allclose(z["probs"].sum(1), 1, atol=1e-4)
            assert z["labels"].shape == (n,) and z["indices"].tolist() == list(range(n))
            assert np.allclose(z["loss"], -np.log(z["probs"][np.arange(n), z["labels"]]), atol=1e-4)
    assert not run.noise_path.exists()


def _cancel_after_epochs(monkeypatch, epochs: int, step: int = 0):
    """Make the run see a cancel request at `step` batches into epoch `epochs + 1` (0 = right after epoch `epochs`)."""
    holder = {}
    orig_init = T.Trainer.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        holder["trainer"] = self

    monkeypatch.setattr(T.Trainer, "__init__", init)

    def requested(self):
        tr = holder.get("trainer")
        return tr is not None and (tr.epoch > epochs or (tr.epoch == epochs and tr.step >= max(step, 1)))

    monkeypatch.setattr(T.CancelFlag, "requested", requested)


@pytest.mark.slow
@pytest.mark.parametrize("mid_epoch_step,method", [(0, "ce"), (2, "ce"), (2, "elr+mixup"), (2, "boot"), (2, "divide")])
def test_cancel_then_resume_continues_exactly(monkeypatch, mid_epoch_step, method):
    # elr+mixup: ELR's per-tile targets and the mixup generator are part of the resumable state; boot: its
    # recorded losses and the split fitted after epoch 1 (boot_warmup 0.3 of 3 epochs); divide: its split and
    # targets, fitted from the predictions after epoch 1 (warm-up 0.5 of 3 epochs)
    cfg = with_method(quick_config(epochs=3, noise=0.2, noise_mode="batch", schedule="onecycle"), method)
    reference = T.run_training(T.prepare_run(cfg))
    ref_rows = RunDir(reference["run_dir"]).metrics()

    run = T.prepare_run(cfg)
    with monkeypatch.context() as m:
        _cancel_after_epochs(m, 1, mid_epoch_step)
        assert T.run_training(run)["state"] == "cancelled"
    assert run.status().state == "cancelled"
    ck = checkpoint.load_checkpoint(run.last_ckpt)
    assert ck["train_state"]["epoch"] == 1
    assert ck["train_state"]["step"] == (mid_epoch_step or 1)  # stopped at the end of a batch
    result = T.run_training(run, resume=True)
    assert result["state"] == "completed"
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert_same_curves(rows, ref_rows)


@pytest.mark.slow
def test_resume_truncates_rows_written_after_the_checkpoint():
    run = T.prepare_run(quick_config(epochs=2))
    T.run_training(run)
    # pretend last.pt is from epoch 1 while metrics already has rows 1..2 (a crash between the two writes)
    ck = checkpoint.load_checkpoint(run.last_ckpt)
    ck["train_state"]["epoch"] = 1
    torch.save(ck, run.last_ckpt)
    run.update_status(state="failed")
    T.run_training(run, resume=True)
    assert [r["epoch"] for r in run.metrics()] == [1, 2]


@pytest.mark.slow
def test_resume_without_checkpoint_fails_with_a_message():
    run = T.prepare_run(quick_config())
    res = T.run_training(run, resume=True)
    assert res["state"] == "failed" and "nothing to resume" in res["error"]
    assert run.status().error == res["error"]


@pytest.mark.slow
def test_cancel_file_while_queued_cancels(monkeypatch):
    run = T.prepare_run(quick_config())
    run.cancel_path.write_text("")
    assert T.run_training(run)["state"] == "cancelled"
    assert not run.metrics()


@pytest.mark.slow
def test_failure_is_recorded_with_one_line_and_traceback(tmp_path):
    npz = tmp_path / "tiny.npz"
    ds = open_dataset("synthetic")
    s = ds.split("train")
    np.savez(
        npz,
        train_images=s.images[:60],
        train_labels=s.labels[:60],
        val_images=s.images[60:80],
        val_labels=s.labels[60:80],
    )
    run = T.prepare_run(quick_config(dataset=str(npz), max_train_samples=0))
    npz.unlink()
    res = T.run_training(run)
    assert res["state"] == "failed" and "tiny.npz" in res["error"] and "\n" not in res["error"]
    assert run.status().state == "failed" and run.status().error == res["error"]
    assert "Traceback" in run.log_path.read_text()


@pytest.mark.slow
def test_disk_full_fails_the_run_and_keeps_finished_epochs(monkeypatch):
    run = T.prepare_run(quick_config(epochs=3))
    real_save = checkpoint.save_checkpoint
    calls = {"n": 0}

    def save(path, *a, **k):
        if "last" in str(path):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    res = T.run_training(run)
    assert res["state"] == "failed" and res["error"].startswith("disk full")
    assert [r["epoch"] for r in run.metrics()] == [1, 2]
    assert checkpoint.load_checkpoint(run.last_ckpt)["train_state"]["epoch"] == 1


@pytest.mark.slow
def test_fixed_noise_run_records_noise_npz():
    run = T.prepare_run(quick_config(epochs=1, noise=0.25, noise_mode="fixed"))
    assert T.run_training(run)["state"] == "completed"
    with np.load(run.noise_path) as z:
        assert set(z.files) >= {"noisy_labels", "flipped", "indices"}
        assert z["flipped"].sum() == 60 and len(z["indices"]) == 240
        assert (z["noisy_labels"][z["flipped"]] != z["clean_labels"][z["flipped"]]).all()
    with np.load(run.predictions_path("test")) as z:  # test labels stay clean
        assert (z["labels"] == open_dataset("synthetic").split("test").labels).all()


@pytest.mark.slow
def test_early_stopping_stops_and_keeps_best():
    # lr so small nothing improves after the first epoch by more than min_delta
    run = T.prepare_run(quick_config(epochs=8, lr=1e-7, early_stopping=True, patience=2, min_delta=1.0))
    res = T.run_training(run)
    assert res["state"] == "completed"
    r = run.results()
    assert r["stopped_early"] is True and r["epochs_run"] == 3 and r["best_epoch"] == 1


@pytest.mark.slow
def test_train_plus_val_has_no_validation_and_keeps_last_epoch():
    run = T.prepare_run(quick_config(epochs=2, train_splits="train+val", max_train_samples=0))
    res = T.run_training(run)
    assert res["state"] == "completed"
    assert all(r["val_loss"] is None for r in run.metrics())
    r = run.results()
    assert r["val"] is None and r["best_epoch"] == 2 and r["test"]["n"] == 300
    assert run.status().steps_per_epoch == math.ceil(1500 / 64)


# -- pieces ------------------------------------------------------------------------------------------
def _trainer(cfg: TrainConfig) -> T.Trainer:
    T.setup_device(cfg)
    data = T.build_train_data(cfg, T.open_config_dataset(cfg), "cpu", need_test=False)
    return T.Trainer(cfg, data, torch.device("cpu"))


def test_cpu_autocast_follows_the_cpu(monkeypatch):
    """bf16 autocast with --amp on CUDA, and on a CPU only where it computes bf16 natively (elsewhere it is
    emulated and slower); $HISTO_CPU_BF16 overrides the detection."""
    from histo_core.training.device import autocast_dtype

    cpu, cuda, cfg = torch.device("cpu"), torch.device("cuda"), quick_config()
    monkeypatch.setenv("HISTO_CPU_BF16", "1")
    assert autocast_dtype(cfg, cpu) is torch.bfloat16 and autocast_dtype(cfg.replace(amp=False), cpu) is None
    monkeypatch.setenv("HISTO_CPU_BF16", "0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))  # per card: tests/test_gpu_path.py
    assert autocast_dtype(cfg, cpu) is None and autocast_dtype(cfg, cuda) is torch.bfloat16
    monkeypatch.delenv("HISTO_CPU_BF16")
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert (autocast_dtype(cfg, cpu) is torch.bfloat16) == native


@pytest.mark.parametrize("native", ["1", "0"])
def test_a_cpu_training_step_runs_in_bf16_where_the_cpu_has_it(native, monkeypatch):
    monkeypatch.setenv("HISTO_CPU_BF16", native)
    tr = _trainer(quick_config(max_train_samples=64, batch_size=32))
    seen: list[torch.dtype] = []
    conv = next(m for m in tr.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    row = tr.train_epoch()
    assert seen and set(seen) == {torch.bfloat16 if native == "1" else torch.float32}
    assert np.isfinite(row["train_loss"])
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # the weights themselves stay fp32


@pytest.mark.slow
def test_one_cycle_over_four_steps_trains():
    """One epoch of 4 batches: torch's OneCycleLR divided by zero at pct_start 0.25 (0.25 * 4 == 1)."""
    tr = _trainer(quick_config(epochs=1, schedule="onecycle", max_train_samples=256, batch_size=64))
    assert tr.steps_per_epoch == 4
    row = tr.train_epoch()
    assert np.isfinite(row["train_loss"]) and tr.epoch == 1


@pytest.mark.slow
def test_schedules_step_as_configured():
    lrs = {}
    for schedule in ("none", "step", "cosine", "onecycle"):
        tr = _trainer(quick_config(epochs=4, schedule=schedule, step_size=2, gamma=0.5, lr=0.01, max_train_samples=128))
        seen = []
        while tr.epoch < 4:
            tr.train_epoch(lambda t, n, seen=seen: seen.append(t.current_lr()) and False)
        lrs[schedule] = seen
    assert tr.steps_per_epoch == 2
    assert lrs["none"] == [0.01] * 8
    # per epoch: the LR after each batch (read after the step) within an epoch is constant
    assert lrs["step"] == pytest.approx([0.01] * 4 + [0.005] * 4)
    cos = [0.01 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert lrs["cosine"] == pytest.approx([c for c in cos for _ in range(2)])
    # per batch: from lr/25 up to the peak after 25% of the 8 steps, then annealed to ~0 for the last step
    one = lrs["onecycle"][:-1]  # the LR set after the last step is never used
    assert len(set(one)) == 7 and max(one) == pytest.approx(0.01) and one[-1] < 1e-6 and one.index(max(one)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("loss", ["ce", "smooth", "sce", "gce", "elr", "boot", "divide"])
def test_each_optimizer_and_loss_trains_a_step(optimizer, loss):
    tr = _trainer(quick_config(optimizer=optimizer, loss=loss, max_train_samples=64, batch_size=32))
    before = [p.detach().clone() for p in tr.model.parameters()]
    row = tr.train_epoch()
    assert math.isfinite(row["train_loss"]) and row["epoch"] == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    assert type(tr.optimizer).__name__.lower() == f"eager{optimizer}"  # the stock class minus dynamo's hooks
    assert tr.optimizer.defaults["fused"] is True  # one fused kernel (measured faster on CPU than torch's default)


def test_boot_trains_and_its_split_finds_the_flipped_labels():
    """boot on the synthetic set with 40% fixed noise: after its warm-up the split doubts the tiles whose labels
    were flipped more than the others, and training goes on with finite losses."""
    cfg = with_method(
        quick_config(epochs=4, noise=0.4, noise_mode="fixed", max_train_samples=192, batch_size=32), "boot"
    )
    tr = _trainer(cfg)
    flipped = torch.from_numpy(tr.data.noise_flipped)
    for _ in range(cfg.epochs):
        assert math.isfinite(tr.train_epoch()["train_loss"])
    doubt = tr.criterion.noisy
    assert not torch.isnan(tr.criterion.losses).any()  # every training tile's loss recorded
    # the split's ranking: the chance that a flipped tile is doubted more than a clean one (0.5 = no better than chance)
    auc = float((doubt[flipped][:, None] > doubt[~flipped][None, :]).float().mean())
    assert auc > 0.75, auc


def test_divide_trains_and_its_targets_correct_flipped_labels():
    """divide on the synthetic set with 40% fixed noise: after its warm-up the held targets of the flipped tiles
    put more weight on their true class than on the wrong label, and training goes on with finite losses."""
    cfg = with_method(
        quick_config(epochs=8, noise=0.4, noise_mode="fixed", max_train_samples=192, batch_size=32), "divide"
    ).replace(divide_warmup=0.25)
    tr = _trainer(cfg)
    flipped = torch.from_numpy(tr.data.noise_flipped)
    for _ in range(cfg.epochs):
        assert math.isfinite(tr.train_epoch()["train_loss"])
    sm = tr.criterion
    assert int(sm.fitted) == 2 and int(sm.observed) == 1  # fitted after epoch 2 from its predictions
    q = sm.targets
    assert torch.allclose(q.sum(1), torch.ones(len(q)))
    true = torch.from_numpy(np.asarray(tr.data.clean_train_labels)).long()
    rows = torch.arange(len(q))
    on_true, on_label = q[rows, true][flipped], q[rows, tr.data.train_labels][flipped]
    assert float(on_true.mean()) > float(on_label.mean()), (on_true.mean(), on_label.mean())  # CE: 0 against 1


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
@pytest.mark.parametrize("fused", [True, False])
def test_eager_optimizer_updates_exactly_like_the_stock_class(name, fused):
    from histo_core.training.device import eager_optimizer_class

    stock_cls = getattr(torch.optim, name)
    kwargs = {"lr": 0.01, "weight_decay": 1e-3, "fused": fused}
    if name == "SGD":
        kwargs.update(momentum=0.9, nesterov=True)
    params = {}
    for cls in (stock_cls, eager_optimizer_class(stock_cls)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))
        opt = cls(model.parameters(), **kwargs)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=6)
        for step in range(5):
            gen = torch.Generator().manual_seed(step)
            opt.zero_grad(set_to_none=True)
            model(torch.randn(8, 6, generator=gen)).square().mean().backward()
            opt.step()
            sched.step()
        params[cls] = [p.detach().clone() for p in model.parameters()]
        saved = opt.state_dict()
        stock_cls(model.parameters(), **kwargs).load_state_dict(saved)  # checkpoints interchange
    eager = eager_optimizer_class(stock_cls)
    assert issubclass(eager, stock_cls) and eager is eager_optimizer_class(stock_cls)
    assert all(torch.equal(a, b) for a, b in zip(params[stock_cls], params[eager]))
    assert not torch.equal(params[eager][0], torch.nn.Linear(6, 4).weight)


@pytest.mark.slow
def test_a_training_process_that_does_not_compile_never_imports_dynamo():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from histo_core import training as T\n"
        "from tests.test_train import quick_config, _trainer\n"
        "tr = _trainer(quick_config(max_train_samples=64, batch_size=32))\n"
        "tr.train_epoch(); tr.optimizer.state_dict(); tr.optimizer.load_state_dict(tr.optimizer.state_dict())\n"
        "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo'))[:3])\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"


def test_fused_optimizer_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("HISTO_FUSED_OPTIMIZER", "0")
    tr = _trainer(quick_config(max_train_samples=64, batch_size=32))
    assert not tr.optimizer.defaults.get("fused")


@pytest.mark.slow
def test_compile_wraps_the_trained_module_and_keeps_checkpoint_keys_plain(monkeypatch, tmp_path):
    """Building a compiled trainer (compilation itself happens at the first step, see the HISTO_TEST_COMPILE test)."""
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.setenv(name, "")  # restored (removed) after the test, whatever compile_module sets
        monkeypatch.delenv(name)
    monkeypatch.setenv("HISTO_DATA_DIR", str(tmp_path / "data"))
    tr = _trainer(quick_config(compile=True))
    assert type(tr.net).__name__ == "OptimizedModule" and tr.net is not tr.model
    assert not any(k.startswith("_orig_mod") for k in tr.model.state_dict())
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "data" / "torchinductor")
    assert (tmp_path / "data" / "torchinductor").is_dir()


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("HISTO_TEST_COMPILE") != "1",
    reason="compiles with inductor (minutes on 2 cores); set HISTO_TEST_COMPILE=1 to run",
)
def test_compiled_run_cancels_resumes_and_explains_like_an_eager_one(monkeypatch):
    cfg = quick_config(epochs=2, compile=True, tta=False)
    eager = T.run_training(T.prepare_run(quick_config(epochs=2, tta=False)))
    run = T.prepare_run(cfg)
    with monkeypatch.context() as m:
        _cancel_after_epochs(m, 1, 2)
        assert T.run_training(run)["state"] == "cancelled"
    result = T.run_training(run, resume=True)
    assert result["state"] == "completed"
    rows, ref = run.metrics(), RunDir(eager["run_dir"]).metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    for a, b in zip(rows, ref):  # inductor reorders float ops: close, not bit-identical
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2)
    ck = checkpoint.load_checkpoint(run.best_ckpt)
    assert not any(k.startswith("_orig_mod") for k in ck["state_dict"])
    from histo_core.explain import compute_cams
    from histo_core.model_cache import load_model

    loaded = load_model(str(run.best_ckpt))
    tiles = open_dataset("synthetic").split("test").images[:2]
    cams = compute_cams(loaded.model, loaded.meta, tiles, "GradCAM")
    assert cams.shape[0] == 2 and np.isfinite(cams).all()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["scratch", "all-layers"])
def test_all_layer_modes_train_backbone_and_head_from_the_first_epoch(mode):
    tr = _trainer(quick_config(arch="resnet18", mode=mode, size=16, max_train_samples=32, batch_size=16, epochs=2))
    head, backbone, _ = _head_and_backbone(tr)
    head_before = [p.detach().clone() for p in tr.model.fc.parameters()]
    row = tr.train_epoch()
    assert math.isfinite(row["train_loss"]) and not tr.backbone_frozen
    assert all(not torch.equal(p, backbone[n]) for n, p in tr.model.named_parameters() if n in backbone)
    assert all(not torch.equal(a, b) for a, b in zip(head_before, tr.model.fc.parameters()))
    assert [g["lr"] for g in tr.optimizer.param_groups] == pytest.approx([3e-3])  # one rate for every layer


def _head_and_backbone(tr):
    head = {id(p) for p in tr.model.fc.parameters()}
    backbone = {n: p.detach().clone() for n, p in tr.model.named_parameters() if id(p) not in head}
    buffers = {n: b.clone() for n, b in tr.model.named_buffers() if "running" in n}
    return head, backbone, buffers


@pytest.mark.slow
def test_frozen_mode_only_updates_the_head():
    tr = _trainer(quick_config(arch="resnet18", mode="frozen", size=16, max_train_samples=32, batch_size=16))
    head_before = [p.detach().clone() for p in tr.model.fc.parameters()]
    _, backbone, buffers = _head_and_backbone(tr)
    tr.train_epoch()
    for n, p in tr.model.named_parameters():
        if n in backbone:
            assert torch.equal(p, backbone[n]), n
    for n, b in tr.model.named_buffers():
        if n in buffers:
            assert torch.equal(b, buffers[n]), n  # BatchNorm statistics frozen too
    assert all(not torch.equal(a, b) for a, b in zip(head_before, tr.model.fc.parameters()))
    assert len(tr.optimizer.param_groups) == 1


@pytest.mark.slow
def test_head_then_all_unfreezes_after_head_epochs_with_lower_backbone_lr():
    tr = _trainer(
        quick_config(
            arch="resnet18",
            mode="head-then-all",
            size=16,
            max_train_samples=32,
            batch_size=16,
            head_epochs=1,
            epochs=2,
            lr=0.01,
            backbone_lr_mult=0.1,
        )
    )
    _, backbone, buffers = _head_and_backbone(tr)
    head_before = [p.detach().clone() for p in tr.model.fc.parameters()]
    tr.train_epoch()  # the head phase: backbone weights and BatchNorm statistics untouched, the head learns
    assert tr.backbone_frozen
    assert all(torch.equal(p, backbone[n]) for n, p in tr.model.named_parameters() if n in backbone)
    assert all(torch.equal(b, buffers[n]) for n, b in tr.model.named_buffers() if n in buffers)
    assert all(not torch.equal(a, b) for a, b in zip(head_before, tr.model.fc.parameters()))
    tr.train_epoch()  # then every layer
    assert not tr.backbone_frozen
    assert all(not torch.equal(p, backbone[n]) for n, p in tr.model.named_parameters() if n in backbone)
    assert [g["lr"] for g in tr.optimizer.param_groups] == pytest.approx([0.001, 0.01])


@pytest.mark.slow
def test_cpu_training_is_reproducible_with_a_seed():
    imgs = open_dataset("synthetic").split("train")
    x, y = imgs.images[:192], imgs.labels[:192]
    classes = open_dataset("synthetic").info.classes
    cfg = quick_config(arch="cnn3", epochs=2, batch_size=32)
    cfg.augment.brightness = cfg.augment.hue = 0.1
    probs = []
    for seed in (5, 5, 6):
        model, meta = T.fit_arrays(cfg.replace(seed=seed), x, y, classes=classes)
        probs.append(T.predict_probs(model, meta, imgs.images[192:260], tta=True))
    assert np.array_equal(probs[0], probs[1])
    assert not np.allclose(probs[0], probs[2])


@pytest.mark.slow
def test_fit_arrays_and_predict_probs_on_grayscale_and_other_sizes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 96)
    x = (rng.integers(0, 60, (96, 20, 20)) + y[:, None, None] * 150).astype(np.uint8)  # bright = class 1
    model, meta = T.fit_arrays(quick_config(epochs=3, batch_size=16), x, y, classes=["dark", "bright"])
    assert meta["in_channels"] == 1 and meta["input_size"] == 20 and meta["classes"] == ["dark", "bright"]
    p = T.predict_probs(model, meta, x)
    assert p.shape == (96, 2) and (p.argmax(1) == y).mean() > 0.9


def test_old_mode_names_still_load_and_the_validator_names_the_new_ones():
    assert T.check_config(quick_config(arch="resnet18", mode="head-then-all", size=16)).num_classes == 6
    old = {**quick_config(arch="resnet18").to_dict(), "mode": "fine_tune"}  # a finished run's config.json
    assert TrainConfig.from_dict(old).mode == "head-then-all"
    assert TrainConfig.from_dict({**old, "mode": "finetune"}).mode == "all-layers"
    with pytest.raises(ConfigError, match="now called all-layers"):
        quick_config(arch="resnet18", mode="finetune").validate()
    with pytest.raises(ConfigError, match="--mode must be one of scratch, all-layers, frozen, head-then-all"):
        quick_config(mode="fine-tune").validate()


def test_enum_fields_are_literals_and_the_validation_uses_them():
    import typing

    from histo_core import config as C

    hints = typing.get_type_hints(TrainConfig)
    for name, allowed in (("mode", C.MODES), ("optimizer", C.OPTIMIZERS), ("stain_norm", C.STAIN_NORMS)):
        assert typing.get_args(hints[name]) == allowed
        with pytest.raises(ConfigError, match=f"must be one of {', '.join(allowed)}"):
            quick_config(**{name: "nonsense"}).validate()


def test_check_config_errors():
    with pytest.raises(ConfigError, match="--noise"):
        T.check_config(quick_config(noise=0.95))
    with pytest.raises(DatasetError, match="not a registered dataset"):
        T.check_config(quick_config(dataset="no/such/thing.npz"))
    with pytest.raises(ConfigError, match="simplecnn takes tiles of"):
        T.check_config(quick_config(size=4))
    with pytest.raises(ConfigError, match="needs a backbone"):
        T.check_config(quick_config(arch="cnn3", mode="frozen"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            T.check_config(quick_config(device="cuda"))


def test_pretrained_unavailable_is_an_error_not_a_silent_scratch_run(monkeypatch):
    import torchvision.models as tvm

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvm.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline, raising=False)
    monkeypatch.setattr(tvm._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(HistoError, match="--pretrained: ImageNet weights for resnet18"):
        T.check_config(quick_config(arch="resnet18", mode="all-layers", pretrained=True))


def test_default_config_is_valid_and_cpu_friendly():
    cfg = T.default_config("pathmnist", "cpu")
    cfg.validate()
    assert cfg.device == "cpu" and cfg.tta and cfg.augment.flip and cfg.augment.rot90
    assert get_arch(cfg.arch).max_size >= 28


@pytest.mark.slow
def test_measure_throughput_and_lr_find():
    ips = T.measure_throughput(quick_config(batch_size=32), n_batches=2)
    assert ips > 0
    from histo_core.lr_find import lr_find

    res = lr_find(quick_config(max_train_samples=256), num_steps=20, min_lr=1e-5, max_lr=1.0)
    assert len(res["lrs"]) == len(res["losses"]) > 5
    assert res["lrs"] == sorted(res["lrs"])
    assert 1e-5 <= res["suggested_lr"] <= 1.0


# -- real data ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_pathmnist_quick_run(pathmnist_mini):
    cfg = T.default_config(str(pathmnist_mini), "cpu")
    cfg.epochs, cfg.threads = 12, 2
    run = T.prepare_run(cfg)
    res = T.run_training(run)
    assert res["state"] == "completed"
    assert res["test"]["accuracy"] > 0.6, res["test"]["accuracy"]


def test_default_config_small_real_set_is_the_measured_recipe(pathmnist_mini):
    cfg = T.default_config(str(pathmnist_mini), "cpu")
    assert (cfg.arch, cfg.train_splits, cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.schedule) == (
        "resnet9",
        "train+val",
        90,
        32,
        "adamw",
        "onecycle",
    )
    assert cfg.tta and cfg.augment.flip and cfg.augment.rot90 and cfg.augment.hue == 0
    assert T.check_config(cfg).num_classes == 9
    big = T.default_config("synthetic", "cpu")  # 1200 training tiles: keeps its val split
    assert big.train_splits == "train" and big.arch == "resnet9"


def test_an_infinite_learning_rate_is_refused_before_anything_runs():
    for bad in (math.inf, math.nan, -1.0):
        with pytest.raises(ConfigError, match="--lr must be a positive finite number"):
            quick_config(lr=bad).validate()


@pytest.mark.slow
def test_a_nan_loss_fails_the_run_naming_the_epoch_and_a_lower_rate():
    run = T.prepare_run(quick_config(lr=1e30, optimizer="sgd", epochs=4))
    res = T.run_training(run)
    assert res["state"] == "failed", res
    assert "the training loss became" in res["error"] and "in epoch 1" in res["error"]
    assert "--lr 1e+29" in res["error"]
    assert run.status().state == "failed" and len(run.metrics()) == 0  # the NaN epoch is not recorded


@pytest.mark.slow
def test_a_split_too_small_to_measure_anything_is_warned_about(tmp_path):
    npz = tmp_path / "tiny.npz"
    s = open_dataset("synthetic").split("train")
    np.savez(
        npz,
        train_images=s.images[:40],
        train_labels=s.labels[:40],
        val_images=s.images[40:41],
        val_labels=s.labels[40:41],
        test_images=s.images[41:42],
        test_labels=s.labels[41:42],
    )
    run = T.prepare_run(quick_config(dataset=str(npz), max_train_samples=0, epochs=1))
    assert T.run_training(run)["state"] == "completed"
    warnings = run.results()["warnings"]
    assert any("the test split has only 1 tile: its accuracy moves in steps of 100 points" in w for w in warnings)
    assert any("the val split has only 1 tile" in w for w in warnings)
    from streamlit.testing.v1 import AppTest

    page = AppTest.from_file("../pages/3_Runs.py", default_timeout=120)
    page.query_params["run"] = run.id
    page.run()
    assert any("the test split has only 1 tile" in w.value for w in page.warning), [w.value for w in page.warning]


@pytest.mark.slow
def test_a_run_folder_deleted_between_checks_stops_quietly(monkeypatch, capsys):
    import shutil

    from histo_core.training import run as run_module

    real_record = run_module._record_epoch

    def deleted_then_record(job, *args):
        shutil.rmtree(job.run.path)  # the user deletes the run just as the epoch is written
        return real_record(job, *args)

    monkeypatch.setattr(run_module, "_record_epoch", deleted_then_record)
    run = T.prepare_run(quick_config(epochs=2))
    assert T.run_training(run)["state"] == "deleted"
    out = capsys.readouterr()
    assert "the run folder was deleted; stopping without saving" in out.out + out.err
    assert "FileNotFoundError" not in out.out + out.err and not run.path.exists()


def test_the_training_process_opens_its_dataset_once_and_embeds_that_one(monkeypatch):
    """Issue 23: the training process opens its dataset once and hands it to the end-of-training embedding."""
    import histo_core.datasets as D
    from histo_core import embeddings as E
    from histo_core import training as T
    from histo_core.training import defaults

    run = T.prepare_run(quick_config(epochs=1))  # the submitting side's checks (another process in the app)
    real, opened = D.open_dataset, []

    def counting(spec, *args, **kwargs):
        opened.append(spec)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(D, "open_dataset", counting)
    monkeypatch.setattr(defaults, "open_dataset", counting)
    monkeypatch.setenv("HISTO_EMBED_AFTER_TRAINING", "1")
    assert T.run_training(run)["state"] == "completed"
    assert opened == ["synthetic"]
    store = E.load_store(run.embeddings_dir)
    assert store is not None and store.meta["counts"]["train"] > 0
