"""The control of `codivide`: the same pair of networks trained with plain cross-entropy and no split ("ce-pair").

    python benchmarks/noise_codivide_pilot.py [--seeds 0,1,2] [--epochs 60] [--out /tmp/codivide.jsonl]

`codivide` ships as a method (`python benchmarks/noise_methods.py --methods codivide` runs it through the shipped
path, `histo_core.training.codivide`); this script was its pilot and keeps only the control that the method has
no name for: two CE networks (seeds s and s + 100, a `PairTrainer` of a CE config, so the same networks, batches
and scoring as `codivide`) averaged, which measures what averaging two networks alone gives. The protocol of
benchmarks/noise_methods.py (the same flips, folds, recipe and scoring; resnet9, 60 epochs, 40% fixed noise);
rows go to --out in its format (method "ce-pair"), so its --table-only prints them. Results: benchmarks/RESULTS.md,
"Noise lab III".
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
    from histo_core.config import TrainConfig
    from histo_core.noise import fixed_noise
    from histo_core.training.codivide import PairTrainer
    from histo_core.training.data import array_dataset, build_train_data, model_meta
    from histo_core.training.device import setup_device
    from histo_core.training.fit import predict_probs

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--out", default="/tmp/codivide.jsonl")
    args = p.parse_args()
    if not nm.SAMPLE.exists():
        sys.exit(f"benchmarks/noise_codivide_pilot.py: {nm.SAMPLE} not found (the shared real-data sample)")
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
    for seed in [int(s) for s in args.seeds.split(",")]:
        noisy, flipped = fixed_noise(clean, 0.4, 9, seed, "fixed")
        folds = nm.fold_of(len(clean), 6, seed)
        for k in range(6):
            if ("ce-pair", seed, k) in done:
                continue
            tr, ho = folds != k, folds == k
            t0 = time.perf_counter()
            cfg = base.replace(seed=seed).validate()
            device = setup_device(cfg)
            data = build_train_data(cfg, array_dataset(images[tr], noisy[tr], classes), str(device), need_test=False)
            pair = PairTrainer(cfg, data, device)
            while pair.epoch < cfg.epochs:
                pair.train_epoch()
            seconds = time.perf_counter() - t0
            model, meta = pair.model.eval(), model_meta(cfg, data)
            p_ho = predict_probs(model, meta, images[ho], tta=True)
            p_te = predict_probs(model, meta, test_x, tta=True)
            row = {
                "method": "ce-pair",
                "noise": 0.4,
                "seed": seed,
                "fold": k,
                "arch": "resnet9",
                "epochs": cfg.epochs,
                "cv_right": int((p_ho.argmax(1) == clean[ho]).sum()),
                "cv_n": int(ho.sum()),
                "test_right": int((p_te.argmax(1) == test_y).sum()),
                "test_n": len(test_y),
                "flipped_in_train": int(flipped[tr].sum()),
                "seconds": round(seconds, 2),
            }
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        print(nm.table(nm.load(out)), flush=True)


if __name__ == "__main__":
    main()
