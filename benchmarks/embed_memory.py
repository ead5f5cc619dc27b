"""Peak memory of embedding a PatchCamelyon-layout file: features of every tile, streamed, + the 2-D map.

Writes a PCam-layout folder (benchmarks/pcam_memory.py's files: N train tiles, 2048 valid, 2048 test, 96 px),
trains simplecnn for one epoch on the synthetic demo at 96 px (or takes --run; any 3-channel 96 px model can embed any
3-channel 96 px dataset as a frozen feature extractor), then runs
`python -m histo_core embed RUN --dataset PCAM_DIR --max-points M --json` in a child process, the command the
Feature map page's background job runs, and reports its peak RSS (os.wait4 -> ru_maxrss) and wall time.

    python benchmarks/embed_memory.py --json [--run RUN] [--tiles 20000] [--max-points 20000] [--threads 2]

The target (recorded in benchmarks/RESULTS.md, never asserted) is the training memory bound: below 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pcam_memory import _pattern_tiles, write_pcam  # noqa: E402

from histo_core.runtime import set_wait_policy  # noqa: E402


def child(cmd: list[str], env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        doc = {"error": f"exit {code}: {stderr.strip().splitlines()[-1:]}"}
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "exit": code,
        "doc": doc,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--tiles", type=int, default=20000, help="train-split length (default 20000)")
    p.add_argument("--run", help="embed with this run's model (any 3-channel model; default: train a small one)")
    p.add_argument("--max-points", type=int, default=20000, help="tiles on the t-SNE map (default 20000)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="embed-memory-"))
    env = dict(os.environ, HISTO_RUNS_DIR=str(base / "runs"), OMP_NUM_THREADS=str(args.threads))
    set_wait_policy(env)  # as every histo_core process sets it
    try:
        folder = base / "pcam"
        folder.mkdir()
        size = write_pcam(folder, args.tiles, _pattern_tiles())
        run_dir = args.run
        env_train = dict(env, HISTO_EMBED_AFTER_TRAINING="0")
        train = (
            {"doc": {"run_dir": run_dir}}
            if run_dir
            else child(
                [
                    sys.executable,
                    "-m",
                    "histo_core",
                    "train",
                    "--dataset",
                    "synthetic",
                    "--size",
                    "96",
                    "--arch",
                    "simplecnn",
                    "--epochs",
                    "1",
                    "--no-tta",
                    "--threads",
                    str(args.threads),
                    "--json",
                ],
                env_train,
            )
        )
        run_dir = train["doc"].get("run_dir")
        if not run_dir:
            raise SystemExit(f"training the small model failed: {train['doc']}")
        embed = child(
            [
                sys.executable,
                "-m",
                "histo_core",
                "embed",
                str(run_dir),
                "--dataset",
                str(folder),
                "--max-points",
                str(args.max_points),
                "--json",
            ],
            env,
        )
        meta = embed.get("doc") or {}
        result = {
            "tiles": args.tiles + 2 * 2048,
            "file_mb": round(size / 2**20, 1),
            "embed_peak_rss_mb": embed["peak_rss_mb"],
            "embed_seconds": embed["seconds"],
            "exit": embed["exit"],
            "tiles_embedded": sum((meta.get("counts") or {}).values()),
            "dims": meta.get("dims"),
            "projected": meta.get("projected"),
            "projection": meta.get("projection"),
            "sample_rule": meta.get("sample_rule"),
            "error": meta.get("error"),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        json.dumps(result, indent=2)
        if args.json
        else f"{result['tiles_embedded']:,} tiles embedded: peak RSS {result['embed_peak_rss_mb']} MB, "
        f"{result['embed_seconds']} s; {result['projection']} on {result['sample_rule']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
