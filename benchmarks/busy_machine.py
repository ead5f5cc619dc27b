"""Training on a busy machine: CLI throughput with 0, 1 and 2 competing CPU-bound processes under OpenMP wait
policies: libgomp's default, PASSIVE, and the short spin every histo_core process now sets before torch loads
(histo_core/runtime.py).

For each load level it starts that many spinning processes (`python -c "while True: pass"`), then runs

    python -m histo_core train --dataset ../shared/data/pathmnist-mini/pathmnist.npz --epochs E --no-tta --json

alternating the policies (default = OMP_WAIT_POLICY empty, which libgomp treats as unset: 300,000 spins;
passive = OMP_WAIT_POLICY=PASSIVE; spin:N = GOMP_SPINCOUNT=N; histo = what histo_core sets, nothing in the
environment), and reports the training images/s (from the run's metrics rows) and the command's wall time.

    python benchmarks/busy_machine.py [--json] [--epochs 10] [--loads 0,1,2] [--policies default,passive,histo]
                                      [--rounds 1] [--dataset PATH]

Prints one JSON list: [{"competitors", "policy", "round", "img_per_s", "wall_s"}]; figures only, never asserted.
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
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "pathmnist-mini" / "pathmnist.npz"


def train_once(dataset: str, epochs: int, policy: str, runs: Path) -> dict:
    drop = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if policy == "default":
        env["OMP_WAIT_POLICY"] = ""
    elif policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy.startswith("spin:"):
        env["GOMP_SPINCOUNT"] = policy.split(":", 1)[1]
    elif policy != "histo":
        raise SystemExit(f"error: unknown policy {policy!r} (default, passive, spin:N, histo)")
    cmd = [
        sys.executable,
        "-m",
        "histo_core",
        "train",
        "--dataset",
        dataset,
        "--epochs",
        str(epochs),
        "--no-tta",
        "--runs-dir",
        str(runs),
        "--json",
    ]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"error: training failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    run_dir = Path(json.loads(p.stdout)["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = sum(r["seconds"] for r in rows)
    images = sum(r["images_per_s"] * r["seconds"] for r in rows)
    return {"img_per_s": round(images / max(seconds, 1e-9), 1), "wall_s": round(wall, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--dataset", default=str(DEFAULT_DATA))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--loads", default="0,1,2", help="numbers of competing CPU-bound processes (default 0,1,2)")
    p.add_argument("--policies", default="default,passive,histo", help="default, passive, spin:N, histo")
    p.add_argument("--rounds", type=int, default=1, help="alternations of the policies per load (default 1)")
    args = p.parse_args(argv)
    if not Path(args.dataset).exists() and "/" in args.dataset:
        print(f"error: --dataset {args.dataset}: no such file; give a dataset path or name", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="busy-") as tmp:
        for n in [int(x) for x in args.loads.split(",")]:
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
            try:
                for rnd in range(args.rounds):
                    for policy in args.policies.split(","):
                        row = {
                            "competitors": n,
                            "policy": policy,
                            "round": rnd,
                            **train_once(args.dataset, args.epochs, policy, Path(tmp)),
                        }
                        results.append(row)
                        print(
                            f"{n} competitors  {policy:10s}  {row['img_per_s']:8.1f} img/s  {row['wall_s']:6.1f} s wall",
                            file=sys.stderr if args.json else sys.stdout,
                            flush=True,
                        )
            finally:
                for s in spinners:
                    s.kill()
                    s.wait()
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
