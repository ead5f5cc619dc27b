"""Training throughput: our trainer's inner loop against a plain PyTorch reference loop.

Both train the same architecture on the same synthetic 28 px tiles (the built-in SYNTHETIC set, repeated
to 4096 tiles), batch 128, AdamW, the same thread count and random horizontal + vertical flips, in one
process, alternating (ours, reference, ours, reference) so that a machine-wide slowdown hits both:

  ours       histo_core.train.Trainer.train_epoch: uint8 tiles resident as one tensor, batches gathered by
             index, flips done batched on the device;
  reference  the textbook loop: a torch Dataset returning PIL images, RandomHorizontalFlip +
             RandomVerticalFlip + ToTensor + Normalize per item, a DataLoader with batch 128 (workers 0, as
             the trainer uses none either).

    python benchmarks/train_speed.py --json [--device cuda] [--archs simplecnn,resnet18] [--seconds 20] [--threads 2]

Prints one JSON list: [{"arch", "device", "threads", "ours_img_per_s", "reference_img_per_s", "ratio"}].
Figures are measured, never asserted (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

N_TILES = 4096
BATCH = 128


def synthetic_tiles(n: int = N_TILES) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from histo_core.datasets import open_dataset

    ds = open_dataset("synthetic", size=28)
    s = ds.split("train")
    reps = -(-n // len(s))
    return np.tile(s.images, (reps, 1, 1, 1))[:n].copy(), np.tile(s.labels, reps)[:n].copy(), ds.info.classes


def ours(arch: str, device: str, threads: int, seconds: float, images, labels, classes) -> float:
    from histo_core import train as T
    from histo_core.config import TrainConfig

    cfg = TrainConfig(dataset="arrays", arch=arch, batch_size=BATCH, optimizer="adamw", lr=1e-3, epochs=1000,
                      device=device, threads=threads, seed=0)
    cfg.augment.flip, cfg.augment.rot90 = True, False
    dev = T.setup_device(cfg)
    data = T.build_train_data(cfg, T._array_dataset(images, labels, classes), str(dev), need_test=False)
    trainer = T.Trainer(cfg, data, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    trainer.train_epoch()  # warm-up (allocations, cudnn autotune)
    sync()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        trainer.train_epoch()
        done += N_TILES
    sync()
    return done / (time.perf_counter() - t0)


class PILTiles(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference(arch: str, device: str, threads: int, seconds: float, images, labels, classes) -> float:
    from torchvision import transforms

    from histo_core.models import build_model

    torch.set_num_threads(threads)
    dev = torch.device(device)
    mean = (images.reshape(-1, 3) / 255.0).mean(0).tolist()
    std = (images.reshape(-1, 3) / 255.0).std(0).tolist()
    tf = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip(), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(PILTiles(images, labels, tf), batch_size=BATCH, shuffle=True, num_workers=0,
                                         pin_memory=dev.type == "cuda")
    torch.manual_seed(0)
    model = build_model(arch, len(classes), 3, 28).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def epoch() -> int:
        model.train()
        n = 0
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
        return n

    epoch()  # warm-up
    sync()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += epoch()
    sync()
    return done / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print the results as one JSON list (default: a table)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--archs", default="simplecnn,resnet18", help="comma-separated architectures")
    p.add_argument("--seconds", type=float, default=20.0, help="measuring time per loop and round (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per loop; the best is kept (default 2)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads (default 2)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA GPU here", file=sys.stderr)
        return 2
    images, labels, classes = synthetic_tiles()
    results = []
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        best = {"ours": 0.0, "reference": 0.0}
        for _ in range(args.rounds):
            best["ours"] = max(best["ours"], ours(arch, args.device, args.threads, args.seconds, images, labels, classes))
            best["reference"] = max(best["reference"],
                                    reference(arch, args.device, args.threads, args.seconds, images, labels, classes))
        row = {"arch": arch, "device": args.device, "threads": args.threads,
               "ours_img_per_s": round(best["ours"], 1), "reference_img_per_s": round(best["reference"], 1),
               "ratio": round(best["ours"] / best["reference"], 2)}
        results.append(row)
        if not args.json:
            print(f"{arch:10s} {args.device}  ours {row['ours_img_per_s']:9.1f} img/s   reference "
                  f"{row['reference_img_per_s']:9.1f} img/s   ratio {row['ratio']:.2f}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
