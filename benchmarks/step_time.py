"""Time of one training step (forward, backward, fused AdamW) of an architecture on a random batch, no data path.

For comparing process settings side by side (run it alternately under each; the machine's noise is 10-20%):

    python benchmarks/step_time.py [--arch simplecnn] [--size 28] [--batch 128] [--steps 120] [--threads 2]
    MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_TRIM_THRESHOLD_=4194304 python benchmarks/step_time.py   # glibc knobs

Unless MALLOC_* is set in the environment it applies the malloc thresholds of a histo_core trainer for --size
(histo_core/runtime.py). Prints wall and CPU milliseconds per step and images/s (figures, never asserted).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="simplecnn")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--no-channels-last", action="store_true")
    args = p.parse_args(argv)
    from histo_core.runtime import set_wait_policy, tune_malloc

    set_wait_policy(os.environ)  # as every histo_core process, before torch loads

    tuned = tune_malloc(tile_px=args.size)
    import torch

    from histo_core.models import build_model
    from histo_core.training.device import eager_optimizer_class

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout = torch.contiguous_format if args.no_channels_last else torch.channels_last
    model = build_model(args.arch, 9, 3, args.size).to(memory_format=layout)
    opt = eager_optimizer_class(torch.optim.AdamW)(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=layout)
    y = torch.randint(0, 9, (args.batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    wall, cpu = (time.perf_counter() - wall) / args.steps, (time.process_time() - cpu) / args.steps
    malloc = "histo_core thresholds" if tuned else "environment's / glibc's malloc settings"
    print(
        f"{args.arch} {args.size} px batch {args.batch}, {args.threads} threads, {malloc}: "
        f"{wall * 1000:.1f} ms/step wall, {cpu * 1000:.1f} ms CPU, {args.batch / wall:.0f} img/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
