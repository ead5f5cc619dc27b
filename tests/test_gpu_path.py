"""The CUDA path, tested on the CPU: device copies, precision per compute capability, slots mapped to GPUs, sync
counts per training step, out-of-memory handling. `torch.cuda` functions are patched where a test needs a card;
nothing here has run on a real GPU (README, "GPU")."""

from __future__ import annotations

import numpy as np
import torch

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
