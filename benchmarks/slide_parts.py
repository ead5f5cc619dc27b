"""The slide analysis's parts side by side, in one process on the same tiles (so a busy machine's noise hits
them alike; ratios, not absolute figures): the model's forward in fp32, channels-last, bf16 autocast and both,
at two batch sizes; the OOD feature capture; the OOD check.

    python benchmarks/make_test_slide.py /tmp/s10k.tif --size 10000
    python benchmarks/slide_parts.py /tmp/s10k.tif
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from histo_core.model_cache import load_model  # noqa: E402
from histo_core.model_input import model_view  # noqa: E402
from histo_core.ood import check_tiles  # noqa: E402
from histo_core.ood_features import StageCapture  # noqa: E402
from histo_core.predict import InputSpec, predict_tiles  # noqa: E402
from histo_core.slides import open_slide  # noqa: E402
from histo_core.slides.analysis import read_tile  # noqa: E402
from histo_core.slides.grid import plan_slide_grid  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide")
    ap.add_argument("--model", default="pathmnist-resnet9")
    ap.add_argument("--tiles", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    meta, model = loaded.meta, loaded.model
    with open_slide(args.slide) as s:
        g = plan_slide_grid(s, meta)
        cells = [(r, c) for r in range(g.rows) for c in range(g.cols)][: args.tiles]
        tiles = np.stack([read_tile(s, g, r, c, meta)[1] for r, c in cells])
    view, given = model_view(tiles, meta)
    n = len(tiles)

    def bench(name: str, fn, repeats: int = 3) -> None:
        fn()
        best = min(_timed(fn) for _ in range(repeats))
        print(f"{name:44s} {n / best:8.0f} tiles/s", flush=True)

    spec = InputSpec.of(meta)
    for bs in (256, 1024):
        bench(f"forward fp32, batch {bs}", lambda bs=bs: predict_tiles(model, view, spec, batch_size=bs))
    cl = InputSpec.of(meta, channels_last=True)
    bf = InputSpec.of(meta, amp_dtype=torch.bfloat16)
    both = InputSpec.of(meta, amp_dtype=torch.bfloat16, channels_last=True)
    model.to(memory_format=torch.channels_last)
    bench("forward channels-last, batch 256", lambda: predict_tiles(model, view, cl, batch_size=256))
    bench("forward channels-last + bf16 autocast, batch 256", lambda: predict_tiles(model, view, both, batch_size=256))
    model.to(memory_format=torch.contiguous_format)
    bench("forward bf16 autocast, batch 256", lambda: predict_tiles(model, view, bf, batch_size=256))
    probs = predict_tiles(model, view, spec, batch_size=256)

    def captured() -> list[np.ndarray]:
        with StageCapture(model) as cap:
            predict_tiles(model, view, spec, batch_size=256)
        return cap.take()

    bench("forward fp32 + OOD feature capture", captured)
    feats = captured()
    bench("OOD check (confidence, colour, features)", lambda: check_tiles(meta.ood, probs, view, given, features=feats))
    fast = predict_tiles(model, view, both, batch_size=256)
    print(f"bf16 vs fp32: same class on {np.mean(fast.argmax(1) == probs.argmax(1)):.1%} of {n} tiles")
    return 0


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
