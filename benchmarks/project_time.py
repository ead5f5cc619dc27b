"""Time and peak memory of the Feature map's 2-D projection at its largest (issue #12).

    python benchmarks/project_time.py [--points 20000] [--dims 256] [--json]

Runs `histo_core.embeddings.project` (PCA to at most 50 dimensions, then scikit-learn's Barnes-Hut t-SNE, one
thread) on seeded clustered features shaped like a model's penultimate layer (9 clusters, float16 as stored),
and reports the seconds and the process's peak RSS (torch included, as in `embed`).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from histo_core.embeddings import project

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (9, args.dims)).astype(np.float32)
    labels = rng.integers(0, 9, args.points)
    feats = (centres[labels] + rng.normal(0, 1, (args.points, args.dims))).astype(np.float16)
    start = time.monotonic()
    xy, method = project(feats.astype(np.float32))
    out = {
        "points": args.points,
        "dims": args.dims,
        "method": method,
        "seconds": round(time.monotonic() - start, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(out) if args.json else " · ".join(f"{k} {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
