"""How often the "unlike the training tiles" flag (histo_core.ood) fires, per sample set of ../shared/data.

    python benchmarks/ood_flag.py                         # the shipped models + a run trained here
    python benchmarks/ood_flag.py weights/x.pt RUN_ID     # given models (and a run trained here)
    python benchmarks/ood_flag.py --no-train ...          # given models only
    python benchmarks/ood_flag.py --heldout RUN --heldout-only   # only a run trained on the train split

Every image goes through the Classify page's path (uploads.classify_uploads: decoding, field of view,
stain normalisation, every check of the flag), with the microns per pixel unknown, as an upload would be.

Sample sets:
- in-domain (the flag should stay quiet, under 10%): the 13 CRC-VAL-HE-7K tiles (the source of PathMNIST's
  test split), and the 40 pathmnist-mini test tiles for a model that did not train on them: a run trained
  here on the 160 train tiles, calibrated on the 40 val tiles (the shipped models trained on all 240 tiles).
- another organ or no tissue (the flag should fire on most): the 8 BreaKHis breast images, and the skin slide
  region CMU-1-Small-Region.svs cut into 224 px tiles (0.5 µm/px: the field of view of a PathMNIST tile),
  each tile as a PNG upload.
- other labs, same organ (report only): the 9 NCT-CRC-HE-100K-NONORM tiles and the 32 Kather 2016 tiles.

Prints one table (rows: sample sets; columns: models) of "flagged / n (%)" and the median score (1.0 or more
is flagged), or JSON with --json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
TILES = SHARED / "tiles"
SLIDE = SHARED / "slides" / "CMU-1-Small-Region.svs"
NPZ = SHARED / "pathmnist-mini" / "pathmnist.npz"
SHIPPED = ["weights/pathmnist-resnet9.pt", "weights/pathmnist-resnet9-macenko.pt"]
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
GROUPS = {  # name: (kind, what)
    "crc-val": ("in-domain", "CRC-VAL-HE-7K tiles"),
    "pathmnist-test": ("in-domain", "pathmnist-mini test tiles, model not trained on them"),
    "breakhis": ("other organ", "BreaKHis breast, 400X"),
    "skin-slide": ("other organ", "skin slide region, 224 px tiles"),
    "nonorm": ("other lab (report)", "NCT-CRC-HE-100K-NONORM"),
    "kather2016": ("other lab (report)", "Kather 2016"),
}


def images_under(folder: Path) -> list[tuple[str, bytes]]:
    return [
        (str(p.relative_to(TILES)), p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]


def slide_tiles(px: int = 224) -> list[tuple[str, bytes]]:
    """The skin slide region cut into px x px tiles (row by row; the partial edge is dropped), as PNG files."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(SLIDE) as im:
        arr = np.asarray(im.convert("RGB"))
    out = []
    for y in range(0, arr.shape[0] - px + 1, px):
        for x in range(0, arr.shape[1] - px + 1, px):
            buf = io.BytesIO()
            Image.fromarray(arr[y : y + px, x : x + px]).save(buf, format="PNG")
            out.append((f"skin-{y}-{x}.png", buf.getvalue()))
    return out


def npz_test_uploads() -> list[tuple[str, bytes]]:
    from PIL import Image

    with np.load(NPZ) as z:
        images = z["test_images"]
    out = []
    for i, a in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append((f"pathmnist-test-{i}.png", buf.getvalue()))
    return out


def train_heldout_model(runs_root: Path, epochs: int | None = None) -> str:
    """A run on the 160 pathmnist-mini train tiles (val: 40, test: 40) with the default recipe (`epochs`: fewer
    than its 60 on a busy machine); its checkpoint."""
    from histo_core.training import default_config
    from histo_core.training.run import prepare_run, run_training

    cfg = default_config(str(NPZ), device="cpu").replace(train_splits="train", name="ood-flag-heldout")
    if epochs:
        cfg = cfg.replace(epochs=int(epochs))
    cfg = cfg.validate()
    run = prepare_run(cfg, runs_root)
    run_training(run)
    return str(run.best_ckpt)


def measure(model: str, groups: dict[str, list[tuple[str, bytes]]]) -> dict[str, dict]:
    from histo_core.model_cache import load_model
    from histo_core.uploads import classify_uploads

    loaded = load_model(model)
    out = {}
    for name, files in groups.items():
        results = classify_uploads(loaded, files, tta=bool(loaded.meta.tta))
        ok = [r for r in results if r.ok]
        scores = np.array([np.nan if r.ood_score is None else r.ood_score for r in ok])
        out[name] = {
            "n": len(ok),
            "flagged": sum(r.unlike_training is not None for r in ok),
            "median_score": float(np.nanmedian(scores)) if len(ok) and not np.isnan(scores).all() else None,
            "feature_check": sum("features" in (r.unlike_training or "") for r in ok),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="models trained on all 240 tiles (default: the shipped ones)")
    ap.add_argument("--no-train", action="store_true", help="skip the run trained here on the train split")
    ap.add_argument(
        "--heldout", help="a run (dir or best.pt) trained on the train split only: used instead of training"
    )
    ap.add_argument("--epochs", type=int, default=None, help="epochs of the run trained here (default: the recipe's)")
    ap.add_argument("--heldout-only", action="store_true", help="measure only the --heldout run (no shipped models)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: the real sample images are needed")
    crc = TILES / "crc-he"
    common = {
        "crc-val": images_under(crc / "CRC-VAL-HE-7K"),
        "breakhis": images_under(TILES / "breakhis-400x"),
        "skin-slide": slide_tiles(),
        "nonorm": images_under(crc / "NCT-CRC-HE-100K-NONORM"),
        "kather2016": images_under(TILES / "kather2016"),
    }
    table: dict[str, dict[str, dict]] = {}
    for m in [] if args.heldout_only else args.models or [str(ROOT / p) for p in SHIPPED]:
        table[Path(m).stem if m.endswith(".pt") else m] = measure(m, common)
    if args.heldout:
        table["run on train split"] = measure(args.heldout, {"pathmnist-test": npz_test_uploads(), **common})
    elif not args.no_train:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = train_heldout_model(Path(tmp), args.epochs)
            table["run on train split"] = measure(ckpt, {"pathmnist-test": npz_test_uploads(), **common})
    if args.json:
        print(json.dumps(table, indent=2))
        return
    models = list(table)
    print("| sample set | kind | " + " | ".join(models) + " |")
    print("|---|---|" + "---|" * len(models))
    for g, (kind, what) in GROUPS.items():
        cells = []
        for m in models:
            r = table[m].get(g)
            if r is None:
                cells.append("-")
                continue
            pct = 100.0 * r["flagged"] / max(1, r["n"])
            med = "-" if r["median_score"] is None else f"{r['median_score']:.2f}"
            cells.append(f"{r['flagged']}/{r['n']} ({pct:.0f}%), median score {med}")
        print(f"| {what} | {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
