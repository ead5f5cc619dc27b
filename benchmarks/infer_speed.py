"""Inference speed of the Classify page's work, measured end to end from file bytes.

    python benchmarks/infer_speed.py --json                       # cnn3 at 28 px, 2 threads, CPU
    python benchmarks/infer_speed.py --arch resnet18 --model runs/<id> --threads 4

Times (median of --repeats after one warm-up):
  one_tile          decode + preprocess + predict of one 28 px PNG tile
  one_tile_gradcam  the same plus its Grad-CAM map and overlay
  upload_100        100 tiles in one upload (PNG bytes of real 224 px tiles when ../shared/data is present,
                    else generated): decode + preprocess + one batched predict
  upload_100_gradcam  the same plus Grad-CAM maps and overlays for all 100
Targets (issue #4): 100 tiles < 2 s without CAMs, < 10 s with Grad-CAM. Measured here, never asserted in tests.
Without --model the weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED_TILES = ROOT.parent / "shared" / "data" / "tiles" / "pathmnist-224"


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def upload_files(n: int) -> tuple[list[tuple[str, bytes]], str]:
    real = sorted(SHARED_TILES.glob("*/*.png")) if SHARED_TILES.is_dir() else []
    if real:
        return [
            (real[i % len(real)].name, real[i % len(real)].read_bytes()) for i in range(n)
        ], f"{len(real)} real 224 px PathMNIST PNGs from {SHARED_TILES}, cycled"
    rng = np.random.default_rng(0)
    return [
        (f"t{i}.png", png_bytes(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))) for i in range(n)
    ], "generated 224 px noise PNGs (../shared/data absent)"


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-call allocations, lazy imports
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_spec(args: argparse.Namespace, tmp: Path) -> str:
    if args.model:
        return args.model
    import torch

    from histo_core.checkpoint import save_checkpoint
    from histo_core.models import build_model

    torch.manual_seed(0)
    classes = [f"class {i}" for i in range(9)]
    model = build_model(args.arch, len(classes), 3, args.size)
    path = tmp / f"{args.arch}.pt"
    save_checkpoint(
        path,
        model,
        {
            "arch": args.arch,
            "num_classes": 9,
            "in_channels": 3,
            "input_size": args.size,
            "classes": classes,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "dataset": {"name": "pathmnist", "title": "benchmark", "synthetic": False},
        },
    )
    return str(path)


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from histo_core.explain import compute_cams, overlay
    from histo_core.model_cache import load_model
    from histo_core.uploads import classify_uploads

    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model(model_spec(args, Path(tmp)))
        meta = loaded.meta
        rng = np.random.default_rng(1)
        one = [("tile.png", png_bytes(rng.integers(0, 256, (meta.input_size, meta.input_size, 3), dtype=np.uint8)))]
        files, source = upload_files(args.n)

        def classify(batch, cams: bool):
            results = classify_uploads(loaded, batch)
            if cams:
                tiles = np.stack([r.tile for r in results])
                maps = compute_cams(loaded.model, meta, tiles, args.cam, targets=[r.pred for r in results])
                for tile, cam in zip(tiles, maps):
                    overlay(tile, cam, 0.5, 224)
            return results

        out = {
            "benchmark": "infer_speed",
            "device": "cpu",
            "threads": args.threads,
            "arch": meta.arch,
            "input_size": meta.input_size,
            "model": args.model or "random weights",
            "cam_method": args.cam,
            "repeats": args.repeats,
            "upload_source": source,
            "upload_tiles": args.n,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        }
        out["one_tile_s"] = round(median_time(lambda: classify(one, False), args.repeats), 4)
        out["one_tile_gradcam_s"] = round(median_time(lambda: classify(one, True), args.repeats), 4)
        out["upload_100_s"] = round(median_time(lambda: classify(files, False), args.repeats), 3)
        out["upload_100_gradcam_s"] = round(median_time(lambda: classify(files, True), args.repeats), 3)
        # where the 100-tile time goes
        from histo_core.predict import predict
        from histo_core.uploads import prepare_upload

        out["upload_100_decode_preprocess_s"] = round(
            median_time(lambda: [prepare_upload(d, n, meta) for n, d in files], args.repeats), 3
        )
        tiles = np.stack([prepare_upload(d, n, meta).tile for n, d in files])
        out["upload_100_predict_only_s"] = round(median_time(lambda: predict(loaded, tiles), args.repeats), 4)
        out["upload_100_gradcam_only_s"] = round(
            median_time(lambda: compute_cams(loaded.model, meta, tiles, args.cam), args.repeats), 3
        )
        out["targets"] = {"upload_100_s": 2.0, "upload_100_gradcam_s": 10.0}
        out["meets_targets"] = {k: out[k] < v for k, v in out["targets"].items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="cnn3", help="architecture when no --model is given (default cnn3)")
    p.add_argument("--size", type=int, default=28, help="input size when no --model is given (default 28)")
    p.add_argument("--model", help="a run dir, run id, weights file or export name instead of random weights")
    p.add_argument("--cam", default="GradCAM", help="CAM method (default GradCAM)")
    p.add_argument("--n", type=int, default=100, help="tiles in the upload (default 100)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats after a warm-up (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:32s} {v}")


if __name__ == "__main__":
    main()
