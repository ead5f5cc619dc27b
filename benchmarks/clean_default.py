"""Candidates for the small-set default recipe, scored on the real 240-tile PathMNIST sample (issue #25).

    python benchmarks/clean_default.py [--seeds 3] [--candidates default,smooth,...] [--out /tmp/clean_default.jsonl]
        [--table-only]

The protocol of benchmarks/noise_methods.py at noise 0 (its folds, seeds and scoring): for each seed, 6-fold
cross-validation over the 200 train+val tiles of `pathmnist-mini`, each fold model trained on the other 5/6 and
scored on its held-out fold and on the 40 test tiles; `all` = the 200 out-of-fold predictions and the fold models'
mean on the 40 test tiles pooled (240 tiles, about ±2 points on its own per seed). Every candidate sees the same
folds for a seed, so the candidates are compared fold by fold, and ensembles of two candidates can be scored from
the stored probabilities without training again.

A candidate is a set of TrainConfig changes from the small-set default (`CANDIDATES`), trained with the
`Trainer` as `fit_arrays` does, and read out in several ways from the same fit (`READOUTS`): the final weights
with the 8-view TTA (what the default recipe predicts), without TTA, with TTA over 1-px shifts as well, and the mean
of the weights of the last epochs (SWA, BatchNorm statistics recomputed). `seconds` is the fit's training time in this process (one torch thread);
the table gives each candidate's time as a ratio to `default` fitted on the same folds beside it.

Every finished fold is appended to --out (JSON lines) at once and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from noise_methods import SAMPLE, fold_of, load, load_sample  # noqa: E402  (the same folds and sample)

# name -> changes from the small-set default (TrainConfig fields; "width" = ResNet-9 width, "shift" = random
# translation by up to that many pixels, both only here)
CANDIDATES: dict[str, dict[str, Any]] = {
    "default": {},
    "smooth": {"loss": "smooth"},  # label smoothing 0.1
    "shift2": {"shift": 2},
    "epochs90": {"epochs": 90},
    "default-b": {"seed_offset": 100},  # the same recipe, another initialisation and augmentation stream
    "wd5e-3": {"weight_decay": 5e-3},
    "smooth-e90": {"loss": "smooth", "epochs": 90},
    "simplecnn-e300": {"arch": "simplecnn", "epochs": 300},
    "width32": {"width": 32},
    "epochs120": {"epochs": 120},
}
SNAPSHOTS = 10  # epochs at the end whose weights SWA averages
READOUTS = ("tta", "plain", "tta-shift", "swa")
ENSEMBLES = (("default", "default-b"), ("default", "smooth"), ("default", "shift2"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", type=int, default=6)
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="CANDIDATES names, comma-separated")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/tmp/clean_default.jsonl", help="JSON lines, one per finished fold")
    p.add_argument("--table-only", action="store_true", help="print the table of what --out holds and stop")
    return p.parse_args(argv)


def base_config(threads: int) -> Any:
    """The small-set default on CPU (`training.default_config` of pathmnist-mini), for in-memory arrays."""
    from histo_core.training import default_config

    cfg = default_config(str(SAMPLE), device="cpu")
    return cfg.replace(dataset="arrays", train_splits="train", threads=threads)


def register_width(width: int) -> str:
    from histo_core.models import ARCHITECTURES, ArchSpec, ResNet9, register_architecture

    name = f"resnet9w{width}"
    if name not in ARCHITECTURES:
        spec = ARCHITECTURES["resnet9"]

        def build(num_classes: int, in_channels: int, input_size: int, **_: Any) -> Any:
            return ResNet9(num_classes, in_channels, input_size, width=width)

        register_architecture(
            ArchSpec(name, name, spec.min_size, spec.max_size, False, build, spec.head_attr, spec.cam_layer)
        )
    return name


def shift_augment(pixels: int) -> None:
    """Add a random translation by up to `pixels` (reflection at the border) after the configured augmentations."""
    import torch
    import torch.nn.functional as F

    from histo_core import augment

    original = augment.augment_batch

    def augment_batch(x: torch.Tensor, aug: Any, gen: torch.Generator) -> torch.Tensor:
        x = original(x, aug, gen)
        n, _, h, w = x.shape
        d = torch.randint(-pixels, pixels + 1, (n, 2), generator=gen, device=gen.device).to(x.device, x.dtype)
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2], theta[:, 1, 2] = 2 * d[:, 0] / w, 2 * d[:, 1] / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="reflection", align_corners=False)

    augment.augment_batch = augment_batch  # type: ignore[assignment]
    shift_augment.restore = lambda: setattr(augment, "augment_batch", original)  # type: ignore[attr-defined]


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """uint8 tiles (N, H, W, C) moved by (dy, dx) pixels, reflected at the border."""
    pad = max(abs(dy), abs(dx))
    p = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = images.shape[1:3]
    return p[:, pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def fit_and_read(cfg: Any, width: int, shift: int, x: np.ndarray, y: np.ndarray, evals: np.ndarray) -> dict:
    """Train one fold model; {readout: probabilities (N, K) of `evals`} and the training seconds."""
    import torch

    from histo_core.training.data import array_dataset, build_train_data, model_meta
    from histo_core.training.device import setup_device
    from histo_core.training.fit import predict_probs
    from histo_core.training.trainer import Trainer

    if width != 16:
        cfg = cfg.replace(arch=register_width(width))
    cfg = cfg.validate()
    if shift:
        shift_augment(shift)
    try:
        device = setup_device(cfg)
        data = build_train_data(cfg, array_dataset(x, y, [str(i) for i in range(9)]), str(device), need_test=False)
        trainer = Trainer(cfg, data, device)
        meta = model_meta(cfg, data)
        avg: dict[str, torch.Tensor] | None = None
        snaps = 0
        seconds = 0.0
        while trainer.epoch < cfg.epochs:
            seconds += trainer.train_epoch()["seconds"]
            if trainer.epoch > cfg.epochs - SNAPSHOTS:
                snaps += 1
                params = {k: v.detach().float().clone() for k, v in trainer.model.state_dict().items()}
                avg = params if avg is None else {k: avg[k] + params[k] for k in avg}
    finally:
        if shift:
            shift_augment.restore()  # type: ignore[attr-defined]
    model = trainer.model.eval()
    out = {"tta": predict_probs(model, meta, evals, tta=True), "plain": predict_probs(model, meta, evals)}
    views = [shifted(evals, dy, dx) for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))]
    out["tta-shift"] = np.mean([predict_probs(model, meta, v, tta=True) for v in views], axis=0)
    assert avg is not None
    swa = {k: (v / snaps).to(trainer.model.state_dict()[k].dtype) for k, v in avg.items()}
    model.load_state_dict(swa)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:  # BatchNorm statistics of the averaged weights: one pass over the augmented training tiles
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for pos in trainer.batches_of_epoch(cfg.epochs):
            model(trainer.prepare_batch(trainer.data.train.gather(pos), train=True))
    out["swa"] = predict_probs(model.eval(), meta, evals, tta=True)
    return {"probs": out, "seconds": seconds}


def run(args: argparse.Namespace) -> None:
    images, labels, test_x, test_y = load_sample()
    out = Path(args.out)
    done = {(r["candidate"], r["seed"], r["fold"]) for r in load(out)}
    base = base_config(args.threads)
    for seed in range(args.seeds):
        folds = fold_of(len(labels), args.folds, seed)
        for name in args.candidates.split(","):
            changes = dict(CANDIDATES[name])
            width, shift = changes.pop("width", 16), changes.pop("shift", 0)
            cfg = base.replace(seed=seed + changes.pop("seed_offset", 0), **changes)
            for k in range(args.folds):
                if (name, seed, k) in done:
                    continue
                tr, ho = folds != k, folds == k
                t0 = time.perf_counter()
                res = fit_and_read(cfg, width, shift, images[tr], labels[tr], np.concatenate([images[ho], test_x]))
                truth = np.concatenate([labels[ho], test_y])
                row = {
                    "candidate": name,
                    "seed": seed,
                    "fold": k,
                    "cv_n": int(ho.sum()),
                    "test_n": len(test_y),
                    "truth": truth.tolist(),
                    "seconds": round(res["seconds"], 2),
                    "wall": round(time.perf_counter() - t0, 2),
                    "probs": {r: np.round(p, 4).tolist() for r, p in res["probs"].items()},
                }
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            print(table(load(out), args.folds), flush=True)


def score(rows: list[dict], probs_of: Any) -> dict[str, float]:
    """cv, test and all (pooled as in noise_methods) of one seed's fold rows, with probabilities `probs_of(row)`."""
    cv_right = test_acc = 0.0
    for r in rows:
        right = np.asarray(probs_of(r)).argmax(1) == np.asarray(r["truth"])
        cv_right += right[: r["cv_n"]].sum()
        test_acc += right[r["cv_n"] :].mean() / len(rows)
    cv_n, test_n = sum(r["cv_n"] for r in rows), rows[0]["test_n"]
    return {"cv": cv_right / cv_n, "test": test_acc, "all": (cv_right + test_acc * test_n) / (cv_n + test_n)}


def table(rows: list[dict], folds: int = 6) -> str:
    by: dict[tuple[str, int], dict[int, dict]] = {}
    for r in rows:
        by.setdefault((r["candidate"], r["seed"]), {})[r["fold"]] = r
    full = {key: [fs[k] for k in range(folds)] for key, fs in by.items() if len(fs) == folds}
    seeds = sorted({s for _, s in full})
    lines = [
        "| candidate | readout | all: mean ± sd (seeds) | per seed | cv / test | time vs default |",
        "|---" * 6 + "|",
    ]

    def line(label: str, readout: str, per_seed: dict[int, dict[str, float]], ratio: str) -> None:
        if not per_seed:
            return
        a = [v["all"] for v in per_seed.values()]
        sd = np.std(a, ddof=1) if len(a) > 1 else 0.0
        cv = np.mean([v["cv"] for v in per_seed.values()])
        te = np.mean([v["test"] for v in per_seed.values()])
        each = " / ".join(f"{x:.3f}" for x in a)
        lines.append(
            f"| {label} | {readout} | {np.mean(a):.3f} ± {sd:.3f} ({len(a)}) | {each} | {cv:.3f} / {te:.3f} | {ratio} |"
        )

    for name in CANDIDATES:
        have = [s for s in seeds if (name, s) in full]
        if not have:
            continue
        base = [s for s in have if ("default", s) in full]
        ratio = "–"
        if base:
            t = sum(r["seconds"] for s in base for r in full[(name, s)])
            t0 = sum(r["seconds"] for s in base for r in full[("default", s)])
            ratio = f"{t / t0:.2f}"
        for readout in READOUTS:
            line(name, readout, {s: score(full[(name, s)], lambda r, ro=readout: r["probs"][ro]) for s in have}, ratio)
    for a, b in ENSEMBLES:
        have = [s for s in seeds if (a, s) in full and (b, s) in full]
        per = {
            s: score(
                [
                    {**ra, "probs": None, "p": np.add(ra["probs"]["tta"], rb["probs"]["tta"])}
                    for ra, rb in zip(full[(a, s)], full[(b, s)], strict=True)
                ],
                lambda r: r["p"],
            )
            for s in have
        }
        line(f"{a} + {b}", "tta, mean of the two", per, "sum of the two")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if not SAMPLE.exists():
        sys.exit(f"benchmarks/clean_default.py: {SAMPLE} not found (the shared real-data sample)")
    if not args.table_only:
        run(args)
    print(table(load(Path(args.out)), args.folds))


if __name__ == "__main__":
    main()
