"""`python -m histo_core datasets`: list, download, describe and add datasets.

python -m histo_core datasets [--json] [--data-dir D]          every dataset and whether it is here
python -m histo_core datasets --download pathmnist --size 28   download with a progress bar (stderr)
python -m histo_core datasets --info SPEC [--size N] [--json]  split sizes and class counts of any spec
python -m histo_core datasets --add PATH | --remove PATH       remember / forget a local dataset
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from histo_core import paths
from histo_core.cli import emit
from histo_core.errors import DatasetError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "datasets",
        help="list, download and describe datasets",
        description="Without options: list every registered dataset and whether it is available here.",
    )
    action = p.add_mutually_exclusive_group()
    action.add_argument(
        "--download", metavar="NAME", help="download a registered dataset that can be (a MedMNIST 2D set: pathmnist...)"
    )
    action.add_argument(
        "--info",
        metavar="SPEC",
        help="describe a dataset: registered name or path (.npz, .csv manifest, image folder, PCam folder)",
    )
    action.add_argument("--add", metavar="PATH", help="validate a local dataset path and add it to the list")
    action.add_argument("--remove", metavar="PATH", help="forget a local dataset path (files are kept)")
    p.add_argument(
        "--size",
        type=_tile_size,
        help="MedMNIST size (28, 64, 128, 224) or the tile size image folders "
        "and CSV manifests are decoded to (default: min(64, native))",
    )
    p.add_argument("--as-rgb", action="store_true", help="with --info: expand grayscale sets to 3 channels")
    p.add_argument("--seed", type=int, default=0, help="with --info: seed of the stratified split (folders, CSV)")
    p.add_argument("--timeout", type=float, default=10.0, help="with --download: network timeout in seconds")
    p.add_argument("--data-dir", help="dataset cache (default: $HISTO_DATA_DIR, else ~/.medmnist)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.download:
        return _download(args)
    if args.info:
        return _info(args)
    if args.add:
        return _add(args)
    if args.remove:
        return _remove(args)
    return _list(args)


# -- progress -------------------------------------------------------------------------------------------


class ProgressBar:
    """A one-line text progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, label: str, unit: str = ""):
        self.label, self.unit, self._last, self._drawn = label, unit, 0.0, False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and done != total:
            return
        self._last, self._drawn = now, True
        if total:
            frac = min(done / total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"{self.label} [{bar:<30}] {frac:4.0%} {self._fmt(done)}/{self._fmt(total)}"
        else:
            text = f"{self.label} {self._fmt(done)}"
        print(f"\r{text}", end="", file=sys.stderr, flush=True)

    def _fmt(self, n: int) -> str:
        return f"{n / 1e6:.1f} MB" if self.unit == "bytes" else str(n)

    def close(self) -> None:
        if self._drawn:
            print(file=sys.stderr, flush=True)


# -- actions --------------------------------------------------------------------------------------------


def _download(args: argparse.Namespace) -> int:
    from histo_core.datasets import dataset_status, download_dataset

    name = args.download.strip().lower()
    size = args.size or 28
    existed = dataset_status(name, size, args.data_dir).present
    bar = ProgressBar(f"{args.download} {size}px", unit="bytes")
    try:
        path = download_dataset(name, size, data_dir=args.data_dir, progress=bar, timeout=args.timeout)
    finally:
        bar.close()
    payload = {"dataset": args.download.lower(), "size": size, "path": str(path), "already_present": existed}
    emit(args, payload, f"{path} already present" if existed else f"downloaded {path}")
    return 0


def _tile_size(text: str) -> int:
    """--size: a whole number of pixels, 1 to MAX_TILE_SIZE (a negative or absurd size is refused, not ignored)."""
    from histo_core.config import MAX_TILE_SIZE

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value <= MAX_TILE_SIZE:
        raise argparse.ArgumentTypeError(f"must be a tile size in pixels from 1 to {MAX_TILE_SIZE}, got {text!r}")
    return value


def _open(args: argparse.Namespace, spec: str):
    from histo_core.datasets import open_dataset

    bar = ProgressBar("decoding images")
    try:
        return open_dataset(
            spec, size=args.size, as_rgb=args.as_rgb, data_dir=args.data_dir, seed=args.seed, progress=bar
        )
    finally:
        bar.close()


def _info(args: argparse.Namespace) -> int:
    from histo_core.datasets.stats import dataset_summary

    summary = dataset_summary(_open(args, args.info))
    emit(args, summary, describe_text(summary))
    return 0


def describe_text(summary: dict[str, Any]) -> str:
    info = summary["info"]
    h, w, c = summary["tile_shape"] or (info["size"], info["size"], info["channels"])
    lines = [
        f"{info['title']}" + ("  [SYNTHETIC]" if info["synthetic"] else ""),
        f"  source: {info['source']}  location: {info['location']}",
        f"  task: {info['task']}, {info['num_classes']} classes, tiles {h}x{w}x{c}",
        "  splits: " + ", ".join(f"{s} {n}" for s, n in summary["split_sizes"].items()),
    ]
    splits = list(summary["class_counts"])
    width = max(len(name) for name in info["classes"]) + 2
    lines.append("  " + "class".ljust(width) + "".join(s.rjust(8) for s in splits))
    for name in info["classes"]:
        lines.append("  " + name.ljust(width) + "".join(str(summary["class_counts"][s][name]).rjust(8) for s in splits))
    extra = info.get("extra") or {}
    for note in extra.get("notes", []):
        lines.append(f"  note: {note}")
    if extra.get("skipped"):
        shown = "; ".join(extra["skipped"][:5])
        more = f" (+{len(extra['skipped']) - 5} more)" if len(extra["skipped"]) > 5 else ""
        lines.append(f"  skipped {len(extra['skipped'])} file(s): {shown}{more}")
    if info["license"]:
        lines.append(f"  license: {info['license']}")
    if info["citation"]:
        lines.append(f"  cite: {info['citation']}")
    return "\n".join(lines)


def _add(args: argparse.Namespace) -> int:
    from histo_core.datasets.catalog import add_local_dataset

    bar = ProgressBar("decoding images")
    try:
        ds = add_local_dataset(args.add, args.data_dir, progress=bar)
    finally:
        bar.close()
    payload = {"added": ds.info.name, "title": ds.info.title, "split_sizes": ds.split_sizes()}
    emit(args, payload, f"added {ds.info.title}: {ds.info.name}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from histo_core.datasets.catalog import remove_local_dataset

    if not remove_local_dataset(args.remove, args.data_dir):
        raise DatasetError(f"{args.remove}: not in the list of added datasets (see `python -m histo_core datasets`)")
    emit(args, {"removed": args.remove}, f"removed {args.remove} from the list (files untouched)")
    return 0


# -- listing --------------------------------------------------------------------------------------------


def dataset_listing(data_dir: str | None = None) -> dict[str, Any]:
    """Every registered dataset with its availability here (per size), classes and split sizes."""
    from histo_core.datasets import dataset_statuses
    from histo_core.datasets.catalog import local_dataset_entries

    rows = []
    for e in dataset_statuses(data_dir):
        row: dict[str, Any] = {
            "name": e.spec,
            "title": e.title,
            "source": e.source,
            "supported": e.supported,
            "available": e.present,
            "availability": e.availability,
            "downloadable": e.downloadable,
            "classes": list(e.classes),
            "sizes": e.size_status,
            "split_sizes": e.split_sizes,
            "channels": e.channels,
            "location": e.location,
            "license": e.license,
            **e.details,
        }
        if e.synthetic:
            row["synthetic"] = True
        if e.note:
            row["note"] = e.note
        if e.missing:
            row["missing"] = e.missing
        rows.append(row)
    local = [
        {
            "spec": e["path"],
            "title": e.get("title", ""),
            "source": e.get("source", ""),
            "available": Path(e["path"].split("?", 1)[0]).exists(),
        }
        for e in local_dataset_entries(data_dir)
    ]
    return {"data_dir": str(paths.data_dir(data_dir)), "datasets": rows, "local": local}


def listing_text(listing: dict[str, Any]) -> str:
    lines = [
        f"data dir: {listing['data_dir']}",
        "",
        f"{'NAME':<16}{'SOURCE':<11}{'AVAILABLE HERE':<22}{'CLASSES':>8}  TRAIN/VAL/TEST",
    ]
    for row in listing["datasets"]:
        where = row["availability"]
        sizes = "/".join(str(row["split_sizes"].get(s, "-")) for s in ("train", "val", "test"))
        note = f"  ({row['note']})" if row.get("note") else ""
        lines.append(f"{row['name']:<16}{row['source']:<11}{where:<22}{len(row['classes']):>8}  {sizes}{note}")
    if listing["local"]:
        lines += ["", "added locally:"]
        for e in listing["local"]:
            lines.append(f"  {e['spec']}  ({e['title']}{'' if e['available'] else ', MISSING'})")
    lines += [
        "",
        "download: python -m histo_core datasets --download FLAG --size 28|64|128|224",
        "describe: python -m histo_core datasets --info NAME_OR_PATH",
    ]
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    listing = dataset_listing(args.data_dir)
    emit(args, listing, listing_text(listing))
    return 0
