"""How a training process uses its device: thread count, cuDNN/TF32 switches, fused optimizers, torch.compile."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from histo_core import runtime
from histo_core.config import TrainConfig


def setup_device(config: TrainConfig, gpu: int | None = None) -> torch.device:
    """The config's device (resolved by `runtime.resolve_device`), set up for training: on CUDA GPU `gpu` (the run's
    slot's, or torchrun's LOCAL_RANK; None: the current device, which a task's slot has set) modulo the visible GPUs, so that a Slurm task bound to one GPU (which sees it
    as cuda:0 whatever its local rank) finds it; cuDNN benchmark and TF32. The thread count (--threads, else
    `runtime.default_threads`) on every device: the host side of a GPU run (decoding, streamed chunks) uses them."""
    dev = runtime.resolve_device(config.device)
    torch.set_num_threads(config.threads or default_threads(dev))
    if dev == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        index = (torch.cuda.current_device() if gpu is None else gpu) % max(1, torch.cuda.device_count())
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def default_threads(device: str) -> int:
    """Threads when --threads is 0: `runtime.default_threads` on the CPU; for a CUDA run no more than the cores
    divided by every training slot of the machine (CUDA and CPU), since several GPU runs feed their cards from
    the same cores (each needs few: its batches are made on the card)."""
    threads = runtime.default_threads()
    if device != "cuda":
        return threads
    from histo_core.slots import max_concurrent

    return max(1, min(threads, runtime.available_cores() // (max_concurrent("cuda") + max_concurrent("cpu"))))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AMX tiles or AVX-512 BF16: Sapphire Rapids and later,
    Zen 4 and later), where oneDNN's bf16 convolutions and matmuls are faster than fp32 (resnet18 at 28 px about
    2.1x, resnet9 1.7x; benchmarks/RESULTS.md). On other CPUs bf16 is emulated and slower, so it stays off."""
    if os.environ.get("HISTO_CPU_BF16") in ("0", "1"):
        return os.environ["HISTO_CPU_BF16"] == "1"
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())  # type: ignore[union-attr]
    except (AttributeError, RuntimeError):
        return False


BF16_MIN_CAPABILITY = (8, 0)  # Ampere and later compute bf16 natively; Volta and Turing (sm_70, sm_75) do not


def cuda_amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on cards of compute capability 8.0 or more; float16 below (V100, T4, RTX 20xx), where bf16 is
    emulated and slow. float16 needs loss scaling (`needs_grad_scaler`)."""
    capability = tuple(torch.cuda.get_device_capability(device))
    return torch.bfloat16 if capability >= BF16_MIN_CAPABILITY else torch.float16


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast with --amp (the default): on CUDA bf16 or fp16 by the card's compute capability
    (`cuda_amp_dtype`), on a CPU bf16 where it is native; None: full fp32 (--no-amp, also the way out where fp16
    is unstable for a model)."""
    return native_amp_dtype(device) if config.amp else None


def native_amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype the device computes natively (CUDA: `cuda_amp_dtype`; a CPU with AMX or AVX-512
    BF16: bfloat16); None where there is none (full fp32)."""
    if device.type == "cuda":
        return cuda_amp_dtype(device)
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def needs_grad_scaler(amp_dtype: torch.dtype | None) -> bool:
    """float16 gradients underflow without loss scaling (torch.amp.GradScaler); bf16 has fp32's range."""
    return amp_dtype == torch.float16


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """How a run computes, as its log, status, results and model card say it."""
    if amp_dtype is None:
        return "fp32"
    if needs_grad_scaler(amp_dtype):
        return "fp16 autocast + GradScaler"
    return "bf16 autocast"


def fused_optimizer_ok(model: nn.Module) -> bool:
    """Fused optimizer kernels exist for floating-point parameters on CPU and CUDA; $HISTO_FUSED_OPTIMIZER=0 turns
    them off (the per-parameter loop, torch's CPU default)."""
    if os.environ.get("HISTO_FUSED_OPTIMIZER", "1") == "0":
        return False
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())


_EAGER_CLASSES: dict[type, type] = {}


def eager_optimizer_class(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """`cls` with the dynamo hooks of torch.optim taken off, for processes that do not compile.

    torch.optim wraps `step` (to place graph breaks for torch.compile) and `zero_grad`, `add_param_group`,
    `state_dict`, `load_state_dict` (torch._disable_dynamo) in functions that import torch._dynamo on first call:
    about 150 MB of resident memory and several seconds of start-up in a process that never compiles. Outside a
    compiled region those wrappers only call the function they wrap (step under no_grad), so the subclass calls
    the wrapped functions directly: same maths, same state dicts (tests/test_train.py compares the parameters
    after several steps with the stock class). A run with --compile uses the stock class."""
    if cls not in _EAGER_CLASSES:
        import inspect

        from torch.optim import Optimizer

        raw_step = inspect.unwrap(cls.step)

        def step(self, closure=None):
            with torch.no_grad():
                return raw_step(self, closure)

        members: dict[str, object] = {"step": step, "__doc__": f"{cls.__name__} without torch._dynamo."}
        for name in ("zero_grad", "add_param_group", "state_dict", "load_state_dict"):
            members[name] = inspect.unwrap(getattr(Optimizer, name))
        _EAGER_CLASSES[cls] = type(f"Eager{cls.__name__}", (cls,), members)
    return _EAGER_CLASSES[cls]


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels and FX graphs between runs: $TORCHINDUCTOR_CACHE_DIR, else
    <data dir>/torchinductor (next to the dataset cache, so it survives reboots, unlike /tmp)."""
    from histo_core import paths

    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(env) if env else paths.data_dir() / "torchinductor"


def compile_module(module: nn.Module) -> nn.Module:
    """torch.compile (inductor: C++/OpenMP on CPU, Triton on CUDA) with the on-disk caches switched on, so a second
    run of the same architecture skips most of the compile. The checkpointed module stays the uncompiled one
    (Trainer.model), so saved state dicts carry no `_orig_mod.` prefix."""
    cache = compile_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return torch.compile(module)  # type: ignore[return-value]
