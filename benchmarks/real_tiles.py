"""Real-world quality of a model on the real tiles in ../shared/data: in-domain and other labs.

    python benchmarks/real_tiles.py MODEL [MODEL ...] [--mpp 0.5] [--json]

MODEL is anything `predict` takes (run dir, run id, weights .pt, export name). Every tile goes through the
same road as `python -m histo_core predict`: the file's bytes -> `prepare_upload` -> `predict` (with the
model's TTA setting). Groups (see ../shared/data/README.md):

  pathmnist-test  the 40 test tiles of pathmnist-mini (28 px, in-domain)
  in-domain-224   45 pathmnist-224 tiles + 13 CRC-VAL-HE-7K tiles (224 px, same source as PathMNIST)
  nonorm          9 NCT-CRC-HE-100K-NONORM tiles (same lab, before Macenko normalisation)
  kather2016      21 Kather 2016 TIFFs whose classes have a PathMNIST counterpart (another lab, 150 px)
  other-lab       nonorm + kather2016 (30 tiles)

Also reports how often the "unlike the training tiles" flag fires in each group when the model's card has
an out-of-distribution calibration, and on how many of those tiles the prediction is wrong (the flag is worth
having if the flagged tiles are wrong more often than the rest).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

NCT = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]  # PathMNIST's class order
KATHER = {
    "01_TUMOR": "TUM",
    "02_STROMA": "STR",
    "04_LYMPHO": "LYM",
    "05_DEBRIS": "DEB",
    "06_MUCOSA": "NORM",
    "07_ADIPOSE": "ADI",
    "08_EMPTY": "BACK",
}


def tile_groups() -> dict[str, list[tuple[Path, int]]]:
    tiles = SHARED / "tiles"
    groups: dict[str, list[tuple[Path, int]]] = {"in-domain-224": [], "nonorm": [], "kather2016": []}
    for group, folder in (
        ("in-domain-224", tiles / "pathmnist-224"),
        ("in-domain-224", tiles / "crc-he" / "CRC-VAL-HE-7K"),
        ("nonorm", tiles / "crc-he" / "NCT-CRC-HE-100K-NONORM"),
    ):
        for cls_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            groups[group] += [(f, NCT.index(cls_dir.name)) for f in sorted(cls_dir.iterdir())]
    for folder, abbrev in KATHER.items():
        groups["kather2016"] += [(f, NCT.index(abbrev)) for f in sorted((tiles / "kather2016" / folder).glob("*.tif"))]
    return groups


def measure(model_spec: str, mpp: float | None = None) -> dict:
    from histo_core.datasets import open_dataset
    from histo_core.model_cache import load_model
    from histo_core.ood import ood_flags
    from histo_core.predict import predict
    from histo_core.uploads import classify_uploads

    loaded = load_model(model_spec)
    if len(loaded.meta.classes) != len(NCT):
        raise SystemExit(f"{model_spec}: a PathMNIST model (9 classes) is needed")
    tta = bool(loaded.meta.tta)
    out: dict = {"model": model_spec, "tta": tta, "groups": {}}

    test = open_dataset(str(SHARED / "pathmnist-mini" / "pathmnist.npz")).split("test")
    tiles = np.asarray(test.get(np.arange(len(test))))
    probs = predict(loaded, tiles, tta=tta)
    flags = ood_flags(loaded.meta, probs, tiles, loaded.model)
    out["groups"]["pathmnist-test"] = _summary(probs, np.asarray(test.labels), flags)

    for name, items in tile_groups().items():
        results = classify_uploads(loaded, [(str(p), p.read_bytes()) for p, _ in items], tta=tta, mpp=mpp)
        bad = [r.error for r in results if not r.ok]
        if bad:
            raise SystemExit(f"unreadable tiles: {bad}")
        probs = np.stack([r.probs for r in results])
        flags = np.array([r.unlike_training is not None for r in results])
        out["groups"][name] = _summary(probs, np.array([y for _, y in items]), flags)
    g = out["groups"]
    out["groups"]["other-lab"] = {
        k: g["nonorm"][k] + g["kather2016"][k] for k in ("correct", "n", "flagged", "flagged_wrong")
    }
    return out


def _summary(probs: np.ndarray, labels: np.ndarray, flags: np.ndarray | None) -> dict:
    pred = probs.argmax(1)
    return {
        "correct": int((pred == labels).sum()),
        "n": int(len(labels)),
        "flagged": int(flags.sum()) if flags is not None else 0,
        "flagged_wrong": int((flags & (pred != labels)).sum()) if flags is not None else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--mpp", type=float, default=None, help="µm per pixel of the 224/150 px uploads (default: unknown)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: the real sample tiles are needed")
    rows = [measure(m, args.mpp) for m in args.models]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    names = ["pathmnist-test", "in-domain-224", "nonorm", "kather2016", "other-lab"]
    print("model | " + " | ".join(names))
    for r in rows:
        cells = []
        for n in names:
            g = r["groups"][n]
            flag = f" (flag {g['flagged']}, {g['flagged_wrong']} of them wrong)" if g["flagged"] else ""
            cells.append(f"{g['correct']}/{g['n']}{flag}")
        print(f"{r['model']} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
