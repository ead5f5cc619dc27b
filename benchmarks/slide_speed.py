"""Whole-slide analysis speed and memory: tiles/s, total time and peak RSS of `python -m histo_core slide` on
pyramidal test slides written from the real CMU pixels (benchmarks/make_test_slide.py).

    python benchmarks/slide_speed.py                                   # 5,000^2 and 30,000^2, pathmnist-resnet9
    python benchmarks/slide_speed.py --sizes 5000 --tta --json
    python benchmarks/slide_speed.py --workdir /tmp/slides --keep      # reuse the written slides next time
    python benchmarks/slide_speed.py --sizes 10000 --amp-both           # bf16 autocast on and off, side by side

Each analysis runs in its own process (`os.wait4` gives that process's own peak RSS), with --force so it is
measured, not skipped. `read_s` is the reader thread's time (reading + decoding + resizing) and `model_s` the
model's (forward + OOD check); the two overlap, so their sum exceeds the total. Targets (issue 21): peak RSS
< 1.5 GB for both sizes; >= 500 tissue tiles/s on 2 CPU cores for a 28 px model. Measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_one(model: str, slide: Path, out: Path, tta: bool, threads: int, amp: bool = True) -> dict:
    cmd = [sys.executable, "-m", "histo_core", "slide", model, str(slide), "--out", str(out), "--force", "--json"]
    if tta:
        cmd.append("--tta")
    if not amp:
        cmd.append("--no-amp")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), HISTO_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{slide}: the analysis failed (exit {os.waitstatus_to_exitcode(status)})")
    result = json.loads(text)["slides"][0]
    return {
        "tissue_tiles": result["tiles"]["tissue"],
        "grid_tiles": result["tiles"]["grid"],
        "level": result["level"],
        "read_px": result["read_px"],
        "analysis_s": result["seconds"],
        "tiles_per_s": result["tiles_per_s"],
        "read_s": result["read_s"],
        "model_s": result["model_s"],
        "process_wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "tta": tta,
        "amp": result.get("amp"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 30000])
    ap.add_argument("--model", default="pathmnist-resnet9", help="model spec (default: the shipped 28 px model)")
    ap.add_argument("--tta", action="store_true", help="also measure with test-time augmentation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--amp-both", action="store_true", help="each slide also with --no-amp (full fp32), run right after"
    )
    ap.add_argument("--workdir", help="where the slides are written (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the written slides")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from make_test_slide import cmu_pixels, write_slide

    work = Path(args.workdir or tempfile.mkdtemp(prefix="slide-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    src = cmu_pixels()
    rows = []
    for size in args.sizes:
        slide = work / f"cmu-{size}.tif"
        if not slide.exists():
            t0 = time.perf_counter()
            write_slide(slide, src, (size, size))
            print(f"wrote {slide} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for tta in (False, True) if args.tta else (False,):
            for amp in (True, False) if args.amp_both else (True,):
                out = work / f"out-{size}-{int(tta)}"
                row = {"size": size, **run_one(args.model, slide, out, tta, args.threads, amp)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
        if not args.keep:
            slide.unlink()
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    if args.json:
        print(json.dumps({"machine": machine, "model": args.model, "results": rows}, indent=2))
    else:
        print("size     tissue tiles  level  tiles/s  total s  read s  model s  peak RSS MB  tta    amp")
        for r in rows:
            print(
                f"{r['size']:<8} {r['tissue_tiles']:>12}  {r['level']:>5}  {r['tiles_per_s']:>7}  {r['analysis_s']:>7}"
                f"  {r['read_s']:>6}  {r['model_s']:>7}  {r['peak_rss_mb']:>11}  {r['tta']!s:5}  {r['amp']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
