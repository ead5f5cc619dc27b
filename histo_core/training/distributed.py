"""Data-parallel helpers for runs started under torchrun (WORLD_SIZE > 1); each is a no-op for one process."""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch

from histo_core.runtime import resolve_device


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: str) -> tuple[int, int]:
    """Join the process group when started by torchrun (gloo on CPU, nccl on CUDA). Returns (rank, world)."""
    import torch.distributed as dist

    rank, world, local = dist_env()
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if resolve_device(device) == "cuda" else "gloo"
        timeout = datetime.timedelta(hours=2)
        if backend == "nccl":
            # modulo the visible GPUs: Slurm may bind one GPU per task, seen as cuda:0 whatever LOCAL_RANK is
            gpu = torch.device("cuda", local % max(1, torch.cuda.device_count()))
            torch.cuda.set_device(gpu)
            dist.init_process_group(backend, timeout=timeout, device_id=gpu)  # NCCL binds its communicator now
        else:
            dist.init_process_group(backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    """Leave the process group (torchrun runs), so that NCCL frees its communicators before the process ends."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current_world() -> tuple[int, int, int]:
    """(rank, world, local_rank) of this process: from the process group once joined, else from the environment."""
    rank, world, local = dist_env()
    if world > 1:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, world, local


def broadcast(obj: Any, world: int) -> Any:
    """Rank 0's `obj` on every rank (any picklable object)."""
    if world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any rank (a cancel seen by one stops all)."""
    if world <= 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any, world: int) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank; [obj] for one process."""
    if world <= 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def gather_to_first(obj: Any, world: int) -> list[Any] | None:
    """Every rank's `obj` (picklable), in rank order, on rank 0 alone (None on the others); [obj] for one
    process. Unlike `gather_objects` only rank 0 receives them: for large payloads (embedding features)."""
    if world <= 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of `values` over all ranks (float64)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return [float(v) for v in t]


def broadcast_buffers(module: torch.nn.Module, world: int) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: DDP keeps the parameters equal, but each
    rank's last forward updated its own statistics, and a sharded evaluation must see one model."""
    if world <= 1:
        return
    import torch.distributed as dist

    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
