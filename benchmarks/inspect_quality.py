"""Does looking inside the model tell the truth? k-NN vote vs the model, `similar` retrieval, CAM faithfulness.

On a run trained on pathmnist-mini (default: train one with the default settings, as the README's recipe):
  1. the 40 real test tiles are written as PNG files and given to `python -m histo_core similar RUN ... --k K
     --json` (a child process, as a user would run it): top-1 label accuracy of the nearest training tile, the
     k-NN vote's accuracy, the model's accuracy and how often vote and model agree;
  2. every training tile (train + val for the default train+val recipe) as PNG through the same command:
     how often it returns itself first, and the largest such distance;
  3. `python -m histo_core explain-quality RUN --tiles 40 --json`: the ROAD table of the six CAM methods.

    python benchmarks/inspect_quality.py --json [--run RUN] [--k 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MINI = ROOT.parent / "shared" / "data" / "pathmnist-mini" / "pathmnist.npz"


def cli(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "histo_core", *argv], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv[:2])}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout)


def write_pngs(folder: Path, images: np.ndarray, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, t in enumerate(images):
        p = folder / f"{prefix}{i:05d}.png"
        Image.fromarray(t).save(p)
        out.append(p)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--run", help="a run trained on pathmnist-mini (default: train one with the default settings)")
    p.add_argument("--k", type=int, default=8)
    args = p.parse_args(argv)
    run = args.run or cli("train", "--dataset", str(MINI), "--json")["run_dir"]
    cfg = json.loads((Path(run) / "config.json").read_text()) if Path(run, "config.json").exists() else {}
    with np.load(MINI) as z:
        test_x, test_y = z["test_images"], z["test_labels"].reshape(-1)
        ref_x = [("train", z["train_images"])] + (
            [("val", z["val_images"])] if cfg.get("train_splits") == "train+val" else []
        )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        test_doc = cli("similar", run, *map(str, write_pngs(tmp / "test", test_x, "t")), "--k", str(args.k), "--json")
        self_hits, self_dist, n_ref = 0, 0.0, 0
        for split, images in ref_x:
            doc = cli("similar", run, *map(str, write_pngs(tmp / split, images, split[0])), "--k", "1", "--json")
            for row, rec in enumerate(doc["results"]):
                first = rec["neighbours"][0]
                hit = (first["split"], first["row"]) == (split, row)
                self_hits += hit
                self_dist = max(self_dist, first["distance"]) if hit else self_dist
                n_ref += 1
        quality = cli("explain-quality", run, "--tiles", "40", "--json")
    recs = test_doc["results"]
    from histo_core.review import run_classes
    from histo_core.runs import RunDir

    classes = run_classes(RunDir(run))
    truth = [classes[int(y)] for y in test_y]
    n = len(recs)
    result = {
        "run": Path(run).name,
        "arch": cfg.get("arch"),
        "k": args.k,
        "reference_tiles": test_doc["reference_tiles"],
        "test_tiles": n,
        "model_accuracy": sum(r["prediction"] == t for r, t in zip(recs, truth)) / n,
        "knn_accuracy": sum(r["knn_vote"] == t for r, t in zip(recs, truth)) / n,
        "agreement": sum(r["agree"] for r in recs) / n,
        "top1_label_accuracy": sum(r["neighbours"][0]["label"] == t for r, t in zip(recs, truth)) / n,
        "disagreements": {
            "model_right": sum(r["prediction"] == t for r, t in zip(recs, truth) if not r["agree"]),
            "knn_right": sum(r["knn_vote"] == t for r, t in zip(recs, truth) if not r["agree"]),
            "count": sum(not r["agree"] for r in recs),
        },
        "training_tiles_returning_themselves_first": f"{self_hits}/{n_ref}",
        "max_self_distance": self_dist,
        "faithfulness": quality["methods"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(json.dumps({k: v for k, v in result.items() if k != "faithfulness"}, indent=2))
        for r in quality["methods"]:
            print(f"{r['rank']}. {r['method']:<10} ROAD {r['road_mean']:+.4f}  unfaithful {r['unfaithful_share']:.0%}")
    return 0


if __name__ == "__main__":
    from histo_core.runtime import set_wait_policy

    set_wait_policy(os.environ)  # as every histo_core process, before torch loads
    raise SystemExit(main())
