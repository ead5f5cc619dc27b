"""`python -m histo_core predict MODEL IMAGE...`: classify image files with a trained model.

Exit status: 0 when every file was classified; 1 when at least one file could not be read (each gets its
own error line, and every readable file is still classified and printed); 2 when the MODEL or an option is
unusable (nothing is classified).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from histo_core.cli import emit
from histo_core.errors import HistoError
from histo_core.fsutil import atomic_file
from histo_core.image_decode import ImageError, read_image_bytes, safe_filename

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
MAX_FILE_BYTES = 1 << 30  # a tile or a region; anything larger is refused before reading

EPILOG = """\
MODEL is a run directory, a run id (under $HISTO_RUNS_DIR), a weights .pt file or an export name
(weights/<name>.pt). IMAGE may be a folder: its image files are classified, recursively.

exit status: 0 every file classified; 1 some files could not be read (their errors are printed, the
others are classified); 2 bad MODEL or option.

examples:
  python -m histo_core predict runs/20250101-120000-cnn3-pathmnist-ab12 tile.png other.tif
  python -m histo_core predict crc-v1 tiles/ --tta --json
  python -m histo_core predict crc-v1 tile.png --cam GradCAM --cam-dir cams/ --target TUM
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from histo_core.explain import CAM_METHODS

    p = subparsers.add_parser(
        "predict",
        help="classify image files (PNG, JPEG, TIFF, BMP, GIF) with a trained model",
        description="Classify image files with a trained model; optionally save Grad-CAM overlays.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="run directory, run id, weights .pt file or export name")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders of images")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average over the 8 flips/rotations (test-time augmentation); default: as the model was evaluated",
    )
    p.add_argument(
        "--mpp",
        type=float,
        metavar="UM",
        help="µm per pixel of the images, when it differs from the model's training images: each image's "
        "centre field of view is then found at this resolution",
    )
    p.add_argument(
        "--cam",
        metavar="METHOD",
        choices=list(CAM_METHODS),
        help=f"save a class activation map per file: {', '.join(CAM_METHODS)} (needs --cam-dir)",
    )
    p.add_argument("--cam-dir", metavar="DIR", help="folder for the CAM overlay PNGs (created if missing)")
    p.add_argument("--target", metavar="CLASS", help="class to explain (name or index); default: the predicted class")
    p.add_argument("--alpha", type=float, default=0.5, help="CAM overlay opacity, 0..1 (default 0.5)")
    p.add_argument("--batch-size", type=int, default=256, help="tiles per forward pass (default 256)")
    p.add_argument(
        "--device", default="auto", choices=("cpu", "cuda", "auto"), help="where to run (default auto: the GPU if any)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_predict)


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given (order kept); folders replaced by their image files, sorted, recursively."""
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise HistoError(f"{item}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(p)
    return out


def read_file(path: Path) -> tuple[bytes | None, str | None]:
    """(bytes, None) or (None, error message): the one reader of image files (image_decode.read_image_bytes)."""

    try:
        return read_image_bytes(path, MAX_FILE_BYTES), None
    except ImageError as exc:
        return None, str(exc)


def _check_options(args: argparse.Namespace) -> None:
    if args.cam and not args.cam_dir:
        raise HistoError("--cam needs --cam-dir DIR (the folder to write the overlays to)")
    if args.cam_dir and not args.cam:
        raise HistoError(
            "--cam-dir needs --cam METHOD (one of GradCAM, GradCAM++, HiResCAM, EigenCAM, LayerCAM, ScoreCAM)"
        )
    if not 0.0 <= args.alpha <= 1.0:
        raise HistoError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.batch_size < 1:
        raise HistoError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.mpp is not None and not 0.01 <= args.mpp <= 100:
        raise HistoError(f"--mpp must be between 0.01 and 100 µm per pixel, got {args.mpp}")


def cmd_predict(args: argparse.Namespace) -> int:
    from histo_core.explain import class_index
    from histo_core.model_cache import load_model
    from histo_core.uploads import TileResult, classify_uploads

    _check_options(args)
    loaded = load_model(args.model, device=args.device)
    meta = loaded.meta
    target = class_index(meta, args.target) if args.target is not None else None
    paths = expand_inputs(args.images)

    files: list[tuple[str, bytes]] = []
    order: list[tuple[str, Any]] = []  # ("ok", position in files) or ("error", TileResult)
    for path in paths:
        data, error = read_file(path)
        if data is None:
            order.append(("error", TileResult(name=path.name, error=error)))
        else:
            order.append(("ok", len(files)))
            files.append((path.name, data))
    if args.tta is None:
        args.tta = meta.tta
    classified = classify_uploads(loaded, files, tta=args.tta, batch_size=args.batch_size, mpp=args.mpp)
    results = [classified[x] if kind == "ok" else x for kind, x in order]
    cams = _write_cams(args, loaded, results, target) if args.cam else {}

    records = [_record(r, meta.classes, cams.get(id(r))) for r in results]
    failed = sum(1 for r in results if not r.ok)
    payload = {
        "model": {
            "source": loaded.source,
            "label": loaded.label,
            "arch": meta.arch,
            "classes": list(meta.classes),
            "input_size": meta.input_size,
            "dataset": meta.dataset.get("title") or meta.dataset.get("name"),
            "synthetic": meta.synthetic,
        },
        "tta": bool(args.tta),
        "cam": args.cam,
        "results": records,
        "classified": len(results) - failed,
        "failed": failed,
    }
    emit(args, payload, _text(payload))
    return 1 if failed else 0


def _write_cams(args, loaded, results, target) -> dict[int, dict[str, Any]]:
    from PIL import Image

    from histo_core.explain import compute_cams, overlay, uniform_maps

    good = [r for r in results if r.ok]
    if not good:
        return {}
    out_dir = Path(args.cam_dir).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoError(f"--cam-dir {args.cam_dir}: cannot create it ({exc.strerror or exc})") from None
    targets = [target if target is not None else r.pred for r in good]
    maps = compute_cams(loaded.model, loaded.meta, np.stack([r.tile for r in good]), args.cam, targets=targets)
    flat = uniform_maps(maps)
    used: set[str] = set()
    written = {}
    for r, cam, t, is_flat in zip(good, maps, targets, flat):
        cls = safe_filename(loaded.meta.classes[t])
        base = safe_filename(r.name, f"_{args.cam}_{cls}".replace("+", "p"))
        name, k = base, 1
        while name in used:  # two inputs with the same name from different folders
            k += 1
            name = f"{base}-{k}"
        used.add(name)
        path = out_dir / f"{name}.png"
        try:
            with atomic_file(path) as fh:
                Image.fromarray(overlay(r.tile, cam, alpha=args.alpha)).save(fh, format="PNG")
        except OSError as exc:  # /proc, a read-only folder, a full disk
            raise HistoError(
                f"--cam-dir {args.cam_dir}: cannot write the overlays there ({exc.strerror or exc})"
            ) from None
        written[id(r)] = {"path": str(path), "target": loaded.meta.classes[t], "uniform": bool(is_flat)}
    return written


def _record(r, classes, cam: dict | None) -> dict[str, Any]:
    if not r.ok:
        return {"file": r.name, "error": r.error}
    rec = {
        "file": r.name,
        "prediction": classes[r.pred],
        "confidence": round(r.confidence, 6),
        "probabilities": {c: round(float(p), 6) for c, p in zip(classes, r.probs)},
        "size": [r.width, r.height],
        "format": r.mode_note,
        "notes": r.notes,
        "unlike_training": r.unlike_training,
        "unlike_training_score": None if r.ood_score is None else round(float(r.ood_score), 4),
    }
    if cam:
        rec["cam"] = cam
    return rec


def _text(payload: dict[str, Any]) -> str:
    m = payload["model"]
    lines = [
        f"model: {m['label']} ({m['arch']}, {m['input_size']} px, {len(m['classes'])} classes"
        + (", SYNTHETIC demo data" if m["synthetic"] else "")
        + ")"
        + ("  [TTA]" if payload["tta"] else "")
    ]
    for rec in payload["results"]:
        if "error" in rec:
            lines.append(f"ERROR {rec['error']}")  # the message starts with the file name
            continue
        lines.append(f"{rec['file']}: {rec['prediction']} ({rec['confidence']:.3f})")
        if rec["unlike_training"]:
            lines.append(f"  UNLIKE THE TRAINING TILES, treat with care: {rec['unlike_training']}")
        if rec["unlike_training_score"] is not None:
            lines.append(f"  unlike-the-training-tiles score {rec['unlike_training_score']:.2f} (flagged at 1.00)")
        lines.append("  " + "  ".join(f"{c} {p:.3f}" for c, p in rec["probabilities"].items()))
        for note in rec["notes"]:
            lines.append(f"  note: {note}")
        if "cam" in rec:
            cam = rec["cam"]
            flat = "  (UNIFORM map: the method found nothing to highlight)" if cam["uniform"] else ""
            lines.append(f"  {payload['cam']} for {cam['target']}: {cam['path']}{flat}")
    lines.append(f"{payload['classified']} classified, {payload['failed']} could not be read")
    return "\n".join(lines)
