"""Peak memory of training from PatchCamelyon-layout HDF5 files: it must not grow with the file's length.

Writes PCam-layout files (camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5; x contiguous and
uncompressed like the official files, (N, 96, 96, 3) uint8) with N train tiles in a temp dir, for each N in
--tiles (default 20000 and 40000), then runs `python -m histo_core train --dataset <dir> --arch simplecnn
--epochs 1` in a child process and reports the child's peak RSS (os.wait4 -> ru_maxrss).

    python benchmarks/pcam_memory.py --json [--tiles 20000,40000] [--threads 2] [--keep DIR]

Prints one JSON list: [{"train_tiles", "file_mb", "peak_rss_mb", "seconds", "state", "test_accuracy"}].
The target (recorded in benchmarks/RESULTS.md, never asserted) is a peak below 1.0 GB (1.5 GB before issue
#13), about the same for both lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

EVAL_TILES = 2048
WRITE_CHUNK = 2048


def _pattern_tiles() -> tuple[np.ndarray, np.ndarray]:
    """A pool of 96 px two-class tiles (the synthetic set's tumour vs other tissue, so training is meaningful)."""
    from histo_core.datasets import open_dataset

    s = open_dataset("synthetic", size=96).split("train")
    return s.images, (s.labels == 4).astype(np.uint8)  # 4 = "tumour"


def write_pcam(folder: Path, n_train: int, pool: tuple[np.ndarray, np.ndarray]) -> int:
    import h5py

    images, labels = pool
    rng = np.random.default_rng(n_train)
    total = 0
    for split, n in (("train", n_train), ("valid", EVAL_TILES), ("test", EVAL_TILES)):
        with (
            h5py.File(folder / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as fx,
            h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as fy,
        ):
            x = fx.create_dataset("x", shape=(n, 96, 96, 3), dtype=np.uint8)  # contiguous, like the official files
            y = fy.create_dataset("y", shape=(n, 1, 1, 1), dtype=np.uint8)
            for s in range(0, n, WRITE_CHUNK):
                k = min(WRITE_CHUNK, n - s)
                pick = rng.integers(0, len(images), k)
                x[s : s + k] = images[pick]
                y[s : s + k, 0, 0, 0] = labels[pick]
        total += (folder / f"camelyonpatch_level_2_split_{split}_x.h5").stat().st_size
    return total


def train_child(folder: Path, runs: Path, threads: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "histo_core",
        "train",
        "--dataset",
        str(folder),
        "--arch",
        "simplecnn",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--threads",
        str(threads),
        "--no-tta",
        "--runs-dir",
        str(runs),
        "--json",
    ]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    seconds = time.perf_counter() - t0
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        doc = {"state": f"exit {proc.returncode}: {stderr.strip().splitlines()[-1:] or ''}"}
    peak_kb = usage.ru_maxrss  # kilobytes on Linux
    return {
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "seconds": round(seconds, 1),
        "state": doc.get("state"),
        "test_accuracy": (doc.get("test") or {}).get("accuracy"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.add_argument("--tiles", default="20000,40000", help="train-split lengths to compare (default 20000,40000)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--keep", help="write the files here and keep them (default: a temp dir, removed)")
    args = p.parse_args(argv)
    pool = _pattern_tiles()
    results = []
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pcam-memory-"))
    try:
        for n in [int(t) for t in args.tiles.split(",")]:
            folder = base / f"pcam-{n}"
            folder.mkdir(parents=True, exist_ok=True)
            size = write_pcam(folder, n, pool)
            row = {
                "train_tiles": n,
                "file_mb": round(size / 2**20, 1),
                **train_child(folder, base / "runs", args.threads),
            }
            results.append(row)
            if not args.json:
                print(
                    f"{n:7d} train tiles ({row['file_mb']:.0f} MB of x files): peak RSS {row['peak_rss_mb']:.0f} MB, "
                    f"{row['seconds']:.0f} s, {row['state']}, test accuracy {row['test_accuracy']}",
                    flush=True,
                )
            if not args.keep:
                for f in folder.iterdir():
                    f.unlink()
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
