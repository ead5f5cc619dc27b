"""Build the model shipped in weights/: trained on all 240 real PathMNIST tiles of ../shared/data, with its card.

    python benchmarks/ship_model.py                      # writes weights/pathmnist-resnet9.pt and .json
    python benchmarks/ship_model.py --folds 6 --stain-norm macenko --name pathmnist-resnet9

Steps (all in-process, 2 CPU cores: about 3 minutes on an idle machine, 2026-11-23):
1. k-fold cross-validation over the 240 tiles with the recipe (`default_config` for the file, plus the
   options given): out-of-fold predictions give the cross-validated accuracy and calibrate the "unlike the
   training tiles" confidence threshold (the tiles a model never saw), and each fold's model scores its
   held-out tiles against its own training tiles' features: the 95th percentile of those out-of-fold scores
   (scaled per model by its training tiles' median, so they transfer) is the feature check's threshold.
2. One model trained on all 240 tiles with the same recipe.
3. weights/<name>.pt (the checkpoint format) and weights/<name>.json (the model card): dataset, classes, tile
   size, field of view, normalisation, stain reference, recipe, cross-validated accuracy, and the real-tile
   figures of benchmarks/real_tiles.py (in-domain and other labs) measured on the saved file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
NPZ = ROOT.parent / "shared" / "data" / "pathmnist-mini" / "pathmnist.npz"


def all_tiles() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from histo_core.datasets import open_dataset

    ds = open_dataset(str(NPZ))
    parts = [ds.split(s) for s in ("train", "val", "test")]
    images = np.concatenate([np.asarray(p.get(np.arange(len(p)))) for p in parts])
    labels = np.concatenate([np.asarray(p.labels) for p in parts]).astype(np.int64)
    return images, labels, list(ds.info.classes)


def recipe(stain_norm: str, stain_jitter: float, seed: int):
    from histo_core.training import default_config

    cfg = default_config(str(NPZ), device="cpu")
    cfg.stain_norm, cfg.augment.stain_jitter, cfg.seed = stain_norm, stain_jitter, seed
    return cfg.validate()


def feature_check(stain_norm: str) -> tuple[str, Callable]:
    """The flag's feature check for a recipe: its calibration key and how its features are taken. With stain
    normalisation, the input-feature check ("input_feature": the tiles as given, `input_layer_features`), else
    the feature check ("feature": as the model sees them, `layer_features`); histo_core.ood.flag_checks."""
    from histo_core import ood_features

    if stain_norm != "none":
        return "input_feature", ood_features.input_layer_features
    return "feature", ood_features.layer_features


def cross_validate(cfg, images, labels, classes, folds: int, used: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities, and out-of-fold scores of the "unlike the training tiles" feature check
    (`feature_check`: on the tiles as given with stain normalisation; each fold's model, fitted on its own
    training tiles, scoring the tiles it never saw). With `used`, only the first `used` folds are trained (the
    other tiles' scores are NaN)."""
    from sklearn.model_selection import StratifiedKFold

    from histo_core import ood_features
    from histo_core.predict import InputSpec
    from histo_core.training import fit_arrays, predict_probs

    oof = np.zeros((len(labels), len(classes)), np.float32)
    oof_scores = np.full(len(labels), np.nan)
    _, features = feature_check(cfg.stain_norm)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    for k, (tr, te) in enumerate(splitter.split(images, labels)):
        if used is not None and k >= used:
            break
        t0 = time.time()
        model, meta = fit_arrays(cfg, images[tr], labels[tr], classes=classes)
        oof[te] = predict_probs(model, meta, images[te], tta=cfg.tta)
        spec = InputSpec.of(meta)
        stats = ood_features.fit_features(
            features(model, images[tr], spec), labels[tr], ood_features.feature_stage(model)
        )
        oof_scores[te] = ood_features.feature_scores(stats, features(model, images[te], spec))
        acc = float((oof[te].argmax(1) == labels[te]).mean())
        print(f"fold {k + 1}/{folds}: accuracy {acc:.3f} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return oof, oof_scores


def combined_threshold(calibration: dict, stain_ref, images, oof, oof_scores, split: str) -> dict | None:
    """The flag's one threshold (histo_core.ood.calibrate_combined) from the out-of-fold tiles (those with a
    feature score): their out-of-fold probabilities and feature scores (of the input-feature check with
    stain normalisation), and their colours as the shipped model sees them."""
    from histo_core import ood, pipeline, stain

    held = ~np.isnan(oof_scores)
    given = pipeline.to_float01(images[held], "cpu")
    combined = ood.combined_scores(
        calibration,
        oof[held],
        stain.normalize_batch(given, stain_ref),
        given if stain_ref else None,
        **{"input_feature_scores_" if stain_ref else "feature_scores_": oof_scores[held]},
    )
    return ood.calibrate_combined(combined, split, ood.flag_checks(calibration))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="pathmnist-resnet9")
    ap.add_argument("--folds", type=int, default=6)
    ap.add_argument("--stain-norm", default="macenko", choices=("none", "macenko", "reinhard"))
    ap.add_argument("--stain-jitter", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights-dir", default=str(ROOT / "weights"))
    ap.add_argument(
        "--recalibrate",
        type=int,
        default=0,
        metavar="K",
        help="keep the shipped weights; only re-calibrate the flag's feature check from the first K folds",
    )
    args = ap.parse_args()
    if not NPZ.exists():
        raise SystemExit(f"{NPZ} is absent: the 240 real PathMNIST tiles are needed")
    if args.recalibrate:
        recalibrate(args)
        return

    import torch

    from histo_core import ood, pipeline, stain
    from histo_core.checkpoint import save_checkpoint
    from histo_core.fsutil import write_json_atomic
    from histo_core.training import fit_arrays

    images, labels, classes = all_tiles()
    cfg = recipe(args.stain_norm, args.stain_jitter, args.seed)
    oof, oof_scores = cross_validate(cfg, images, labels, classes, args.folds)
    cv_acc = float((oof.argmax(1) == labels).mean())
    print(f"{args.folds}-fold cross-validated accuracy: {cv_acc:.3f}", file=sys.stderr)

    model, meta = fit_arrays(cfg, images, labels, classes=classes)
    given = pipeline.to_float01(images, "cpu")
    seen = stain.normalize_batch(given, meta.get("stain"))
    calibration = ood.calibrate(
        seen,
        oof,
        f"{args.folds}-fold out-of-fold",
        input_features=ood.colour_features(given) if meta.get("stain") else None,
    )
    from histo_core.predict import InputSpec

    split = f"{args.folds}-fold out-of-fold"
    calibration.update(
        feature_calibration(model, InputSpec.of(meta), cfg.stain_norm, images, labels, oof_scores, split)
    )
    calibration["combined"] = combined_threshold(calibration, meta.get("stain"), images, oof, oof_scores, split)
    meta["dataset"] = {
        "name": "pathmnist",
        "title": "PathMNIST (real tiles of pathmnist-mini, 28 px)",
        "source": "medmnist",
        "synthetic": False,
        "size": int(images.shape[1]),
        "channels": 3,
        "extra": {"flag": "pathmnist", "native_tile_px": 224, "mpp": 0.5},
    }
    out_dir = Path(args.weights_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pt = out_dir / f"{args.name}.pt"
    config = cfg.to_dict()
    save_checkpoint(
        pt,
        model,
        meta,
        ood=calibration,
        export={"name": args.name, "run_id": None, "shipped": True},
        metrics={"cv_accuracy": cv_acc},
    )

    import real_tiles

    real = real_tiles.measure(str(pt))["groups"]
    card = {
        "card_version": 2,
        "name": args.name,
        "file": pt.name,
        "shipped": True,
        "arch": meta["arch"],
        "classes": classes,
        "num_classes": len(classes),
        "input_size": int(meta["input_size"]),
        "in_channels": int(meta["in_channels"]),
        "mean": meta["mean"],
        "std": meta["std"],
        "tta": bool(cfg.tta),
        "field_of_view": {
            "source_tile_px": 224,
            "um_per_px": 0.5,
            "field_um": 112.0,
            "note": "PathMNIST tiles are NCT-CRC-HE 224 px tiles at 0.5 µm/px shrunk to 28 px",
        },
        "stain": meta.get("stain"),
        "dataset": {
            "name": "pathmnist",
            "title": meta["dataset"]["title"],
            "source": "medmnist",
            "synthetic": False,
            "file": "../shared/data/pathmnist-mini/pathmnist.npz",
            "tiles": int(len(labels)),
            "licence": "CC BY 4.0 (PathMNIST / NCT-CRC-HE-100K)",
        },
        "training": {
            "recipe": "default_config for the file, trained on all 240 tiles (train+val+test)",
            "config": config,
            "seed": args.seed,
            "command": f"python benchmarks/ship_model.py --name {args.name} --folds {args.folds} "
            f"--stain-norm {args.stain_norm} --stain-jitter {args.stain_jitter} --seed {args.seed}",
        },
        "metrics": {"cv_accuracy": cv_acc, "cv_folds": args.folds, "test_accuracy": None, "test_auc": None},
        "real_tiles": {
            k: {
                "correct": v["correct"],
                "n": v["n"],
                "flagged_unlike_training": v["flagged"],
                **(
                    {"note": "these 40 tiles are among the 240 the model was trained on"}
                    if k == "pathmnist-test"
                    else {}
                ),
            }
            for k, v in real.items()
        },
        "ood": ood.calibration_summary(calibration),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out_dir / f"{args.name}.json", card)
    print(json.dumps({"weights": str(pt), "cv_accuracy": cv_acc, "real_tiles": card["real_tiles"]}, indent=2))
    del torch


def feature_calibration(model, spec, stain_norm: str, images, labels, oof_scores, split: str) -> dict:
    """The shipped model's feature check (`feature_check`: the input-feature check with stain normalisation), as
    {key: calibration}: its statistics on all the tiles, the threshold from the out-of-fold scores."""
    from histo_core import ood_features

    key, features = feature_check(stain_norm)
    calibration = ood_features.calibrate_features(
        features(model, images, spec),
        None,
        split,
        heldout_scores=oof_scores[~np.isnan(oof_scores)],
        labels=labels,
        stage=ood_features.feature_stage(model),
    )
    return {key: calibration}


def recalibrate(args) -> None:
    """Add (or replace) the feature check and the one threshold of the "unlike the training tiles" flag in a
    shipped model's checkpoint and card, keeping its weights: the first `args.recalibrate` folds of the same
    cross-validation (same recipe, seed and splits) give out-of-fold probabilities and feature scores (of the
    input-feature check with stain normalisation, `feature_check`); the shipped model's own statistics come
    from all 240 tiles."""
    from histo_core import ood
    from histo_core.checkpoint import load_checkpoint
    from histo_core.fsutil import torch_save_atomic, write_json_atomic
    from histo_core.model_cache import load_model
    from histo_core.predict import InputSpec

    pt = Path(args.weights_dir) / f"{args.name}.pt"
    card_path = pt.with_suffix(".json")
    ckpt = load_checkpoint(pt)
    images, labels, classes = all_tiles()
    stain_norm = (ckpt.get("stain") or {}).get("method") or "none"
    cfg = recipe(stain_norm, args.stain_jitter, args.seed)
    oof, oof_scores = cross_validate(cfg, images, labels, classes, args.folds, used=args.recalibrate)
    held = oof_scores[~np.isnan(oof_scores)]
    loaded = load_model(str(pt))
    split = f"{args.recalibrate} of {args.folds} folds out-of-fold ({len(held)} tiles)"
    feature = feature_calibration(
        loaded.model, InputSpec.of(loaded.meta), stain_norm, images, labels, oof_scores, split
    )
    recalibrated = ("combined", "feature", "input_feature")  # set here and below
    kept = {k: v for k, v in (ckpt.get("ood") or {}).items() if k not in recalibrated}
    ckpt["ood"] = {**kept, **feature}
    ckpt["ood"]["combined"] = combined_threshold(ckpt["ood"], ckpt.get("stain") or None, images, oof, oof_scores, split)
    torch_save_atomic(pt, ckpt)
    import real_tiles

    real = real_tiles.measure(str(pt))["groups"]
    card = json.loads(card_path.read_text())
    card["ood"] = ood.calibration_summary(ckpt["ood"])
    for k, v in real.items():
        if k in card.get("real_tiles", {}):
            card["real_tiles"][k].update(correct=v["correct"], flagged_unlike_training=v["flagged"])
    card["ood_recalibrated"] = {
        "command": f"python benchmarks/ship_model.py --name {args.name} --folds {args.folds} "
        f"--recalibrate {args.recalibrate} --seed {args.seed}",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(card_path, card)
    print(
        json.dumps(
            {
                "weights": str(pt),
                **{f"{k}_threshold": v.get("threshold") for k, v in feature.items()},
                "combined": ckpt["ood"]["combined"],
                "real_tiles": real,
            }
        )
    )


if __name__ == "__main__":
    main()
