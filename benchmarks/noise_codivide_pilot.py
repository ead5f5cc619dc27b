"""`codivide` variants and its control, on the protocol of benchmarks/noise_methods.py (40% fixed noise).

    python benchmarks/noise_codivide_pilot.py [--seeds 0,1,2] [--epochs 60] [--out /tmp/codivide.jsonl]
        [--pair-of codivide|ce] [--warmup F] [--split soft|hard] [--guess partner|both|own]
        [--refine partner|both|own] [--smooth EPS] [--temperature T] [--refit N] [--refit-momentum M]
        [--snapshots K] [--snapshot-gap G] [--augment-after-split NAME=VALUE,...] [--name NAME] [--only-folds 0,...]

`codivide` ships as a method (`python benchmarks/noise_methods.py --methods codivide` runs it,
`histo_core.training.codivide`); this script was its pilot. It trains the same `PairTrainer` (seeds s and s + 100,
the same batches and scoring: the pair's mean TTA probabilities) and measures what the method has no option for:
`--pair-of ce`, the control: the pair trained with plain CE and no split ("ce-pair"), what averaging two networks
alone gives; and the variants of benchmarks/RESULTS.md "Noise lab IV", by the knobs below. With every knob at its
default the row ("codivide") is the shipped method's (`--epochs` and `--warmup` are its --epochs and
--divide-warmup). The same flips, folds, recipe (resnet9) and scoring as noise_methods.py; rows go to --out in its
format (method "ce-pair", "codivide" or "codivide[knob=value,...]", every knob that differs from the default), so
its --table-only prints them; every finished fold is appended at once and skipped on a rerun.

The knobs. Network A's split comes from its partner B's predictions of the training tiles averaged over the
warm-up's window, p_B: w_i = 1 - P(label wrong) from `gmm_high_posterior` over 1 - p_B[i, y_i], w_i = 1 where B
agrees with the label. A's target is
  --split soft (the method): q_i = w_i * one_hot(y_i) + (1 - w_i) * g_i, g the --guess source (the method: p_B);
  --split hard: DivideMix's two sets at w_i > 0.5: the confident tiles q_i = w_i * one_hot(y_i) + (1 - w_i) * r_i,
      r the --refine source (DivideMix: own), the doubtful ones q_i = g_i (DivideMix's co-guessing: both);
  sources: partner = p_B, own = p_A (A's own averaged predictions), both = (p_A + p_B) / 2.
--smooth EPS: the confident tiles' (w_i > 0.5) targets mixed with the uniform distribution, (1 - EPS) q + EPS / K.
--temperature T: every target sharpened, q^(1/T) normalised. --refit N: after the split, both networks'
training-tile predictions (no TTA) are folded into running averages after every epoch (p <- M p + (1 - M) p_new,
M = --refit-momentum, from the window's mean) and the splits and targets refitted from them every N epochs.
--snapshots K: also score with the mean over K snapshots of the pair, taken every --snapshot-gap epochs back from
the last (each fold then gets two rows from one training: the final weights', named without the snapshot knobs,
and the snapshots'). --augment-after-split NAME=VALUE,...: from the epoch after the split on, both networks train
with these augmentation options added (`noise_methods.py --augment`'s syntax, e.g. `brightness=0.1,hue=0.02`);
the warm-up, whose predictions make the split, keeps the recipe's flips and rotations (Nishi et al. 2021: strong
augmentation for the loss, weak for the predictions that divide).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import noise_methods as nm  # noqa: E402

KNOBS = (
    "split", "guess", "refine", "smooth", "temperature", "refit", "refit_momentum", "snapshots", "snapshot_gap",
    "augment_after_split",
)  # fmt: skip
DEFAULTS: dict[str, Any] = {
    "split": "soft", "guess": "partner", "refine": "partner", "smooth": 0.0, "temperature": 1.0, "refit": 0,
    "refit_momentum": 0.9, "snapshots": 1, "snapshot_gap": 3, "augment_after_split": "", "warmup": 0.5, "epochs": 60,
}  # fmt: skip
TARGET_KNOBS = KNOBS[:7]  # the knobs that change the targets (the others leave `fit_split`'s)


def targets(own: np.ndarray, partner: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """One network's targets (N, K) from its own and its partner's averaged predictions, by the knobs (the module
    docstring). With every knob at its default: `Divide.fit_split` of the partner's predictions."""
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
    return np.asarray(q / q.sum(1, keepdims=True))


def set_targets(criterion: Any, q: np.ndarray, epoch: int) -> None:
    """Put targets q into a `Divide` criterion as its `fit_split` does (targets, class prior, fitted)."""
    import torch

    t = torch.from_numpy(q).float()
    criterion.targets.copy_(t)
    criterion.class_prior.copy_(t.mean(0))
    criterion.fitted.fill_(epoch)


def method_name(args: argparse.Namespace, **override: Any) -> str:
    """ "codivide" (or "ce-pair") and every knob that differs from its default, e.g. "codivide[epochs=80]"."""
    if args.name:
        return str(args.name)
    if args.pair_of == "ce":
        return "ce-pair" if args.epochs == DEFAULTS["epochs"] else f"ce-pair[epochs={args.epochs}]"
    knobs = {k: override.get(k, getattr(args, k)) for k in (*KNOBS, "warmup", "epochs")}
    if knobs["snapshots"] == 1:
        knobs["snapshot_gap"] = DEFAULTS["snapshot_gap"]
    diff = [f"{k}={v}" for k, v in knobs.items() if v != DEFAULTS[k]]
    return "codivide" + (f"[{','.join(diff)}]" if diff else "")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--only-folds", default="", help="run only these of the 6 folds, comma-separated (a check)")
    p.add_argument("--pair-of", choices=("codivide", "ce"), default="codivide")
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
    p.add_argument("--augment-after-split", default="", help="augmentation added after the split, NAME=VALUE,...")
    p.add_argument("--name", default="", help="the rows' method name (default: built from the knobs)")
    p.add_argument("--out", default="/tmp/codivide.jsonl")
    args = p.parse_args()
    if args.name and args.snapshots > 1:
        p.error("--name with --snapshots (two rows per fold) is not supported")
    return args


def main() -> None:
    import dataclasses

    from histo_core.config import TrainConfig, with_method
    from histo_core.noise import fixed_noise
    from histo_core.training.codivide import PairTrainer
    from histo_core.training.data import array_dataset, build_train_data, model_meta
    from histo_core.training.device import setup_device
    from histo_core.training.fit import predict_probs

    args = parse_args()
    if not nm.SAMPLE.exists():
        sys.exit(f"benchmarks/noise_codivide_pilot.py: {nm.SAMPLE} not found (the shared real-data sample)")
    name = method_name(args)
    divide = args.pair_of == "codivide"
    shipped = all(getattr(args, k) == DEFAULTS[k] for k in TARGET_KNOBS)
    after_split, _ = nm.augmentation(args.augment_after_split)
    out = Path(args.out)
    done = {(r["method"], r["seed"], r["fold"]) for r in nm.load(out)}
    images, clean, test_x, test_y = nm.load_sample()
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
    if divide:
        base = with_method(base, "codivide")
    keep = {base.epochs - i * args.snapshot_gap for i in range(args.snapshots)} if args.snapshots > 1 else set()
    for seed in [int(s) for s in args.seeds.split(",")]:
        noisy, flipped = fixed_noise(clean, 0.4, 9, seed, "fixed")
        folds = nm.fold_of(len(clean), 6, seed)
        for k in [int(f) for f in args.only_folds.split(",")] if args.only_folds else range(6):
            if (name, seed, k) in done:
                continue
            tr, ho = folds != k, folds == k
            labels = noisy[tr]
            t0 = time.perf_counter()
            cfg = base.replace(seed=seed).validate()
            device = setup_device(cfg)
            data = build_train_data(cfg, array_dataset(images[tr], labels, classes), str(device), need_test=False)
            pair = PairTrainer(cfg, data, device)
            nets = pair.nets
            last = nets[0].criterion.window(cfg.epochs)[1] if divide else -1  # type: ignore[operator]
            avg: list[np.ndarray] = []
            snaps: list[list[dict]] = [[], []]
            relabelled: list[int] = []
            while pair.epoch < cfg.epochs:
                epoch = pair.train_epoch()["epoch"]  # the crossed split is fitted inside, after epoch `last`
                if epoch == last:
                    # network j's loss summed its partner's predictions: the pair's averaged predictions
                    avg = [(n.criterion.prob_sum / int(n.criterion.observed)).numpy() for n in nets[::-1]]
                    for j, t in enumerate(nets):
                        if not shipped:
                            set_targets(t.criterion, targets(avg[j], avg[1 - j], labels, args), epoch)
                        relabelled.append(int((t.criterion.targets.argmax(1).numpy() != labels).sum()))
                        if after_split:
                            t.config = t.config.replace(augment=dataclasses.replace(t.config.augment, **after_split))
                elif divide and args.refit > 0 and epoch > last:
                    m = args.refit_momentum
                    avg = [m * a + (1.0 - m) * t.predict(t.data.train) for a, t in zip(avg, nets)]
                    if (epoch - last) % args.refit == 0:
                        for j, t in enumerate(nets):
                            set_targets(t.criterion, targets(avg[j], avg[1 - j], labels, args), epoch)
                if epoch in keep:
                    for j, t in enumerate(nets):
                        snaps[j].append(copy.deepcopy(t.model.state_dict()))
            seconds = time.perf_counter() - t0
            meta = model_meta(cfg, data)
            wrong = [int((t.criterion.targets.argmax(1).numpy() != clean[tr]).sum()) for t in nets] if divide else []
            # scored with the final weights and, with --snapshots K, also with the mean over the K snapshots
            scored: dict[str, list[Any]] = {method_name(args, snapshots=1): [None]}
            if keep:
                scored[name] = list(zip(*snaps))
            for method, states in scored.items():
                if (method, seed, k) in done:
                    continue
                p_ho: Any = 0.0
                p_te: Any = 0.0
                for state in states:
                    if state is not None:
                        for t, s in zip(nets, state):
                            t.model.load_state_dict(s)
                    p_ho = p_ho + predict_probs(pair.model.eval(), meta, images[ho], tta=True)
                    p_te = p_te + predict_probs(pair.model.eval(), meta, test_x, tta=True)
                row = {
                    "method": method,
                    "noise": 0.4,
                    "seed": seed,
                    "fold": k,
                    "arch": "resnet9",
                    "epochs": cfg.epochs,
                    "cv_right": int((np.asarray(p_ho).argmax(1) == clean[ho]).sum()),
                    "cv_n": int(ho.sum()),
                    "test_right": int((np.asarray(p_te).argmax(1) == test_y).sum()),
                    "test_n": len(test_y),
                    "flipped_in_train": int(flipped[tr].sum()),
                    "seconds": round(seconds, 2),
                    "knobs": {k2: getattr(args, k2) for k2 in (*KNOBS, "warmup", "epochs", "pair_of")},
                    "targets_wrong": wrong,  # per network: training tiles whose final target's argmax != the truth
                    "relabelled": relabelled,  # per network at the split: targets whose argmax != the noisy label
                }
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(
                    f"{method} seed {seed} fold {k}: held out {row['cv_right']}/{row['cv_n']}, test "
                    f"{row['test_right']}/40, wrong targets {wrong}, {seconds:.0f} s",
                    flush=True,
                )
        print(nm.table(nm.load(out)), flush=True)


if __name__ == "__main__":
    main()
