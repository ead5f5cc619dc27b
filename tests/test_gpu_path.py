"""The CUDA path, tested on the CPU: device copies, precision per compute capability, slots mapped to GPUs, sync
counts per training step, out-of-memory handling. `torch.cuda` functions are patched where a test needs a card;
nothing here has run on a real GPU (README, "GPU")."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from histo_core import launch, task_folders
from histo_core import pipeline as P


class _FakeTensor:
    """Stands in for a tensor on another device: records how it was copied."""

    def __init__(self, device: str, pinned: bool = False):
        self.device = torch.device(device)
        self.pinned = pinned
        self.copies: list[tuple[torch.device, bool]] = []

    def is_pinned(self) -> bool:
        return self.pinned

    def pin_memory(self) -> _FakeTensor:
        out = _FakeTensor(str(self.device), pinned=True)
        out.copies = self.copies
        return out

    def to(self, device, non_blocking: bool = False):
        self.copies.append((torch.device(device), non_blocking))
        return _FakeTensor(str(device))


def test_device_to_host_copies_block_and_host_to_device_copies_do_not():
    from_gpu = _FakeTensor("cuda:0")
    P.to_device(from_gpu, "cpu")  # type: ignore[arg-type]
    assert from_gpu.copies == [(torch.device("cpu"), False)]
    from_host = _FakeTensor("cpu")
    P.to_device(from_host, "cuda:1")  # type: ignore[arg-type]
    assert from_host.copies == [(torch.device("cuda:1"), True)]  # from pinned memory
    between = _FakeTensor("cuda:0")
    P.to_device(between, "cuda:1")  # type: ignore[arg-type]
    assert between.copies == [(torch.device("cuda:1"), False)]


def test_to_float01_copies_through_to_device(monkeypatch):
    seen = []
    real = P.to_device

    def spy(x, device):
        seen.append(torch.device(device))
        return real(x, device)

    monkeypatch.setattr(P, "to_device", spy)
    x = P.to_float01(np.zeros((2, 4, 4, 3), np.uint8), "cpu")
    assert seen == [torch.device("cpu")] and x.shape == (2, 3, 4, 4)


# -- precision per compute capability (item 2) ---------------------------------------------------------------
def _quick_config(**changes):
    """tests/test_train.py's seconds-long synthetic run, one epoch of 96 tiles in batches of 32."""
    from tests.test_train import quick_config

    return quick_config(**{"epochs": 1, "batch_size": 32, "max_train_samples": 96, **changes})


@pytest.mark.parametrize(
    ("capability", "dtype", "name"),
    [
        ((7, 0), torch.float16, "fp16 autocast + GradScaler"),  # V100
        ((7, 5), torch.float16, "fp16 autocast + GradScaler"),  # T4, RTX 20xx
        ((8, 0), torch.bfloat16, "bf16 autocast"),  # A100
        ((8, 6), torch.bfloat16, "bf16 autocast"),  # RTX 30xx, A10
        ((9, 0), torch.bfloat16, "bf16 autocast"),  # H100
    ],
)
def test_cuda_precision_follows_compute_capability(monkeypatch, capability, dtype, name):
    from histo_core.training import device as D

    asked = []

    def capability_of(dev=None):
        asked.append(torch.device(dev))
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    got = D.autocast_dtype(_quick_config(), torch.device("cuda", 1))
    assert got == dtype and asked == [torch.device("cuda", 1)]  # the run's own card, not card 0
    assert D.needs_grad_scaler(got) == (dtype == torch.float16)
    assert D.precision_name(got) == name
    assert D.autocast_dtype(_quick_config(amp=False), torch.device("cuda", 1)) is None  # --no-amp: fp32
    assert D.precision_name(None) == "fp32"


def test_fp16_trainer_scales_the_loss_and_resumes_the_scale():
    """The fp16 path (a Turing card's) run on the CPU: autocast fp16 + GradScaler steps, its state in last.pt."""
    from histo_core import training as T

    def trainer():
        cfg = _quick_config()
        data = T.build_train_data(cfg, T.open_config_dataset(cfg), "cpu", need_test=False)
        t = T.Trainer(cfg, data, torch.device("cpu"))
        assert not t.scaler.is_enabled() and t.precision == "fp32"  # the suite's CPU: fp32
        t.amp_dtype, t.precision = torch.float16, "fp16 autocast + GradScaler"
        t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        return t

    a = trainer()
    before = [p.detach().clone() for p in a.model.parameters()]
    a.set_train_mode()
    scale_calls = []
    real_scale = a.scaler.scale
    a.scaler.scale = lambda loss: scale_calls.append(float(loss.detach())) or real_scale(loss)  # type: ignore[method-assign]
    for pos in a.batches_of_epoch(0)[:2]:
        loss, _ = a.train_batch(pos)
        assert torch.isfinite(loss)
    assert len(scale_calls) == 2
    assert any(not torch.equal(b, p) for b, p in zip(before, a.model.parameters(), strict=True))  # it learned
    state = a.state()
    assert state["grad_scaler"]["scale"] == a.scaler.get_scale()
    b = trainer()
    state["grad_scaler"]["scale"] = 123.0
    b.load_state(state, a.model.state_dict())
    assert b.scaler.get_scale() == 123.0


@pytest.mark.slow
def test_run_records_its_precision_in_results_checkpoint_and_card(capsys):
    from histo_core import checkpoint
    from histo_core import training as T
    from histo_core.export import export_run

    run = T.prepare_run(_quick_config())
    assert T.run_training(run)["state"] == "completed"
    assert "training on cpu in fp32" in capsys.readouterr().err
    assert run.results()["precision"] == "fp32"
    assert checkpoint.load_checkpoint(run.best_ckpt)["precision"] == "fp32"
    import json

    card = json.loads(export_run(run, "gpu-path-card").with_suffix(".json").read_text())
    assert card["precision"] == "fp32"


# -- slots mapped to GPUs (item 3) ---------------------------------------------------------------------------
@pytest.fixture
def gpus(monkeypatch):
    """A machine with N (patched) CUDA GPUs; returns a setter and the list of set_device calls."""
    calls: list = []

    def have(n: int) -> list:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device("cuda", d)))
        return calls

    return have


def test_default_cuda_slots_are_the_gpu_count_and_go_round_the_gpus(gpus, monkeypatch):
    from histo_core import slots

    monkeypatch.delenv("HISTO_MAX_RUNS_CUDA", raising=False)
    gpus(3)
    assert slots.max_concurrent("cuda") == 3 and slots.max_concurrent("cpu") == 1
    assert [slots.gpu_of_slot(i) for i in range(3)] == [0, 1, 2] and slots.runs_per_gpu() == 1
    monkeypatch.setenv("HISTO_MAX_RUNS_CUDA", "5")
    assert slots.max_concurrent("cuda") == 5
    assert [slots.gpu_of_slot(i) for i in range(5)] == [0, 1, 2, 0, 1] and slots.runs_per_gpu() == 2
    monkeypatch.delenv("HISTO_MAX_RUNS_CUDA")
    gpus(0)
    assert slots.max_concurrent("cuda") == 1


def test_physical_gpu_honours_cuda_visible_devices(monkeypatch):
    from histo_core import slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert [slots.physical_gpu(0), slots.physical_gpu(1)] == ["2", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert slots.physical_gpu(1) == "1"


def test_setup_device_pins_the_gpu_modulo_the_visible_ones(gpus, monkeypatch):
    from histo_core.training import device as D

    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    calls = gpus(2)
    try:
        assert D.setup_device(_quick_config(device="cuda"), 1) == torch.device("cuda", 1)
        gpus(1)  # a Slurm task bound to one GPU: LOCAL_RANK 3 sees it as cuda:0
        assert D.setup_device(_quick_config(device="cuda"), 3) == torch.device("cuda", 0)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = flags[:2]
        torch.backends.cuda.matmul.allow_tf32 = flags[2]
    assert calls == [torch.device("cuda", 1), torch.device("cuda", 0)]


def _run_with_recorded_gpu(monkeypatch, world=(0, 1, 0)):
    """run_training up to the point where it picks the GPU; returns (gpu, run)."""
    from histo_core import training as T
    from histo_core.training import run as R

    got = []
    monkeypatch.setattr(R, "current_world", lambda: world)
    monkeypatch.setattr(R, "_train", lambda job, resume, gpu: got.append(gpu) or {"state": "completed"})
    run = T.prepare_run(_quick_config(device="cuda"))
    assert R.run_training(run)["state"] == "completed"
    return got[0]


def test_each_run_trains_on_its_slots_gpu(gpus, monkeypatch):
    from histo_core.slots import device_slot

    monkeypatch.delenv("HISTO_MAX_RUNS_CUDA", raising=False)
    gpus(2)
    assert _run_with_recorded_gpu(monkeypatch) == 0
    with device_slot("cuda") as held:  # another run trains on GPU 0
        assert held == 0
        assert _run_with_recorded_gpu(monkeypatch) == 1
    monkeypatch.setenv("HISTO_MAX_RUNS_CUDA", "4")
    with device_slot("cuda"), device_slot("cuda"):  # slots 0 and 1 (GPUs 0 and 1) taken
        assert _run_with_recorded_gpu(monkeypatch) == 0  # slot 2 shares GPU 0


def test_a_torchrun_rank_queues_for_the_slot_of_its_own_gpu(gpus, monkeypatch):
    import threading

    from histo_core.slots import device_slot

    monkeypatch.delenv("HISTO_MAX_RUNS_CUDA", raising=False)
    gpus(2)
    assert _run_with_recorded_gpu(monkeypatch, world=(1, 2, 3)) == 1  # LOCAL_RANK 3 on 2 GPUs: GPU 1
    done = threading.Event()
    with device_slot("cuda", gpu=1) as held:  # a single-GPU run holds GPU 1
        assert held == 1
        t = threading.Thread(target=lambda: (_run_with_recorded_gpu(monkeypatch, world=(1, 2, 1)), done.set()))
        t.start()
        assert not done.wait(1.5)  # rank 1 waits for GPU 1 although GPU 0's slot is free
    t.join(10)
    assert done.is_set()


# -- inference defaults to auto (item 7) ---------------------------------------------------------------------
def _saved_model(tmp_path):
    from histo_core.checkpoint import save_checkpoint
    from histo_core.models import build_model

    meta = {
        "arch": "simplecnn",
        "num_classes": 3,
        "in_channels": 3,
        "input_size": 28,
        "classes": ["a", "b", "c"],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("simplecnn", 3, 3, 28), meta)
    return path


def test_load_model_defaults_to_auto_and_caches_one_model_per_device(tmp_path, monkeypatch):
    """ "auto" is the default: on a (patched) GPU machine the model goes to the GPU; torch's meta device stands in
    for the card here, as a second device the model can be moved to without one."""
    from histo_core import model_cache, runtime

    model_cache.clear_cache()
    path = _saved_model(tmp_path)
    asked: list[str] = []
    real = runtime.resolve_device

    def resolve(name: str) -> str:
        asked.append(name)
        return "meta" if name == "auto" else real(name)

    monkeypatch.setattr(runtime, "resolve_device", resolve)
    on_gpu = model_cache.load_model(path)
    assert asked == ["auto"] and on_gpu.device == "meta"
    assert next(on_gpu.model.parameters()).device.type == "meta"
    on_cpu = model_cache.load_model(path, "cpu")
    assert next(on_cpu.model.parameters()).device.type == "cpu"
    assert model_cache.load_model(path) is on_gpu and model_cache.load_model(path, "cpu") is on_cpu  # one per device
    model_cache.clear_cache()


def test_predict_cli_and_page_tasks_default_to_auto():
    import argparse
    import inspect

    from histo_core.commands import predict as predict_cmd

    parser = argparse.ArgumentParser()
    predict_cmd.register(parser.add_subparsers())
    assert parser.parse_args(["predict", "m", "x.png"]).device == "auto"
    assert inspect.signature(launch.submit_task).parameters["device"].default == "auto"


def test_label_error_cross_validation_keeps_the_runs_device(tmp_path):
    from histo_core import label_errors
    from histo_core.runs import RunDir

    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    from histo_core.fsutil import write_json_atomic

    write_json_atomic(run.config_path, _quick_config(device="auto").to_dict())
    assert label_errors._cv_config(run, 1).device == "auto"


def gpu_probe(params, progress):
    """The runner of the test kind "gpu-probe" (a task's work: nothing)."""
    return {"ok": True}


def test_a_cuda_task_runs_on_its_slots_gpu(gpus, monkeypatch):
    """A page task (evaluation, embeddings, label errors...) on CUDA makes its slot's GPU the current device, where
    load_model("auto") and setup_device put the model."""
    from histo_core import paths, tasks
    from histo_core.fsutil import write_json_atomic
    from histo_core.slots import device_slot

    monkeypatch.delenv("HISTO_MAX_RUNS_CUDA", raising=False)
    calls = gpus(2)
    from histo_core.kinds import KINDS, ProcessKind

    monkeypatch.setitem(KINDS, "gpu-probe", ProcessKind("gpu-probe", "probe", f"{__name__}:gpu_probe", "ok"))
    task = task_folders.TaskDir(task_folders.tasks_root() / "t1")
    task.path.mkdir(parents=True)
    write_json_atomic(task.task_path, {"kind": "gpu-probe", "params": {}, "device": "cuda"})
    with device_slot("cuda", runs_root=paths.runs_dir()):  # GPU 0 busy
        assert tasks.run_task(task) == 0
    assert calls == [torch.device("cuda", 1)]


# -- host-device synchronisations per training step (item 4) -------------------------------------------------
class SyncCounter:
    """Counts, under a TorchDispatchMode, the operators that make the host wait for a GPU: reading a value
    (`.item()`, `bool()`, `float()`), `nonzero`, `masked_select`, boolean-mask indexing and assignment (their
    output size lives on the device), and tensors made from host data (`torch.tensor`, `from_numpy`,
    `as_tensor`: on a GPU run each becomes a copy from pageable memory; counted even where the copy is then
    pinned and asynchronous, so the count is an upper bound). On the CPU they are the same operators."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        aten = torch.ops.aten
        reads = {aten._local_scalar_dense, aten.is_nonzero, aten.nonzero, aten.masked_select}
        lifts = {aten.lift_fresh, aten.lift_fresh_copy}
        masked = {aten.index, aten.index_put_, aten.index_put}
        counter = self
        self.count = 0
        self.kinds: dict[str, int] = {}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                packet = func.overloadpacket
                bool_index = packet in masked and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])
                )
                if packet in reads or packet in lifts or bool_index:
                    counter.count += 1
                    counter.kinds[str(packet)] = counter.kinds.get(str(packet), 0) + 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode()


def _syncs_per_step(cfg) -> tuple[float, int, dict]:
    """(syncs per step over a whole epoch, syncs between its first and last batch, kinds) of a warmed-up trainer."""
    from histo_core import training as T

    data = T.build_train_data(cfg, T.open_config_dataset(cfg), "cpu", need_test=False)
    trainer = T.Trainer(cfg, data, torch.device("cpu"))
    trainer.set_train_mode()
    trainer.train_batch(trainer.batches_of_epoch(0)[0])  # constants are made once, at the first batch
    counter = SyncCounter()
    marks: list[int] = []

    def on_batch(t, images):
        marks.append(counter.count)
        return False

    with counter.mode:
        trainer.train_epoch(on_batch)
    return counter.count / trainer.steps_per_epoch, marks[-1] - marks[0], counter.kinds


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes",
    [
        {},  # the default recipe's augmentations: flips and 90-degree rotations
        {"hue": 0.1, "saturation": 0.1, "stain_jitter": 0.05, "rotate": 10.0, "stain_norm": "macenko"},
        {"stain_norm": "reinhard", "resized_crop": True, "schedule": "onecycle", "optimizer": "sgd"},
    ],
)
def test_a_training_step_does_not_wait_for_the_device(changes):
    from histo_core.config import Augment

    aug_keys = set(Augment.__dataclass_fields__)
    aug = Augment(**{k: v for k, v in changes.items() if k in aug_keys})
    cfg = _quick_config(
        max_train_samples=120,
        batch_size=4,
        epochs=2,
        augment=aug,
        **{k: v for k, v in changes.items() if k not in aug_keys},
    )
    assert cfg.augment.flip and cfg.augment.rot90
    per_step, between, kinds = _syncs_per_step(cfg)
    assert between == 0, kinds  # none inside the epoch: the epoch's order once, its loss and accuracy at the end
    assert per_step <= 0.1, kinds  # 30 steps


def test_ddp_ranks_agree_on_a_cancel_every_n_steps(monkeypatch):
    from histo_core.training import run as R

    calls = []
    monkeypatch.setattr(R, "any_rank", lambda flag, world, device: calls.append(world) or flag)

    class Job:
        world, config = 2, _quick_config(epochs=3)
        cancel = type("C", (), {"requested": staticmethod(lambda: False)})()
        writer = type("W", (), {"update": staticmethod(lambda **kw: None)})()

    progress = R._BatchProgress(Job(), 100, torch.device("cpu"))  # type: ignore[arg-type]
    trainer = type("T", (), {"epoch": 0, "step": 0, "fallback": None})()
    for step in range(1, 101):
        trainer.step = step
        progress(trainer, 8)
    assert len(calls) == 100 // R.CANCEL_CHECK_STEPS
    Job.world = 1  # one process: a host flag, read at every batch
    calls.clear()
    for step in range(1, 11):
        trainer.step = step
        progress(trainer, 8)
    assert len(calls) == 10


def test_train_speed_benchmark_measures_the_default_augmentations():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import train_speed

    cfg = train_speed.our_config("simplecnn", "cpu", 1, False)
    assert cfg.augment.flip and cfg.augment.rot90


# -- out of GPU memory (item 6) ------------------------------------------------------------------------------
@pytest.mark.slow
def test_out_of_memory_saves_last_pt_names_the_batch_size_and_resumes_smaller(monkeypatch):
    from histo_core import checkpoint
    from histo_core import training as T
    from histo_core.training import run as R
    from histo_core.training.trainer import Trainer

    run = T.prepare_run(_quick_config(epochs=2, batch_size=32, schedule="onecycle"))  # 3 batches an epoch
    real_step = Trainer.train_step
    calls = {"n": 0}

    def step_then_oom(self, x, y):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, batch 2
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", step_then_oom)
    result = T.run_training(run)
    assert result["state"] == "failed" and run.status().state == "failed"
    assert "lower --batch-size (now 32)" in result["error"] and "--resume --batch-size 16" in result["error"]
    assert "\n" not in result["error"]
    state = checkpoint.load_checkpoint(run.last_ckpt)["train_state"]
    assert (state["epoch"], state["step"], state["partial"]["seen"], state["batch_size"]) == (1, 1, 32, 32)

    monkeypatch.setattr(Trainer, "train_step", real_step)
    R.change_batch_size(run, 16)
    resumed = T.run_training(run, resume=True)
    assert resumed["state"] == "completed", resumed.get("error")
    assert [r["epoch"] for r in run.metrics()] == [1, 2]
    assert run.config()["batch_size"] == 16


def test_cli_resume_accepts_only_a_new_batch_size(tmp_path, capsys):
    from histo_core import training as T
    from histo_core.cli import main

    run = T.prepare_run(_quick_config(batch_size=32))
    assert main(["train", "--run-dir", str(run.path), "--resume", "--lr", "0.1"]) == 2
    assert "only --batch-size may change" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(run.path), "--resume", "--batch-size", "0"]) == 2
    assert run.config()["batch_size"] == 32  # a bad value changes nothing


def test_splits_share_one_gpu_memory_budget(gpus, monkeypatch):
    """Train first, then val, then test, out of CUDA_RESIDENT_FRACTION of the free memory (halved when two CUDA
    slots share the card); a split that does not fit is served from host memory."""
    from histo_core import pipeline
    from histo_core import training as T
    from histo_core.training import data as D

    gpus(1)
    monkeypatch.delenv("HISTO_MAX_RUNS_CUDA", raising=False)
    limits = []
    real_init = pipeline.TileSource.__init__

    def on_cpu(self, split, device, **kw):  # decide as on the GPU, hold the tiles in host memory
        limits.append(kw.get("resident_max_bytes"))
        real_init(self, split, "cpu", **kw)

    monkeypatch.setattr(pipeline.TileSource, "__init__", on_cpu)
    cfg = _quick_config(max_train_samples=0)
    ds = T.open_config_dataset(cfg)
    sizes = [len(ds.split(s)) * int(np.prod(ds.split(s).tile_shape)) for s in ("train", "val", "test")]
    free = -(-(sizes[0] + sizes[1]) * 10 // 4)  # 40% of it: room for train and val, not for test as well
    assert int(free * pipeline.CUDA_RESIDENT_FRACTION) - sizes[0] - sizes[1] < sizes[2]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (free, 2 * free))
    data = D.build_train_data(cfg, ds, "cuda")
    assert data.train.resident and data.val.resident and not data.test.resident  # test from host memory
    assert limits[0] == int(free * pipeline.CUDA_RESIDENT_FRACTION)
    assert limits[1:] == [limits[0] - sizes[0], limits[0] - sizes[0] - sizes[1]]
    monkeypatch.setenv("HISTO_MAX_RUNS_CUDA", "2")
    assert D.resident_budget("cuda") == limits[0] // 2
    limits.clear()  # a torchrun rank other than 0 never evaluates: val and test stay off its GPU
    monkeypatch.delenv("HISTO_MAX_RUNS_CUDA")
    data = D.build_train_data(cfg, ds, "cuda", evaluates=False)
    assert data.train.resident and not data.val.resident and not data.test.resident and limits[1:] == [0, 0]


def test_a_split_that_does_not_fit_on_the_gpu_is_served_from_host_memory(monkeypatch):
    from histo_core import pipeline
    from histo_core.datasets import Split

    def refuses(self, device):
        raise torch.OutOfMemoryError("CUDA out of memory")

    tiles = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    monkeypatch.setattr(pipeline.TileSource, "_load_all", refuses)
    src = pipeline.TileSource(Split("train", tiles, np.arange(10) % 2), "cpu")
    assert not src.resident and not src.streamed and src.resident_bytes == 0
    assert torch.equal(src.gather(np.array([3, 1])), torch.from_numpy(tiles[[3, 1]]))


# -- two gloo ranks in spawned processes ----------------------------------------------------------------------
@contextlib.contextmanager
def _gloo_rank(rank: int, store: str):
    """This process as one of two gloo ranks (one thread); on leaving, both ranks meet at a barrier before either
    tears gloo down (an early teardown once aborted the other: "terminate called without an active exception")."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    yield
    dist.barrier()
    dist.destroy_process_group()


# -- per-rank resume state under torchrun (item 5) -----------------------------------------------------------
def _resume_worker(rank: int, store: str, out: str) -> None:
    """One of two gloo ranks: an uninterrupted epoch against one stopped at step 2, saved as run.py saves last.pt
    (every rank's state gathered, rank 0's file read by both) and resumed in fresh trainers."""
    from histo_core import training as T
    from histo_core.distributed import broadcast, gather_objects
    from histo_core.training.trainer import StopRequested

    with _gloo_rank(rank, store):
        cfg = _quick_config(max_train_samples=128, batch_size=16)  # 64 tiles a rank: 4 steps
        data = T.build_train_data(cfg, T.open_config_dataset(cfg), "cpu", need_test=False)

        def trainer():
            return T.Trainer(cfg, data, torch.device("cpu"), rank=rank, world=2)

        whole = trainer()
        row_whole = whole.train_epoch()
        stopped = trainer()
        try:
            stopped.train_epoch(lambda t, images: t.step == 2)
        except StopRequested:
            pass
        ranks = gather_objects(stopped.rank_state(), 2)
        saved = broadcast(stopped.state(ranks) if rank == 0 else None, 2)  # every rank reads rank 0's last.pt
        weights = {k: v.clone() for k, v in stopped.model.state_dict().items()}
        resumed = trainer()
        resumed.load_state(saved, weights)
        row_resumed = resumed.train_epoch()
        same_weights = all(torch.equal(p, q) for p, q in zip(whole.model.parameters(), resumed.model.parameters()))
        torch.save(
            {
                "same_weights": same_weights,
                "losses": (row_whole["train_loss"], row_resumed["train_loss"]),
                "own_stream": torch.equal(resumed.aug_gen.get_state(), whole.aug_gen.get_state()),
            },
            f"{out}/rank{rank}.pt",
        )


@pytest.mark.slow
def test_two_gloo_ranks_resume_exactly_with_their_own_state(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_resume_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["own_stream"], rank  # rank 1 continues its own augmentation stream, not rank 0's
        assert got["same_weights"], rank
        assert got["losses"][0] == pytest.approx(got["losses"][1], rel=1e-6)  # partial counts not summed twice


def test_a_failing_rank_other_than_0_writes_its_error_line_to_the_runs_log(monkeypatch):
    from histo_core import training as T
    from histo_core.errors import HistoError
    from histo_core.training import run as R

    run = T.prepare_run(_quick_config())
    monkeypatch.setattr(R, "current_world", lambda: (1, 2, 1))

    def fail(job, resume, gpu):
        raise HistoError("tiles.npz: unreadable on this node")

    monkeypatch.setattr(R, "_train", fail)
    assert R.run_training(run)["state"] == "failed"
    assert "rank 1: failed: tiles.npz: unreadable on this node" in run.log_path.read_text()
    assert run.status().state == "queued"  # rank 0 owns the status file


def test_a_file_backed_split_is_read_chunk_by_chunk_into_its_device_tensor(tmp_path, monkeypatch):
    """No host tensor of the whole split: each chunk goes to the device tensor as it is read (the meta device
    stands in for a GPU: it allocates nothing)."""
    from histo_core import pipeline
    from histo_core.datasets import Split

    monkeypatch.setattr(pipeline, "LAZY_CHUNK", 4)
    tiles = np.lib.format.open_memmap(tmp_path / "t.npy", mode="w+", dtype=np.uint8, shape=(10, 4, 4, 3))
    tiles[:] = np.random.default_rng(0).integers(0, 256, tiles.shape, dtype=np.uint8)
    tiles.flush()
    src = pipeline.TileSource(Split("train", np.load(tmp_path / "t.npy", mmap_mode="r"), np.zeros(10)), "cpu")
    copies = []
    real = pipeline.to_device

    def spy(x, device):
        copies.append((tuple(x.shape), torch.device(device)))
        return real(x, device)

    monkeypatch.setattr(pipeline, "to_device", spy)
    out = src._load_all(torch.device("meta"))
    assert out.device.type == "meta" and tuple(out.shape) == (10, 4, 4, 3)
    assert copies == [
        ((4, 4, 4, 3), torch.device("meta")),
        ((4, 4, 4, 3), torch.device("meta")),
        ((2, 4, 4, 3), torch.device("meta")),
    ]
    on_cpu = src._load_all(torch.device("cpu"))
    assert torch.equal(on_cpu, torch.from_numpy(np.asarray(tiles)))


def test_cuda_runs_share_the_cores_with_every_training_slot(gpus, monkeypatch):
    from histo_core import runtime
    from histo_core.training import device as D

    gpus(4)
    monkeypatch.delenv("HISTO_MAX_RUNS_CUDA", raising=False)
    monkeypatch.delenv("HISTO_MAX_RUNS_CPU", raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: 16)
    monkeypatch.setattr(runtime, "default_threads", lambda env=None: 16)
    assert D.default_threads("cuda") == 3  # 16 cores, 4 CUDA slots + 1 CPU slot
    assert D.default_threads("cpu") == 16
    monkeypatch.setenv("HISTO_MAX_RUNS_CUDA", "8")
    assert D.default_threads("cuda") == 1


def _head_then_all_worker(rank: int, store: str, out: str) -> None:
    """One of two gloo ranks training head-then-all: DDP reduces the head, then (built again) the whole model."""
    from histo_core import training as T

    with _gloo_rank(rank, store):
        cfg = _quick_config(
            arch="resnet18", mode="head-then-all", head_epochs=1, epochs=2, max_train_samples=64, batch_size=16
        )
        data = T.build_train_data(cfg, T.open_config_dataset(cfg), "cpu", need_test=False)
        trainer = T.Trainer(cfg, data, torch.device("cpu"), rank=rank, world=2)
        assert not trainer.net.find_unused_parameters
        start = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        trainer.train_epoch()
        trainer.train_epoch()
        assert not trainer.backbone_frozen
        end = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}  # (BatchNorm: per rank)
        torch.save({"start": start, "end": end}, f"{out}/rank{rank}.pt")


@pytest.mark.slow
def test_ddp_head_then_all_syncs_the_backbone_once_unfrozen_without_unused_parameter_search(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_head_then_all_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    conv = next(k for k in a["end"] if k.endswith("weight") and a["end"][k].ndim == 4)  # a backbone convolution
    assert not torch.equal(a["start"][conv], a["end"][conv])  # the backbone trained in epoch 2
    for k in a["end"]:
        assert torch.equal(a["end"][k], b["end"][k]), k  # and every rank holds the same weights


# -- a dead peer under torchrun (item 5) ---------------------------------------------------------------------
def _dying_peer_worker(rank: int, store: str, run_path: str, how: str) -> None:
    """One of two gloo ranks running a whole run (run_training, as under torchrun); rank 1 dies at its 2nd step:
    raising an error, or killed (SIGKILL: no word at all)."""
    import os
    import signal

    import torch.distributed as dist

    from histo_core.runs import RunDir
    from histo_core.training import run as R
    from histo_core.training import status as S
    from histo_core.training.trainer import Trainer

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    S.PEER_GRACE_S = 5.0  # a collective that does not fail by itself: the process ends after this
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    real_step, steps = Trainer.train_step, []

    def step(self, x, y, index=None):
        steps.append(1)
        if rank == 1 and len(steps) == 2:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise (
                torch.OutOfMemoryError("CUDA out of memory on this node")
                if how == "oom"
                else RuntimeError("tiles.npz: unreadable on this node")
            )
        return real_step(self, x, y, index)

    Trainer.train_step = step  # type: ignore[method-assign]
    result = R.run_training(RunDir(run_path))
    torch.save(result, f"{run_path}/result-rank{rank}.pt")


def _two_ranks(target, *args, timeout: float = 240) -> list[int | None]:
    """Two spawned processes, joined one by one (mp.spawn would stop the survivor as soon as one fails); their
    exit codes, None for one that did not end within `timeout`."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(rank, *args)) for rank in (0, 1)]
    for p in procs:
        p.start()
    codes = []
    for p in procs:
        p.join(timeout)
        codes.append(p.exitcode)
        if p.is_alive():
            p.kill()
            p.join()
    return codes


@pytest.mark.slow
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_rank_0_is_told_when_a_peer_died_and_does_not_hang(tmp_path, how):
    from histo_core import training as T

    run = T.prepare_run(_quick_config(epochs=2, max_train_samples=128, batch_size=16))
    codes = _two_ranks(_dying_peer_worker, str(tmp_path / "store"), str(run.path), how)
    assert codes[0] is not None, "rank 0 hung after its peer died"
    status = run.status()
    assert status.state == "failed" and status.error and status.error.startswith("rank 1 died: "), status
    if how == "raise":
        assert status.error == "rank 1 died: RuntimeError: tiles.npz: unreadable on this node"
        assert "rank 1: failed: RuntimeError: tiles.npz: unreadable on this node" in run.log_path.read_text()
    else:
        assert "ended without a word" in status.error and codes[1] == -9
    assert status.error in run.log_path.read_text()


# -- evaluation spread over the ranks (item 8) ---------------------------------------------------------------
def _spied_run_worker(rank: int, store: str, run_path: str, spied: str, embed: str, out_name: str) -> None:
    """One of two gloo ranks running a whole run (as under torchrun); records which rows of each split this rank
    handed to `spied` ("module:function", the prediction or the embedding's feature pass) in `out_name`."""
    import importlib
    import json
    import os

    from histo_core.runs import RunDir
    from histo_core.training import run as R

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), HISTO_EMBED_AFTER_TRAINING=embed)
    with _gloo_rank(rank, store):
        module_name, name = spied.split(":")
        module = importlib.import_module(module_name)
        real, shares = getattr(module, name), []

        def spy(model, source, spec, **kw):
            shares.append([len(source), *kw["rows"]])
            return real(model, source, spec, **kw)

        setattr(module, name, spy)
        result = R.run_training(RunDir(run_path))
        with open(f"{run_path}/{out_name}-rank{rank}.json", "w") as fh:
            json.dump({"shares": shares, "state": result["state"]}, fh)


@pytest.mark.slow
def test_validation_and_test_are_spread_over_the_ranks_and_gathered_as_one_process_would_predict(tmp_path):
    import json

    from histo_core import training as T
    from histo_core.model_cache import load_model
    from histo_core.predict import InputSpec, predict_tiles

    cfg = _quick_config(epochs=2, max_train_samples=128, batch_size=16, tta=True)
    run = T.prepare_run(cfg)
    assert _two_ranks(
        _spied_run_worker,
        str(tmp_path / "store"),
        str(run.path),
        "histo_core.training.trainer:predict_tiles",
        "0",
        "shares",
    ) == [0, 0]
    got = [json.loads((run.path / f"shares-rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0]["state"] == got[1]["state"] == "completed"
    # every prediction (val after each epoch, then test and val) split in two halves, one per rank
    for r in (0, 1):
        assert len(got[r]["shares"]) == 4
        for n, start, stop in got[r]["shares"]:
            assert (start, stop) == ((0, -(-n // 2)) if r == 0 else (-(-n // 2), n))
    model = load_model(run.best_ckpt, "cpu")
    ds = T.open_config_dataset(cfg)
    for split in ("val", "test"):
        saved = np.load(run.predictions_path(split))
        alone = predict_tiles(model.model, ds.split(split).load_all(), InputSpec.of(model.meta), tta=True)
        assert saved["probs"].shape == alone.shape and len(alone) == len(ds.split(split))
        np.testing.assert_allclose(saved["probs"], alone, atol=1e-5)
        assert run.results()[split]["n"] == len(alone)
    val = json.loads(run.val_latest_path.read_text())
    assert val["n"] == len(ds.split("val"))


@pytest.mark.slow
def test_the_end_of_run_embedding_is_spread_over_the_ranks_and_equals_one_process(tmp_path, capfd):
    import dataclasses
    import json

    from histo_core import embeddings as E
    from histo_core import training as T

    cfg = _quick_config(epochs=1, max_train_samples=128, batch_size=16)
    run = T.prepare_run(cfg)
    assert _two_ranks(
        _spied_run_worker,
        str(tmp_path / "store"),
        str(run.path),
        "histo_core.embeddings:iter_predictions",
        "1",
        "embed-shares",
    ) == [0, 0]
    got = [json.loads((run.path / f"embed-shares-rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0]["state"] == got[1]["state"] == "completed"
    sizes = {s: len(v) for s, v in T.open_config_dataset(cfg).splits.items()}
    for r in (0, 1):  # each rank computed the features of its half of every split, rank 0 the first
        assert sorted(n for n, _, _ in got[r]["shares"]) == sorted(sizes.values())
        for n, start, stop in got[r]["shares"]:
            assert (start, stop) == ((0, -(-n // 2)) if r == 0 else (-(-n // 2), n))
    assert "features computed by 2 ranks" in capfd.readouterr().err  # rank 0's line (the ranks' stderr)
    spread = E.load_store(run.embeddings_dir)
    assert spread is not None and spread.meta["counts"] == {s: sizes[s] for s in spread.splits}
    target = dataclasses.replace(E.target_for(str(run.path)), out_dir=tmp_path / "alone")
    alone = E.embed(target, max_points=E.END_OF_TRAINING_MAX_POINTS)  # one process, best.pt loaded afresh
    assert alone.splits == spread.splits == ["train", "val", "test"]
    for split in alone.splits:
        a, b = np.asarray(alone.features(split), np.float32), np.asarray(spread.features(split), np.float32)
        assert a.shape == b.shape == (sizes[split], alone.meta["dims"])
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=1e-3)  # float16: at most one unit in the last place
        (pa, la), (pb, lb) = alone.outputs(split), spread.outputs(split)
        np.testing.assert_allclose(pb, pa, atol=1e-5)
        np.testing.assert_array_equal(lb, la)
    for x, y in zip(alone.projection()[1:], spread.projection()[1:]):  # the same tiles mapped
        np.testing.assert_array_equal(x, y)
    assert not list(run.path.glob(f".{run.embeddings_dir.name}.tmp-*"))


def test_the_out_of_memory_message_names_the_command_that_resumes_the_run(monkeypatch):
    from pathlib import Path

    from histo_core.training.run import resume_command

    run = Path("/runs/r1")
    assert resume_command(run, 16, 1) == "python -m histo_core train --run-dir /runs/r1 --resume --batch-size 16"
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resume_command(run, 8, 2) == (
        "torchrun --nproc_per_node=2 -m histo_core train --run-dir /runs/r1 --resume --batch-size 8"
    )
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # two nodes of four processes: the rendezvous form, on each
    multi = resume_command(run, 8, 8)
    assert multi.startswith("torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d ")
    assert "-m histo_core train --run-dir /runs/r1 --resume --batch-size 8 (on every node" in multi


@pytest.mark.slow
def test_out_of_memory_on_one_torchrun_rank_saves_per_rank_state(tmp_path):
    from histo_core import checkpoint
    from histo_core import training as T
    from histo_core.training import run as R

    run = T.prepare_run(_quick_config(epochs=2, max_train_samples=128, batch_size=16))
    codes = _two_ranks(_dying_peer_worker, str(tmp_path / "store"), str(run.path), "oom")
    assert codes[0] is not None, "rank 0 hung after its peer ran out of memory"
    status = run.status()
    assert status.state == "failed" and status.error.startswith(  # type: ignore[union-attr]
        "rank 1 died: out of GPU memory at batch 2 of epoch 1: lower --batch-size (now 16)"
    ), status
    assert f"resume from last.pt: torchrun --nproc_per_node=2 -m histo_core train --run-dir {run.path}" in status.error
    state = checkpoint.load_checkpoint(run.last_ckpt)["train_state"]  # written by rank 1 itself
    assert (state["epoch"], state["step"], state["ranks"]) == (0, 1, [None, None])
    ranks = R._rank_states_from_files(run, state, 2)  # each rank's own file, as --resume reads them
    assert ranks[1]["partial"]["seen"] == 16 and ranks[0]["partial"]["seen"] == 16
    assert not torch.equal(ranks[0]["aug_gen"], ranks[1]["aug_gen"])  # two streams, not one


# -- fp16 that keeps overflowing falls back to fp32 (item 2) -------------------------------------------------
@pytest.mark.slow
def test_fp16_that_keeps_overflowing_falls_back_to_fp32_and_says_so(monkeypatch, capsys):
    """A Turing card's fp16 + GradScaler path on the CPU, with gradients made infinite while autocast is on (an
    injected overflow): after FP16_MAX_SKIPPED_STEPS skipped steps the run goes on in fp32 and completes."""
    import json

    from histo_core import checkpoint
    from histo_core import training as T
    from histo_core.export import export_run
    from histo_core.training import trainer as TR

    monkeypatch.setattr(TR, "autocast_dtype", lambda cfg, dev: torch.float16)
    real_loss = TR.build_loss

    def overflowing_loss(*args, **kw):
        loss = real_loss(*args, **kw)
        forward = loss.forward

        def overflow(logits, y, index=None):
            if torch.is_autocast_enabled("cpu") and logits.requires_grad:
                logits.register_hook(lambda g: g * float("inf"))
            return forward(logits, y, index)

        loss.forward = overflow
        return loss

    monkeypatch.setattr(TR, "build_loss", overflowing_loss)
    run = T.prepare_run(_quick_config(max_train_samples=240, batch_size=8, epochs=1))  # 30 steps
    assert T.run_training(run)["state"] == "completed"
    err = capsys.readouterr().err
    assert "in fp16 autocast + GradScaler" in err  # it started in fp16
    why = "fp16 autocast + GradScaler -> fp32 at epoch 1, batch 20: the GradScaler skipped 20 steps in a row"
    assert f"fp16 kept overflowing, training goes on in fp32 ({why}" in err
    results = run.results()
    assert results["precision"] == "fp32" and results["precision_fallback"].startswith(why)
    best = checkpoint.load_checkpoint(run.best_ckpt)
    assert best["precision"] == "fp32" and best["precision_fallback"].startswith(why)
    assert checkpoint.load_checkpoint(run.last_ckpt)["train_state"]["fp32_fallback"].startswith(why)  # kept on resume
    card = json.loads(export_run(run, "fp16-fallback").with_suffix(".json").read_text())
    assert card["precision"] == "fp32" and card["precision_fallback"].startswith(why)


def test_rank_0_reads_its_peers_heartbeat_files(tmp_path, monkeypatch):
    """What makes a peer dead for rank 0: its error line, its process gone on this machine, or its heartbeat
    silent; never a peer that finished its part and exited, nor an earlier attempt's file."""
    import socket

    from histo_core.fsutil import write_json_atomic
    from histo_core.runs import RunDir
    from histo_core.training import status as S

    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    deaths: list[str] = []
    watch = S.RankBeacon(run, 0, 3, "tok", deaths.append)
    watch.beat()
    here, gone = socket.gethostname(), 2**22 + 12345

    def peer(rank, **doc):
        base = {"token": "tok", "pid": gone, "host": here, "heartbeat": 1.0, "error": None, "done": False}
        write_json_atomic(watch.path(rank), {**base, **doc})

    peer(1, done=True)  # finished and exited: not dead
    peer(2, token="earlier")  # an earlier attempt's file
    assert watch.check_peers() is None and deaths == []
    peer(2, host="another-node", heartbeat=5.0)  # alive elsewhere, heartbeat seen once
    assert watch.check_peers() is None
    monkeypatch.setattr(S, "PEER_SILENCE_S", -1.0)  # then silent for longer than allowed
    assert watch.check_peers() == "rank 2 died: no heartbeat for 0 s (hung, or its node is gone)"
    peer(2, host="another-node", heartbeat=6.0, error="RuntimeError: disk full")
    assert watch.check_peers() == "rank 2 died: RuntimeError: disk full"
    peer(2, host="another-node", heartbeat=7.0)
    peer(1)  # not done, and its pid is no process on this machine
    assert (
        watch.check_peers()
        == f"rank 1 died: its process (pid {gone}) ended without a word (killed, e.g. out of memory?)"
    )
    assert len(deaths) == 3
