"""Where a training step of our trainer spends its time: a torch.profiler table (CPU self time per operator).

    python benchmarks/profile_train.py [--arch simplecnn] [--steps 20] [--threads 2] [--rows 15] [--compile]

Builds the trainer as benchmarks/train_speed.py does (synthetic 28 px tiles, batch 128, AdamW, flips), runs
3 warm-up steps, then profiles --steps steps and prints the operator table sorted by self CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="simplecnn")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    from histo_core.runtime import set_wait_policy

    set_wait_policy(os.environ)  # as every histo_core process, before torch loads
    import torch
    from torch.profiler import ProfilerActivity, profile
    from train_speed import build_ours, synthetic_tiles

    trainer, _ = build_ours(args.arch, "cpu", args.threads, args.compile, synthetic_tiles())
    batches = trainer.batches_of_epoch(0)

    def step(i: int) -> None:
        pos = batches[i % len(batches)]
        trainer.train_batch(pos)

    trainer.set_train_mode()
    for i in range(3):
        step(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.steps):
            step(i)
    print(f"{args.arch}, {args.steps} steps, batch 128, 28 px, {torch.get_num_threads()} threads")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
