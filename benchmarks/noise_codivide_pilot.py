"""Pilot, not a shipped method: `divide` with two networks that divide for each other (DivideMix's co-divide).

    python benchmarks/noise_codivide_pilot.py [--seeds 0,1,2] [--pair-of ce] [--epochs 60] [--out /tmp/codivide.jsonl]

The protocol of benchmarks/noise_methods.py (the same flips, folds, recipe and scoring; resnet9, 60 epochs, 40%
fixed noise): for each fold two networks (seeds s and s + 100) train with the `divide` loss, but each one's
split and targets are fitted from the OTHER network's predictions averaged over the warm-up's second half, so
neither trains on its own guesses; scored with the two networks' mean TTA probabilities. `--pair-of ce` trains
the same pair with plain CE and no split: the control for what averaging two networks alone gives. Rows go to
--out in noise_methods.py's format (method "codivide" or "ce-pair"), so its --table-only prints them. About
twice the time of one run. Results: benchmarks/RESULTS.md, "Noise lab III".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import noise_methods as nm  # noqa: E402


def main() -> None:
    import torch

    from histo_core.config import TrainConfig, with_method
    from histo_core.noise import fixed_noise
    from histo_core.training.data import array_dataset, build_train_data
    from histo_core.training.device import setup_device
    from histo_core.training.fit import model_meta, predict_probs
    from histo_core.training.trainer import Trainer

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--pair-of", choices=("divide", "ce"), default="divide")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--out", default="/tmp/codivide.jsonl")
    args = p.parse_args()
    if not nm.SAMPLE.exists():
        sys.exit(f"benchmarks/noise_codivide_pilot.py: {nm.SAMPLE} not found (the shared real-data sample)")
    name = "codivide" if args.pair_of == "divide" else "ce-pair"
    out = Path(args.out)
    done = {(r["method"], r["seed"], r["fold"]) for r in nm.load(out)}
    z = np.load(nm.SAMPLE)
    images = np.concatenate([z["train_images"], z["val_images"]])
    clean = np.concatenate([z["train_labels"], z["val_labels"]]).ravel().astype(np.int64)
    test_x, test_y = z["test_images"], z["test_labels"].ravel().astype(np.int64)
    classes = [str(i) for i in range(9)]
    base = TrainConfig(
        dataset="arrays",
        arch="resnet9",
        epochs=args.epochs,
        batch_size=32,
        optimizer="adamw",
        lr=3e-3,
        schedule="onecycle",
        weight_decay=5e-4,
        threads=1,
    )
    base = with_method(base, args.pair_of)
    for seed in [int(s) for s in args.seeds.split(",")]:
        noisy, flipped = fixed_noise(clean, 0.4, 9, seed, "fixed")
        folds = nm.fold_of(len(clean), 6, seed)
        for k in range(6):
            if (name, seed, k) in done:
                continue
            tr, ho = folds != k, folds == k
            t0 = time.perf_counter()
            nets = []
            for s in (seed, seed + 100):
                cfg = base.replace(seed=s).validate()
                device = setup_device(cfg)
                data = build_train_data(
                    cfg, array_dataset(images[tr], noisy[tr], classes), str(device), need_test=False
                )
                nets.append(Trainer(cfg, data, device))
            first, last = nets[0].criterion.window(base.epochs) if name == "codivide" else (0, -1)
            sums: list[torch.Tensor] = []
            for epoch in range(1, base.epochs + 1):
                for t in nets:
                    t.criterion.wants_predictions = lambda done, total: False  # the pair observes below, crossed
                    t.train_epoch()
                if first <= epoch <= last:
                    probs = [torch.from_numpy(t.predict(t.data.train)) for t in nets]
                    sums = probs if not sums else [a + b for a, b in zip(sums, probs)]
                if epoch == last:
                    for j, t in enumerate(nets):
                        t.criterion.fit_split(sums[1 - j] / (last - first + 1), t.data.train_labels, epoch)
            seconds = time.perf_counter() - t0
            metas = [model_meta(t.config, t.data) for t in nets]
            p_ho = sum(predict_probs(t.model.eval(), m, images[ho], tta=True) for t, m in zip(nets, metas))
            p_te = sum(predict_probs(t.model.eval(), m, test_x, tta=True) for t, m in zip(nets, metas))
            row = {
                "method": name,
                "noise": 0.4,
                "seed": seed,
                "fold": k,
                "arch": "resnet9",
                "epochs": base.epochs,
                "cv_right": int((np.asarray(p_ho).argmax(1) == clean[ho]).sum()),
                "cv_n": int(ho.sum()),
                "test_right": int((np.asarray(p_te).argmax(1) == test_y).sum()),
                "test_n": len(test_y),
                "flipped_in_train": int(flipped[tr].sum()),
                "seconds": round(seconds, 2),
            }
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        print(nm.table(nm.load(out)), flush=True)


if __name__ == "__main__":
    main()
