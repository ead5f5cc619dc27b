"""Pilot, not a shipped method: `divide` with two networks that divide for each other (DivideMix's co-divide).

    python benchmarks/noise_codivide_pilot.py [--seeds 0,1,2] [--pair-of ce] [--epochs 60] [--out /tmp/codivide.jsonl]
        [--split soft|hard] [--guess partner|both|own] [--refine partner|both|own] [--smooth EPS] [--temperature T]
        [--refit N] [--refit-momentum M] [--snapshots K] [--snapshot-gap G] [--warmup F] [--name NAME]

The protocol of benchmarks/noise_methods.py (the same flips, folds, recipe and scoring; resnet9, 60 epochs, 40%
fixed noise): for each fold two networks (seeds s and s + 100) train with the `divide` loss, but each one's
split and targets are fitted from the OTHER network's predictions averaged over the warm-up's second half, so
neither trains on its own guesses; scored with the two networks' mean TTA probabilities. `--pair-of ce` trains
the same pair with plain CE and no split: the control for what averaging two networks alone gives. Rows go to
--out in noise_methods.py's format (method "codivide" or "ce-pair"), so its --table-only prints them. About
twice the time of one run. Results: benchmarks/RESULTS.md, "Noise lab III" (the pilot, every knob at its
default) and "Noise lab IV" (the knobs below).

The knobs (defaults = the Noise lab III pilot). Network A's split always comes from its partner B's averaged
predictions p_B: w_i = 1 - P(label wrong) from `gmm_high_posterior` over 1 - p_B[i, y_i], w_i = 1 where B agrees
with the label. Then A's target is
  --split soft: q_i = w_i * one_hot(y_i) + (1 - w_i) * g_i, g = the --guess source (the pilot: g = p_B);
  --split hard: DivideMix's two sets at w_i > 0.5: the confident tiles q_i = w_i * one_hot(y_i) + (1 - w_i) * r_i,
      r = the --refine source (DivideMix: own), the doubtful ones q_i = g_i (DivideMix's co-guessing: both);
  sources: partner = p_B, own = p_A (A's own averaged predictions), both = (p_A + p_B) / 2.
--smooth EPS: the confident tiles' (w_i > 0.5) targets mixed with the uniform distribution, (1 - EPS) q + EPS / K.
--temperature T: every target sharpened, q^(1/T) normalised. --refit N: after the split, both networks'
training-tile predictions (no TTA) are folded into their running averages after every epoch (p <- M p + (1 - M)
p_new, M = --refit-momentum, starting from the warm-up's mean) and the splits and targets refitted from them every N
epochs. --snapshots K: score with the mean over both networks and K snapshots of each, taken every
--snapshot-gap epochs back from the last (each fold then also gets a row scored with the final
weights alone, under the name without the snapshot knobs: one training, two rows). --warmup: the `divide` warm-up fraction (window = its second half).
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

KNOBS = ("split", "guess", "refine", "smooth", "temperature", "refit", "refit_momentum", "snapshots", "snapshot_gap")
DEFAULTS = {
    "split": "soft", "guess": "partner", "refine": "partner", "smooth": 0.0, "temperature": 1.0, "refit": 0,
    "refit_momentum": 0.9, "snapshots": 1, "snapshot_gap": 3, "warmup": 0.5, "epochs": 60,
}  # fmt: skip


def targets(
    own: np.ndarray, partner: np.ndarray, labels: np.ndarray, args: argparse.Namespace
) -> tuple[np.ndarray, np.ndarray]:
    """(targets (N, K), clean probability w (N,)) of one network from its own and its partner's averaged
    predictions, by the knobs (the module docstring)."""
    import torch

    from histo_core.losses import gmm_high_posterior

    def norm(p: np.ndarray) -> np.ndarray:
        p = np.clip(p.astype(np.float64), 1e-7, None)
        return p / p.sum(1, keepdims=True)

    pa, pb = norm(own), norm(partner)
    n, k = pb.shape
    y = labels.astype(np.int64)
    d = gmm_high_posterior(torch.from_numpy(1.0 - pb[np.arange(n), y])).double().numpy()
    w = np.where(pb.argmax(1) == y, 1.0, 1.0 - d)[:, None]
    src = {"partner": pb, "own": pa, "both": (pa + pb) / 2}
    onehot = np.eye(k)[y]
    if args.split == "soft":
        q = w * onehot + (1.0 - w) * src[args.guess]
    else:
        q = np.where(w > 0.5, w * onehot + (1.0 - w) * src[args.refine], src[args.guess])
    clean = (w > 0.5).ravel()
    q[clean] = (1.0 - args.smooth) * q[clean] + args.smooth / k
    q = q ** (1.0 / args.temperature)
    return q / q.sum(1, keepdims=True), w.ravel()


def set_targets(criterion: object, q: np.ndarray, epoch: int) -> None:
    """Put targets q into a `Divide` criterion, as its own `fit_split` does (targets, class prior, fitted)."""
    import torch

    t = torch.from_numpy(q).float()
    criterion.targets.copy_(t)  # type: ignore[attr-defined]
    criterion.class_prior.copy_(t.mean(0))  # type: ignore[attr-defined]
    criterion.fitted.fill_(epoch)  # type: ignore[attr-defined]


def method_name(args: argparse.Namespace, **override: object) -> str:
    """ "codivide" (or "ce-pair") plus every knob that differs from the pilot's default, e.g. codivide[guess=both]."""
    if args.name:
        return str(args.name)
    base = "codivide" if args.pair_of == "divide" else "ce-pair"
    knobs = {k: override.get(k, getattr(args, k)) for k in (*KNOBS, "warmup", "epochs")}
    if knobs["snapshots"] == 1:
        knobs["snapshot_gap"] = DEFAULTS["snapshot_gap"]
    diff = [f"{k}={v}" for k, v in knobs.items() if v != DEFAULTS[k]]
    return base + (f"[{','.join(diff)}]" if diff else "")


def main() -> None:
    import copy

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
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--warmup", type=float, default=DEFAULTS["warmup"])
    p.add_argument("--split", choices=("soft", "hard"), default=DEFAULTS["split"])
    p.add_argument("--guess", choices=("partner", "both", "own"), default=DEFAULTS["guess"])
    p.add_argument("--refine", choices=("partner", "both", "own"), default=DEFAULTS["refine"])
    p.add_argument("--smooth", type=float, default=DEFAULTS["smooth"])
    p.add_argument("--temperature", type=float, default=DEFAULTS["temperature"])
    p.add_argument("--refit", type=int, default=DEFAULTS["refit"])
    p.add_argument("--refit-momentum", type=float, default=DEFAULTS["refit_momentum"])
    p.add_argument("--snapshots", type=int, default=DEFAULTS["snapshots"])
    p.add_argument("--snapshot-gap", type=int, default=DEFAULTS["snapshot_gap"])
    p.add_argument("--name", default="", help="the rows' method name (default: built from the knobs)")
    p.add_argument("--out", default="/tmp/codivide.jsonl")
    args = p.parse_args()
    if not nm.SAMPLE.exists():
        sys.exit(f"benchmarks/noise_codivide_pilot.py: {nm.SAMPLE} not found (the shared real-data sample)")
    name = method_name(args)
    pilot = all(getattr(args, k) == DEFAULTS[k] for k in KNOBS if k not in ("snapshots", "snapshot_gap"))
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
        divide_warmup=args.warmup,
    )
    base = with_method(base, args.pair_of)
    keep = {base.epochs - i * args.snapshot_gap for i in range(args.snapshots)}
    for seed in [int(s) for s in args.seeds.split(",")]:
        noisy, flipped = fixed_noise(clean, 0.4, 9, seed, "fixed")
        folds = nm.fold_of(len(clean), 6, seed)
        for k in range(6):
            if (name, seed, k) in done:
                continue
            if args.name and args.snapshots > 1:
                sys.exit(
                    "benchmarks/noise_codivide_pilot.py: --name with --snapshots (two rows per fold) is not supported"
                )
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
            divide = args.pair_of == "divide"
            first, last = nets[0].criterion.window(base.epochs) if divide else (0, -1)
            labels = noisy[tr]
            sums: list[torch.Tensor] = []
            avg: list[np.ndarray] = []
            snaps: list[list[dict]] = [[], []]
            split_stats: list[int] = []
            for epoch in range(1, base.epochs + 1):
                for t in nets:
                    t.criterion.wants_predictions = lambda done, total: False  # the pair observes below, crossed
                    t.train_epoch()
                if first <= epoch <= last:
                    probs = [torch.from_numpy(t.predict(t.data.train)) for t in nets]
                    sums = probs if not sums else [a + b for a, b in zip(sums, probs)]
                if epoch == last:
                    avg = [(x / (last - first + 1)).numpy() for x in sums]
                    for j, t in enumerate(nets):
                        if pilot:  # the Noise lab III pilot exactly
                            t.criterion.fit_split(sums[1 - j] / (last - first + 1), t.data.train_labels, epoch)
                        else:
                            q, w = targets(avg[j], avg[1 - j], labels, args)
                            set_targets(t.criterion, q, epoch)
                        split_stats.append(int((t.criterion.targets.argmax(1).numpy() != labels).sum()))
                elif divide and args.refit > 0 and epoch > last:
                    probs_np = [t.predict(t.data.train) for t in nets]
                    m = args.refit_momentum
                    avg = [m * a + (1.0 - m) * b for a, b in zip(avg, probs_np)]
                    if (epoch - last) % args.refit == 0:
                        for j, t in enumerate(nets):
                            q, w = targets(avg[j], avg[1 - j], labels, args)
                            set_targets(t.criterion, q, epoch)
                if epoch in keep and args.snapshots > 1:
                    for j, t in enumerate(nets):
                        snaps[j].append(copy.deepcopy(t.model.state_dict()))
            seconds = time.perf_counter() - t0
            metas = [model_meta(t.config, t.data) for t in nets]
            # scored with the final weights, and with --snapshots K also with the K snapshots: one row each
            scored = {name: [[None], [None]]}
            if args.snapshots > 1:
                scored = {method_name(args, snapshots=1): [[None], [None]], name: snaps}
            targets_wrong = (
                [int((t.criterion.targets.argmax(1).numpy() != clean[tr]).sum()) for t in nets] if divide else []
            )
            for method, states in scored.items():
                if (method, seed, k) in done:
                    continue
                p_ho: np.ndarray | float = 0.0
                p_te: np.ndarray | float = 0.0
                for j, (t, meta) in enumerate(zip(nets, metas)):
                    for state in states[j]:
                        if state is not None:
                            t.model.load_state_dict(state)
                        p_ho = p_ho + predict_probs(t.model.eval(), meta, images[ho], tta=True)
                        p_te = p_te + predict_probs(t.model.eval(), meta, test_x, tta=True)
                row = {
                    "method": method,
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
                    "knobs": {k2: getattr(args, k2) for k2 in (*KNOBS, "warmup", "epochs", "pair_of")},
                    "targets_wrong": targets_wrong,  # per network: training tiles whose final target's argmax != truth
                    "relabelled": split_stats,  # per network at the split: targets whose argmax != the noisy label
                }
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(
                    f"{method} seed {seed} fold {k}: cv {row['cv_right']}/{row['cv_n']} test {row['test_right']}/40 "
                    f"targets wrong {targets_wrong} {seconds:.0f}s",
                    flush=True,
                )
        print(nm.table(nm.load(out)), flush=True)


if __name__ == "__main__":
    main()
