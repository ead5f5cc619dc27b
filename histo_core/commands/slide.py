"""`python -m histo_core slide MODEL SLIDE...`: analyse whole slides (histo_core.slides).

Each slide is analysed once into its folder under <runs dir>/.slides (or --out): a rerun of a finished slide
with the same model and options is a no-op unless --force; an interrupted one continues where it stopped.
Progress on stderr; with --json one JSON document on stdout. Exit 2 when the model, an option or any slide
is unusable (each bad slide gets its own line; the good ones are still analysed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from histo_core.cli import emit
from histo_core.errors import HistoError

EPILOG = """\
MODEL is a run directory, a run id, a weights .pt file or an export name (as for `predict`); its field of
view in µm (PathMNIST: 224 px at 0.5 µm/px = 112 µm) sets the tile size on the slide.

outputs (per slide, in its analysis folder): tiles.csv (x, y, width, height in level-0 px, class, every class
probability, ood_score, ood), tiles.geojson (QuPath: File > Import objects), classmap.png, tissue.png, thumbnail.png.

examples:
  python -m histo_core slide pathmnist-resnet9 CMU-1.svs --json
  python -m histo_core slide runs/20250101-120000-resnet9-pathmnist-ab12 a.svs b.ndpi --tissue-threshold 0.3
  python -m histo_core slide pathmnist-resnet9 scan.tif --mpp 0.25 --out results/scan
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "slide",
        help="analyse whole slides (.svs, .ndpi, .mrxs, .scn, tiled TIFF): tissue class map, CSV, GeoJSON",
        description="Analyse whole slides with a trained model: a class per tissue tile at the model's field of view.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="run directory, run id, weights .pt file or export name")
    p.add_argument("slides", metavar="SLIDE", nargs="+", help="slide files")
    p.add_argument("--mpp", type=float, metavar="UM", help="µm per level-0 pixel, for slides that record none")
    p.add_argument("--out", metavar="DIR", help="analysis folder (one slide only); default: <runs dir>/.slides/…")
    p.add_argument(
        "--tissue-threshold",
        type=float,
        default=0.5,
        metavar="F",
        help="fraction of a tile that must be tissue for it to be analysed (default 0.5)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="tiles per forward pass (default 256)")
    p.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations (8x the model's time)")
    p.add_argument("--force", action="store_true", help="analyse again even when a finished analysis exists")
    p.add_argument(
        "--no-amp",
        dest="amp",
        action="store_false",
        help="full fp32 (default: bf16 autocast and channels-last where the CPU or GPU computes bf16 natively)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where to run (default cpu)")
    p.add_argument("--runs-dir", help="runs root (default: $HISTO_RUNS_DIR, else ./runs)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_slide)


def _progress(name: str) -> Any:
    last = {"t": 0.0}

    def show(p: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last["t"] < 1.0 and p["done"] < p["total"]:
            return
        last["t"] = now
        eta = f", ETA {p['eta_s']:.0f} s" if p.get("eta_s") is not None else ""
        print(f"{name}: {p['done']}/{p['total']} tiles, {p['tiles_per_s']:.0f} tiles/s{eta}", file=sys.stderr)

    return show


def cmd_slide(args: argparse.Namespace) -> int:
    from histo_core.model_cache import load_model
    from histo_core.slides import analyse_slide, open_slide

    if args.out and len(args.slides) > 1:
        raise HistoError("--out names one analysis folder: give one SLIDE with it (or leave --out out)")
    if args.mpp is not None and not 0.05 <= args.mpp <= 20:
        raise HistoError(f"--mpp must be between 0.05 and 20 µm per pixel, got {args.mpp}")
    if not 0.0 < args.tissue_threshold <= 1.0:
        raise HistoError(f"--tissue-threshold must be in (0, 1], got {args.tissue_threshold}")
    if args.batch_size < 1:
        raise HistoError(f"--batch-size must be a positive integer, got {args.batch_size}")
    loaded = load_model(args.model, device=args.device)
    results: list[dict[str, Any]] = []
    failed = 0
    for item in args.slides:
        try:
            with open_slide(item, mpp=args.mpp) as slide:
                summary = analyse_slide(
                    loaded,
                    slide,
                    runs_root=args.runs_dir,
                    out_dir=args.out,
                    tissue_threshold=args.tissue_threshold,
                    batch_size=args.batch_size,
                    tta=args.tta,
                    force=args.force,
                    amp=args.amp,
                    progress=_progress(slide.name),
                )
            results.append({"slide": item, **summary})
        except HistoError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            results.append({"slide": item, "error": str(exc)})
    payload = {
        "model": {"source": loaded.source, "label": loaded.label, "field_um": loaded.meta.field_um},
        "slides": results,
        "analysed": len(results) - failed,
        "failed": failed,
    }
    emit(args, payload, _text(payload))
    return 2 if failed else 0


def _text(payload: dict[str, Any]) -> str:
    lines = []
    for r in payload["slides"]:
        if "error" in r:
            lines.append(f"{Path(r['slide']).name}: ERROR {r['error']}")
            continue
        again = " (already analysed; --force to redo)" if r.get("skipped") else ""
        ood = f", {r['ood_share']:.0%} unlike the training tiles" if r.get("ood_share") is not None else ""
        lines.append(
            f"{r['slide']}: {r['tiles']['tissue']} tissue tiles of {r['tile_um']:g} µm, "
            f"{r['tissue_mm2']:.2f} mm² tissue{ood}{again}"
        )
        for c in r["classes"]:
            if c["tiles"]:
                lines.append(f"  {c['class']}: {c['area_mm2']:.3f} mm², {c['share']:.1%}")
        lines.append(f"  outputs: {r['folder']}")
    return "\n".join(lines)
