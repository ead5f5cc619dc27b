"""Training throughput: our trainer against a plain PyTorch reference loop, for a fixed time, set-up included.

Both train the same architecture on the same synthetic 28 px tiles (the built-in SYNTHETIC set, 4096 tiles),
batch 128, AdamW, the same thread count and random horizontal + vertical flips and 90-degree rotations (the
default recipe's augmentations). Every measurement runs in its
own child process (imports and compile caches do not leak from one to the next), alternating ours and the
reference per architecture and round, so that a machine-wide slowdown hits both:

  ours       histo_core.training.Trainer as `python -m histo_core train` builds it: uint8 tiles resident as one
             tensor, batches gathered by index, flips and rotations batched on the device, channels-last, fused AdamW, bf16
             autocast where the device computes bf16 natively (CUDA; CPUs with AMX or AVX-512 BF16), and
             torch.compile when --compile is given (off by default: it did not pay on CPU, RESULTS.md);
  reference  the textbook loop: a torch Dataset returning PIL images, RandomHorizontalFlip +
             RandomVerticalFlip + a random multiple of 90 degrees + ToTensor + Normalize per item, a DataLoader with batch 128 (no workers),
             torch.optim.AdamW with torch's defaults.

Each child's clock starts before the model is built (after imports), so model construction, compilation and
warm-up count; it trains step by step until --seconds have passed (the step in flight finishes) and reports the
steps and images done. On CUDA the host waits for the device after the first step and once at the end, never
in between (a wait per step measured a loop that users do not run: the trainer itself does not wait). images/s = images / seconds over that whole time; `steady_img_per_s` excludes the first step.

    python benchmarks/train_speed.py [--json] [--device cpu|cuda] [--archs simplecnn,resnet18] [--seconds 20]
                                     [--rounds 1] [--threads 2] [--compile] [--dry-run]

With its defaults it takes about 2 minutes on 2 cores (2 architectures x 2 loops x 20 s, plus process start).
--dry-run builds every model, optimizer and trainer for the chosen device (for --device cuda without a GPU: the
CUDA configuration, built on the CPU) and prints the plan without training.
Prints a table, or with --json one JSON list: [{"arch", "device", "threads", "seconds", "ours": {...},
"reference": {...}, "ratio"}]. Figures are measured, never asserted (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_TILES = 4096
BATCH = 128


def synthetic_tiles(n: int = N_TILES):
    import numpy as np

    from histo_core.datasets import open_dataset

    ds = open_dataset("synthetic", size=28)
    s = ds.split("train")
    reps = -(-n // len(s))
    return np.tile(s.images, (reps, 1, 1, 1))[:n].copy(), np.tile(s.labels, reps)[:n].copy(), ds.info.classes


def our_config(arch: str, device: str, threads: int, compile_: bool):
    from histo_core.config import TrainConfig

    cfg = TrainConfig(
        dataset="arrays",
        arch=arch,
        batch_size=BATCH,
        optimizer="adamw",
        lr=1e-3,
        epochs=1000,
        device=device,
        threads=threads,
        seed=0,
        compile=compile_,
    )
    cfg.augment.flip, cfg.augment.rot90 = True, True
    return cfg


def build_ours(arch: str, device: str, threads: int, compile_: bool, tiles, *, build_device: str | None = None):
    """(trainer, config) as the CLI builds them; `build_device` overrides where tensors go (the dry run)."""
    import torch

    from histo_core import training as T
    from histo_core.training.device import autocast_dtype

    cfg = our_config(arch, device, threads, compile_)
    dev = torch.device(build_device) if build_device else T.setup_device(cfg)
    data = T.build_train_data(cfg, T.array_dataset(*tiles), str(dev), need_test=False)
    trainer = T.Trainer(cfg, data, dev)
    if build_device:  # what Trainer sets on the device the plan is for
        if device == "cuda" and not torch.cuda.is_available():  # planned for a card of capability 8.0 or more
            trainer.amp_dtype = torch.bfloat16 if cfg.amp else None  # (fp16 + GradScaler on older cards)
        else:
            trainer.amp_dtype = autocast_dtype(cfg, torch.device(device))
    return trainer, cfg


def _preload() -> None:
    """Imports both loops need, before either clock starts: torch._dynamo is loaded by torch.optim's optimizers
    (Optimizer.__init__) and by torchvision; several seconds on a busy machine, paid by both in their set-up."""
    import torch._dynamo  # noqa: F401
    from PIL import Image  # noqa: F401
    from torchvision import transforms  # noqa: F401


def run_ours(arch: str, device: str, threads: int, seconds: float, compile_: bool) -> dict:
    import torch

    from histo_core import training as T

    _preload()

    tiles = synthetic_tiles()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock = {"steps": 0, "images": 0, "first": None}
    t0 = time.perf_counter()
    trainer, _ = build_ours(arch, device, threads, compile_, tiles)

    def on_batch(tr, images: int) -> bool:
        clock["steps"] += 1
        clock["images"] += images
        if clock["first"] is None:
            sync()
            clock["first"] = (time.perf_counter() - t0, images)
        return time.perf_counter() - t0 >= seconds

    try:
        while True:
            trainer.train_epoch(on_batch)
    except T.StopRequested:
        pass
    sync()
    amp = str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else None
    return {**_row(clock, time.perf_counter() - t0), "autocast": amp}


def _row(clock: dict, elapsed: float) -> dict:
    first_s, first_images = clock["first"]
    steady = (clock["images"] - first_images) / max(elapsed - first_s, 1e-9) if clock["steps"] > 1 else None
    return {
        "steps": clock["steps"],
        "images": clock["images"],
        "seconds": round(elapsed, 2),
        "first_step_s": round(first_s, 2),
        "img_per_s": round(clock["images"] / elapsed, 1),
        "steady_img_per_s": None if steady is None else round(steady, 1),
    }


def reference_loader(tiles, device: str):
    import torch
    from torchvision import transforms

    images, labels, _ = tiles
    mean = (images.reshape(-1, 3) / 255.0).mean(0).tolist()
    std = (images.reshape(-1, 3) / 255.0).std(0).tolist()
    tf = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.RandomChoice([transforms.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )

    class PILTiles(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            from PIL import Image

            return tf(Image.fromarray(images[i])), int(labels[i])

    return torch.utils.data.DataLoader(
        PILTiles(), batch_size=BATCH, shuffle=True, num_workers=0, pin_memory=device == "cuda"
    )


def run_reference(arch: str, device: str, threads: int, seconds: float) -> dict:
    import torch

    from histo_core.models import build_model

    _preload()

    tiles = synthetic_tiles()
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    dev = torch.device(device)
    clock = {"steps": 0, "images": 0, "first": None}
    t0 = time.perf_counter()
    loader = reference_loader(tiles, device)
    torch.manual_seed(0)
    model = build_model(arch, len(tiles[2]), 3, 28).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    while clock["steps"] == 0 or time.perf_counter() - t0 < seconds:
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            clock["steps"] += 1
            clock["images"] += len(y)
            if clock["first"] is None:
                sync()
                clock["first"] = (time.perf_counter() - t0, len(y))
            if time.perf_counter() - t0 >= seconds:
                break
    sync()
    return _row(clock, time.perf_counter() - t0)


def dry_run(archs: list[str], device: str, threads: int, compile_: bool) -> list[dict]:
    """Build everything each loop needs for `device` without training. Without a GPU, the CUDA configuration is
    built on the CPU (same code path up to where tensors would move)."""
    import torch

    from histo_core.models import build_model

    have_gpu = device == "cuda" and torch.cuda.is_available()
    build_device = None if device == "cpu" or have_gpu else "cpu"
    tiles = synthetic_tiles()
    plans = []
    for arch in archs:
        trainer, cfg = build_ours(arch, device, threads, False, tiles, build_device=build_device)
        opt = trainer.optimizer
        loader = reference_loader(tiles, device)
        ref_model = build_model(arch, len(tiles[2]), 3, 28)
        x = trainer.prepare_batch(trainer.gather(trainer.batches_of_epoch(0)[0]), train=True)
        plans.append(
            {
                "arch": arch,
                "device": device,
                "built_on": str(trainer.device),
                "gpu_available": have_gpu,
                "threads": threads,
                "batch_size": cfg.batch_size,
                "steps_per_epoch": trainer.steps_per_epoch,
                "params": sum(p.numel() for p in trainer.model.parameters()),
                "ours": {
                    "channels_last": trainer.channels_last,
                    "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else None,
                    "optimizer": type(opt).__name__,
                    "fused": bool(opt.defaults.get("fused")),
                    "compile": compile_,
                    "batch_shape": list(x.shape),
                },
                "reference": {
                    "optimizer": "AdamW",
                    "pin_memory": loader.pin_memory,
                    "workers": loader.num_workers,
                    "params": sum(p.numel() for p in ref_model.parameters()),
                },
            }
        )
    return plans


def _child(kind: str, arch: str, args) -> dict:
    """Run one measurement in a fresh process with the same environment for both loops."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--archs",
        arch,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--seconds",
        str(args.seconds),
    ] + (["--compile"] if args.compile else [])
    from histo_core.runtime import set_wait_policy

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    set_wait_policy(env)  # what every histo_core process sets (histo_core/runtime.py), for both loops
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"error: {kind} {arch} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print the results as one JSON list (default: a table)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--archs", default="simplecnn,resnet18", help="comma-separated architectures")
    p.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="wall time per loop and round, set-up and compile included (default 20)",
    )
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds per loop; the best is kept (default 1)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads (default 2)")
    p.add_argument("--compile", action="store_true", help="ours with torch.compile (TrainConfig.compile)")
    p.add_argument(
        "--dry-run", action="store_true", help="build everything for --device, print the plan, train nothing"
    )
    p.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if args.dry_run:
        print(json.dumps(dry_run(archs, args.device, args.threads, args.compile), indent=2))
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda: no CUDA GPU here (use --dry-run to check the CUDA set-up)", file=sys.stderr)
            return 2
    if args.child:
        if args.child == "ours":  # the malloc settings of every histo_core process (`python -m histo_core train`)
            from histo_core.runtime import tune_malloc

            tune_malloc()
        fn = run_ours if args.child == "ours" else run_reference
        extra = (args.compile,) if args.child == "ours" else ()
        print(json.dumps(fn(archs[0], args.device, args.threads, args.seconds, *extra)))
        return 0
    results = []
    for arch in archs:
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for kind in ("ours", "reference"):
                r = _child(kind, arch, args)
                if kind not in best or r["img_per_s"] > best[kind]["img_per_s"]:
                    best[kind] = r
        row = {
            "arch": arch,
            "device": args.device,
            "threads": args.threads,
            "seconds": args.seconds,
            "compile": args.compile,
            **best,
            "ratio": round(best["ours"]["img_per_s"] / max(best["reference"]["img_per_s"], 1e-9), 2),
        }
        results.append(row)
        if not args.json:
            o, r = best["ours"], best["reference"]
            print(
                f"{arch:10s} {args.device}  ours {o['steps']:5d} steps {o['images']:7d} img {o['seconds']:6.1f} s "
                f"{o['img_per_s']:8.1f} img/s | reference {r['steps']:5d} steps {r['images']:7d} img "
                f"{r['seconds']:6.1f} s {r['img_per_s']:8.1f} img/s | ratio {row['ratio']:.2f}",
                flush=True,
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
