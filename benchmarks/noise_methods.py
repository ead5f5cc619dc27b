"""Label-noise methods on the real 240-tile PathMNIST sample: accuracy under fixed symmetric noise.

    python benchmarks/noise_methods.py [--noise 0,0.2,0.4] [--seeds 3] [--folds 6] [--methods ce,gce,...]
        [--arch resnet9] [--epochs 30] [--out /tmp/noise_bench.jsonl] [--table-only]
        [--only-seeds 0,2] [--only-folds 0,...] [--augment stain_jitter=0.05,...]
    python benchmarks/noise_methods.py --trace --arch simplecnn --epochs 30 --noise 0.4

`--trace`: one CE fit (seed 0, fold 0, the first --noise level), epoch by epoch: training accuracy against the
noisy labels (above 1 - noise it is learning the wrong labels), how many flipped tiles the model puts in
their TRUE class, and how well each tile's loss against its noisy label ranks the flipped tiles first (AUC:
what a loss split such as boot's can find).

For each seed and noise level the 200 train+val tiles get ONE set of wrong labels (histo_core.noise.fixed_noise,
the function training uses, with the seed): every method sees the same flips. 6-fold cross-validation: each fold
model trains on the other 5/6 with the noisy labels (`histo_core.training.fit_arrays`, the recipe of the small-set
default at fewer epochs: AdamW + one-cycle 3e-3, weight decay 5e-4, flips + 90-degree rotations, flip/rotation
TTA) and is scored with the TRUE labels on its held-out fold (all 200 tiles scored once) and on the 40 test tiles.

`--augment NAME=VALUE,...` sets training augmentation options (fields of `histo_core.config.Augment`, on top of
the recipe's flips + 90-degree rotations, e.g. `stain_jitter=0.05` or `brightness=0.1,hue=0.02`); its rows are
named `METHOD[NAME=VALUE,...]` so that they sit beside the plain method's in one --out. Only the training batches
are augmented: the predictions that `divide`/`codivide` split on and the scoring's TTA are as without it.
`--only-seeds` runs only those of the `--seeds` seeds (e.g. `--seeds 3 --only-seeds 2`: seed 2 alone).

Columns: `cv` = accuracy of the out-of-fold predictions on the 200 tiles, `test` = mean over folds of the
accuracy on the 40 test tiles, `all` = both pooled (240 tiles, the figure to compare); each as mean ± sd over
seeds. Every finished fold is appended to --out (JSON lines) at once and skipped on a rerun, so a run that is
stopped resumes where it stopped and the table can be printed from partial results (--table-only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT.parent / "shared" / "data" / "pathmnist-mini" / "pathmnist.npz"


def load_sample() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The protocol's tiles: the 200 train+val tiles and their clean labels (folded), the 40 test tiles and theirs."""
    with np.load(SAMPLE) as z:
        images = np.concatenate([z["train_images"], z["val_images"]])
        clean = np.concatenate([z["train_labels"], z["val_labels"]]).ravel().astype(np.int64)
        return images, clean, z["test_images"], z["test_labels"].ravel().astype(np.int64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from histo_core.config import NOISE_METHODS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--noise", default="0.4,0.2,0", help="noise rates, comma-separated (default 0.4,0.2,0)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", type=int, default=6)
    p.add_argument("--only-folds", default="", help="run only these folds, comma-separated (a check of one fold)")
    p.add_argument("--only-seeds", default="", help="run only these of the --seeds seeds, comma-separated")
    p.add_argument("--augment", default="", help="training augmentation, NAME=VALUE comma-separated (Augment fields)")
    p.add_argument("--methods", default=",".join(NOISE_METHODS), help="NOISE_METHODS names, comma-separated")
    p.add_argument("--arch", default="resnet9")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/tmp/noise_bench.jsonl", help="JSON lines, one per finished fold")
    p.add_argument("--table-only", action="store_true", help="print the table of what --out holds and stop")
    p.add_argument("--trace", action="store_true", help="trace one CE fit epoch by epoch (see the docstring)")
    return p.parse_args(argv)


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold number of each of n tiles: a seeded permutation cut into `folds` near-equal parts."""
    f = np.empty(n, dtype=np.int64)
    f[np.random.default_rng([seed, 606]).permutation(n)] = np.arange(n) % folds
    return f


def augmentation(spec: str) -> tuple[dict[str, object], str]:
    """--augment "stain_jitter=0.05,hue=0.02" -> ({"stain_jitter": 0.05, "hue": 0.02}, "[stain_jitter=0.05,hue=0.02]")
    (the Augment fields to change and the rows' method-name suffix; "" -> ({}, "")). Exits on an unknown name or a
    value of the wrong kind."""
    from histo_core.config import config_paths, field_kind

    changes: dict[str, object] = {}
    for item in [i.strip() for i in spec.split(",") if i.strip()]:
        name, _, value = item.partition("=")
        path = f"augment.{name.strip()}"
        if path not in config_paths() or not value.strip():
            sys.exit(f"--augment: '{item}' is not NAME=VALUE with NAME an augmentation option")
        kind, value = field_kind(path), value.strip().lower()
        bools = {"1": True, "true": True, "0": False, "false": False}
        try:
            changes[name.strip()] = bools[value] if kind is bool else kind(value)
        except (KeyError, ValueError):
            sys.exit(f"--augment: '{item}': {value!r} is not a {kind.__name__}")
    suffix = "[" + ",".join(f"{k}={v}" for k, v in changes.items()) + "]" if changes else ""
    return changes, suffix


def run(args: argparse.Namespace) -> None:
    import dataclasses

    from histo_core.config import ConfigError, TrainConfig, with_method
    from histo_core.noise import fixed_noise
    from histo_core.training.fit import fit_arrays, predict_probs

    images, clean, test_x, test_y = load_sample()
    classes = [str(i) for i in range(9)]
    out = Path(args.out)
    done = {(r["method"], r["noise"], r["seed"], r["fold"]) for r in load(out)}
    base = TrainConfig(
        arch=args.arch,
        epochs=args.epochs,
        batch_size=32,
        optimizer="adamw",
        lr=3e-3,
        schedule="onecycle",
        weight_decay=5e-4,
        tta=True,
        threads=args.threads,
    )
    aug, suffix = augmentation(args.augment)
    base = base.replace(augment=dataclasses.replace(base.augment, **aug))
    try:
        base.validate()
    except ConfigError as e:
        sys.exit(f"benchmarks/noise_methods.py: {e}")
    methods = args.methods.split(",")
    seeds = {int(s) for s in args.only_seeds.split(",") if s.strip()} or set(range(args.seeds))
    wanted = {int(k) for k in args.only_folds.split(",") if k.strip()} or set(range(args.folds))
    for noise in [float(r) for r in args.noise.split(",")]:
        for seed in sorted(seeds):
            noisy, flipped = (clean, np.zeros(len(clean), bool))
            if noise > 0:
                noisy, flipped = fixed_noise(clean, noise, 9, seed, "fixed")
            folds = fold_of(len(clean), args.folds, seed)
            for method in methods:
                cfg = with_method(base, method).replace(seed=seed)
                name = method + suffix
                for k in range(args.folds):
                    if (name, noise, seed, k) in done or k not in wanted:
                        continue
                    tr, ho = folds != k, folds == k
                    t0 = time.perf_counter()
                    model, meta = fit_arrays(cfg, images[tr], noisy[tr], classes=classes)
                    seconds = time.perf_counter() - t0
                    p_ho = predict_probs(model, meta, images[ho], tta=True).argmax(1)
                    p_te = predict_probs(model, meta, test_x, tta=True).argmax(1)
                    row = {
                        "method": name,
                        "noise": noise,
                        "seed": seed,
                        "fold": k,
                        "arch": args.arch,
                        "epochs": args.epochs,
                        "cv_right": int((p_ho == clean[ho]).sum()),
                        "cv_n": int(ho.sum()),
                        "test_right": int((p_te == test_y).sum()),
                        "test_n": len(test_y),
                        "flipped_in_train": int(flipped[tr].sum()),
                        "seconds": round(seconds, 2),
                    }
                    with out.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
            print(table(load(out), args.folds), flush=True)


def trace(args: argparse.Namespace) -> None:
    import torch

    from histo_core.config import TrainConfig
    from histo_core.noise import fixed_noise
    from histo_core.training.data import array_dataset, build_train_data
    from histo_core.training.device import setup_device
    from histo_core.training.trainer import Trainer

    images, clean, _, _ = load_sample()
    noise = float(args.noise.split(",")[0])
    noisy, flipped = fixed_noise(clean, noise, 9, 0, "fixed")
    tr = fold_of(len(clean), args.folds, 0) != 0
    cfg = TrainConfig(
        dataset="arrays",
        arch=args.arch,
        epochs=args.epochs,
        batch_size=32,
        optimizer="adamw",
        lr=3e-3,
        schedule="onecycle",
        weight_decay=5e-4,
        threads=args.threads,
    ).validate()
    device = setup_device(cfg)
    ds = array_dataset(images[tr], noisy[tr], [str(i) for i in range(9)])
    trainer = Trainer(cfg, build_train_data(cfg, ds, str(device), need_test=False), device)
    y, true, flip = noisy[tr], clean[tr], flipped[tr]
    print(f"{args.arch}, {args.epochs} epochs, {noise:g} noise, seed 0 fold 0: {int(flip.sum())}/{len(y)} flipped")
    print("epoch | train acc (noisy labels) | flipped tiles put in their true class | loss AUC for flipped")
    for _ in range(cfg.epochs):
        row = trainer.train_epoch()
        probs = trainer.predict(trainer.data.train)
        loss = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))
        pred = probs.argmax(1)
        ranks = torch.from_numpy(loss).argsort().argsort().numpy() + 1  # rank-sum AUC (no ties in float losses)
        auc = (ranks[flip].sum() - flip.sum() * (flip.sum() + 1) / 2) / max(1, flip.sum() * (~flip).sum())
        print(f"{row['epoch']} | {row['train_acc']:.2f} | {(pred == true)[flip].mean():.2f} | {auc:.2f}", flush=True)


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(rows: list[dict], folds: int = 6) -> dict[tuple[str, float], dict[str, object]]:
    """(method, noise) -> per-seed scores of the seeds whose every fold finished."""
    by: dict[tuple[str, float, int], list[dict]] = {}
    for r in rows:
        by.setdefault((r["method"], r["noise"], r["seed"]), []).append(r)
    out: dict[tuple[str, float], dict[str, list[float]]] = {}
    for (method, noise, _seed), rs in sorted(by.items()):
        if len(rs) < folds:
            continue
        cv = sum(r["cv_right"] for r in rs) / sum(r["cv_n"] for r in rs)
        test = float(np.mean([r["test_right"] / r["test_n"] for r in rs]))
        both = (sum(r["cv_right"] for r in rs) + test * rs[0]["test_n"]) / (
            sum(r["cv_n"] for r in rs) + rs[0]["test_n"]
        )
        d = out.setdefault((method, noise), {"cv": [], "test": [], "all": [], "seconds": []})
        d["cv"].append(cv)
        d["test"].append(test)
        d["all"].append(both)
        d["seconds"].append(float(np.mean([r["seconds"] for r in rs])))
    return out  # type: ignore[return-value]


def table(rows: list[dict], folds: int = 6) -> str:
    s = summarise(rows, folds)
    if not s:
        return "(no finished seed yet)"
    noises = sorted({n for _, n in s})
    methods = list(dict.fromkeys(m for m, _ in s))
    fmt = lambda v: f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f} ({len(v)})"  # noqa: E731
    head = "| method | " + " | ".join(f"noise {n:g}: all (cv / test)" for n in noises) + " | s per fit |"
    lines = [head, "|---" * (len(noises) + 2) + "|"]
    for m in methods:
        cells = []
        for n in noises:
            d = s.get((m, n))
            cells.append("–" if d is None else f"{fmt(d['all'])} ({np.mean(d['cv']):.3f} / {np.mean(d['test']):.3f})")
        secs = [x for n in noises if (m, n) in s for x in s[(m, n)]["seconds"]]  # type: ignore[union-attr]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {np.mean(secs):.1f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if not SAMPLE.exists():
        sys.exit(f"benchmarks/noise_methods.py: {SAMPLE} not found (the shared real-data sample)")
    if args.trace:
        return trace(args)
    if not args.table_only:
        run(args)
    print(table(load(Path(args.out)), args.folds))


if __name__ == "__main__":
    main()
