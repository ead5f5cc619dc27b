"""Stain recipes compared in-process on the real tiles: what a Macenko-normalised view buys, and when.

    python benchmarks/stain_recipes.py [--seeds 0 1 2] [--json]

Trains the default recipe (`default_config` for pathmnist-mini: resnet9, flips/rot90, 8-view TTA; 60 epochs
for the figures in RESULTS.md, 90 since the small-set default changed on 2026-12-07)
with `fit_arrays` on the 200 train+val tiles of ../shared/data/pathmnist-mini/pathmnist.npz, three ways, and
scores every group of benchmarks/real_tiles.py (the tiles go through `prepare_upload`, as in `predict`):

  plain         raw tiles in training and at inference (today's default)
  macenko       Macenko (the current version) on every tile, training and inference (`--stain-norm macenko`)
  mixed         each training tile twice, raw and Macenko-normalised (30 epochs over the doubled set: the
                same number of steps); at inference the raw view, the normalised view, their mean, or
                "gated": the normalised view only for tiles whose raw-view features are far from the
                training tiles' (mean cosine distance to the 5 nearest training tiles above the q-quantile
                of the training tiles' own leave-one-out distances)

An experiment, not a shipped option: benchmarks/RESULTS.md ("Stain recipes") says what the numbers showed.
About 70 s per seed on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_tiles import SHARED, tile_groups  # noqa: E402

NPZ = SHARED / "pathmnist-mini" / "pathmnist.npz"
GATE_QUANTILES = (0.8, 0.9, 0.95)
K = 5


def load_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from histo_core.datasets import open_dataset
    from histo_core.model_cache import load_model
    from histo_core.uploads import prepare_upload

    ds = open_dataset(str(NPZ))

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        part = ds.split(name)
        return np.asarray(part.get(np.arange(len(part)))), np.asarray(part.labels).astype(np.int64)

    (xa, ya), (xb, yb) = split("train"), split("val")
    # the shipped plain model's meta: 28 px input and PathMNIST's field of view, as `predict` uses them
    meta = load_model(str(ROOT / "weights" / "pathmnist-resnet9.pt")).meta
    groups = tile_groups()

    def uploads(items: list) -> tuple[np.ndarray, np.ndarray]:
        tiles = [prepare_upload(p.read_bytes(), str(p), meta).tile for p, _ in items]
        return np.stack(tiles), np.array([y for _, y in items])

    return {
        "train": (np.concatenate([xa, xb]), np.concatenate([ya, yb])),
        "pathmnist-test": split("test"),
        "in-domain-224": uploads(groups["in-domain-224"]),
        "nonorm": uploads(groups["nonorm"]),
        "kather2016": uploads(groups["kather2016"]),
    }


def seeded_config(seed: int):
    """The default recipe for pathmnist-mini (`default_config`) with `seed`, validated."""
    from histo_core.training import default_config

    cfg = default_config(str(NPZ), device="cpu")
    cfg.seed = seed
    return cfg.validate()


def score(label: str, seed: int, sets: dict, probs: dict[str, np.ndarray], **extra) -> dict:
    """One result row: correct tiles per group of `sets` (name -> (tiles, labels)) and other-lab, with `extra`
    fields; also printed as one line to stderr."""
    r = {"recipe": label, "seed": seed, **extra}
    r.update({k: int((probs[k].argmax(1) == sets[k][1]).sum()) for k in sets})
    r["other-lab"] = r["nonorm"] + r["kather2016"]
    cells = " ".join(f"{k} {r[k]}/{len(sets[k][1])}" for k in sets)
    print(f"{label:24s} seed {seed}: {cells} other-lab {r['other-lab']}/30", file=sys.stderr, flush=True)
    return r


def setup() -> tuple[dict, tuple[np.ndarray, np.ndarray], dict]:
    """Start of a stain experiment: the real tiles present, 2 torch threads, the groups of `load_sets`, the
    200 training tiles and their Macenko reference."""
    if not NPZ.is_file():
        raise SystemExit(f"{NPZ} is absent: the real sample tiles are needed")
    import torch

    from histo_core import stain

    torch.set_num_threads(2)
    sets = load_sets()
    xtr, ytr = sets.pop("train")
    return sets, (xtr, ytr), stain.fit_reference("macenko", xtr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from histo_core import stain
    from histo_core.predict import InputSpec, predict_tiles
    from histo_core.similar import cosine_knn
    from histo_core.training import fit_arrays, predict_probs

    sets, (xtr, ytr), ref = setup()
    normed = {k: stain.normalize_uint8(x, ref) for k, (x, _) in sets.items()}
    ntr = stain.normalize_uint8(xtr, ref)
    classes = [str(i) for i in range(9)]
    rows = []

    def row(recipe: str, seed: int, probs: dict[str, np.ndarray], **extra) -> None:
        rows.append(score(recipe, seed, sets, probs, **extra))

    for seed in args.seeds:
        cfg = seeded_config(seed)
        model, meta = fit_arrays(cfg, xtr, ytr, classes=classes)
        row("plain", seed, {k: predict_probs(model, meta, x, tta=True) for k, (x, _) in sets.items()})
        model, meta = fit_arrays(cfg, ntr, ytr, classes=classes)
        row("macenko", seed, {k: predict_probs(model, meta, normed[k], tta=True) for k in sets})
        model, meta = fit_arrays(
            cfg, np.concatenate([xtr, ntr]), np.concatenate([ytr, ytr]), classes=classes, epochs=cfg.epochs // 2
        )
        raw = {k: predict_probs(model, meta, x, tta=True) for k, (x, _) in sets.items()}
        norm = {k: predict_probs(model, meta, normed[k], tta=True) for k in sets}
        row("mixed, raw view", seed, raw)
        row("mixed, normalised view", seed, norm)
        row("mixed, mean of both", seed, {k: (raw[k] + norm[k]) / 2 for k in sets})

        spec = InputSpec.of(meta)
        feats = {k: predict_tiles(model, x, spec, features=True)[1] for k, (x, _) in sets.items()}
        ref_feats = predict_tiles(model, xtr, spec, features=True)[1]
        own = cosine_knn(ref_feats, ref_feats, K, exclude_self=np.arange(len(xtr)))[1].mean(1)
        dist = {k: cosine_knn(ref_feats, feats[k], K)[1].mean(1) for k in sets}
        for q in GATE_QUANTILES:
            far = {k: dist[k] > np.quantile(own, q) for k in sets}
            gated = {k: np.where(far[k][:, None], norm[k], raw[k]) for k in sets}
            row(f"mixed, gated q{q}", seed, gated, normalised={k: int(v.sum()) for k, v in far.items()})
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
