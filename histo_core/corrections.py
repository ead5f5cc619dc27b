"""Label corrections: a user's marks on training tiles (relabel to a class, exclude, confirm), kept in a file of
their own under the data dir, never in the dataset.

    identity = dataset_identity(ds)                    # what the marks belong to: classes, split sizes, labels
    path = corrections_path(identity)                  # <data dir>/corrections/<name>-<hash>.json
    add_marks(path, identity, [{"tile": "train:12", "action": "relabel", "label": 3, "given": 1}])
    remove_marks(path, ["train:12"])                   # undo
    corr = load_corrections(path); corr.to_csv()       # list, export
    labels, keep, applied = apply_corrections(corr, rows, labels, train_len)   # what a run trains on

A tile is named by its split and its row in that split ("train:12", "val:3"). A dataset is named by its identity:
its class names, split sizes and a hash of every split's labels, so the file follows the dataset when its folder
moves and is refused when the dataset's labels or tiles changed. Corrections apply to training labels only:
`--corrections FILE` changes the labels of the tiles a run trains on (train, or train+val) and drops the excluded
ones from training; validation and test labels are never changed, and nothing else about the run changes.
Every write is one atomic replace of the whole file (fsutil.atomic_file) under a file lock (procs.one_start), so
two browser tabs marking at once lose nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histo_core import paths
from histo_core.errors import ConfigError, HistoError
from histo_core.fsutil import write_json_atomic

FOLDER = "corrections"
ACTIONS = ("relabel", "exclude", "confirm")
VERSION = 1
CSV_COLUMNS = ("tile", "split", "row", "action", "given", "label", "run", "source", "marked_at")


@dataclass
class Corrections:
    identity: dict[str, Any]
    marks: dict[str, dict[str, Any]] = field(default_factory=dict)  # tile id -> mark
    path: Path | None = None

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.identity.get("classes", [])]

    def counts(self) -> dict[str, int]:
        out = {a: 0 for a in ACTIONS}
        for m in self.marks.values():
            out[m["action"]] += 1
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One dict per mark (CSV_COLUMNS), class names spelled out, in tile order."""
        names = self.classes
        out = []
        for tile, m in sorted(self.marks.items(), key=lambda kv: _tile_sort_key(kv[0])):
            split, row = parse_tile(tile)
            out.append(
                {
                    "tile": tile,
                    "split": split,
                    "row": row,
                    "action": m["action"],
                    "given": _name(names, m.get("given")),
                    "label": _name(names, m.get("label")) if m["action"] == "relabel" else "",
                    "run": m.get("run", ""),
                    "source": m.get("source", ""),
                    "marked_at": m.get("marked_at", ""),
                }
            )
        return out

    def to_csv(self) -> bytes:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for r in self.rows():
            w.writerow(r)
        return buf.getvalue().encode("utf-8")

    def digest(self) -> str:
        """Names this set of marks (a run records it): sha256 of the marks, sorted."""
        text = json.dumps(self.marks, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _name(names: list[str], label: Any) -> str:
    if label is None or label == "":
        return ""
    i = int(label)
    return names[i] if 0 <= i < len(names) else str(i)


# -- identity and location --------------------------------------------------------------------------------------


def dataset_identity(ds: Any) -> dict[str, Any]:
    """What a dataset's marks belong to: its name and title (for people), its classes, split sizes and a hash of
    every split's labels (what decides whether a file applies)."""
    h = hashlib.sha256()
    for name in sorted(ds.splits):
        h.update(name.encode())
        h.update(np.ascontiguousarray(ds.splits[name].labels, dtype=np.int64).tobytes())
    return {
        "name": str(ds.info.name),
        "title": str(ds.info.title),
        "classes": [str(c) for c in ds.info.classes],
        "splits": {k: int(v) for k, v in ds.split_sizes().items()},
        "labels_sha256": h.hexdigest(),
    }


def identity_key(identity: dict[str, Any]) -> str:
    """The file name stem of a dataset's corrections: a readable name and the hash of what identifies it."""
    core = {k: identity[k] for k in ("classes", "splits", "labels_sha256")}
    digest = hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:12]
    stem = Path(str(identity.get("name", "dataset")).split("?", 1)[0].rstrip("/")).stem or "dataset"
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', stem)[:40].strip('-.') or 'dataset'}-{digest}"


def corrections_dir(data_dir: str | os.PathLike | None = None) -> Path:
    return paths.data_dir(data_dir) / FOLDER


def corrections_path(identity: dict[str, Any], data_dir: str | os.PathLike | None = None) -> Path:
    return corrections_dir(data_dir) / f"{identity_key(identity)}.json"


def list_corrections(data_dir: str | os.PathLike | None = None) -> list[Corrections]:
    """Every readable corrections file under the data dir, by file name."""
    root = corrections_dir(data_dir)
    out = []
    for p in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            out.append(load_corrections(p))
        except HistoError:
            continue
    return out


# -- reading and writing ----------------------------------------------------------------------------------------


def parse_tile(tile: str) -> tuple[str, int]:
    """("train", 12) for "train:12". Raises HistoError for anything else."""
    m = re.fullmatch(r"(train|val|test):(\d{1,12})", str(tile))
    if not m:
        raise HistoError(f"{str(tile)[:60]!r}: not a tile id (split:row, e.g. train:12)")
    return m.group(1), int(m.group(2))


def _tile_sort_key(tile: str) -> tuple[int, int]:
    split, row = parse_tile(tile)
    return ("train", "val", "test").index(split), row


def load_corrections(path: str | os.PathLike) -> Corrections:
    """The file at `path`. Raises HistoError (one line) when it is missing, unreadable or not a corrections file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise HistoError(f"{path}: no such corrections file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HistoError(f"{path}: not a readable corrections file ({exc.__class__.__name__})") from None
    problem = _doc_problem(doc)
    if problem:
        raise HistoError(f"{path}: not a corrections file ({problem})")
    return Corrections(identity=doc["dataset"], marks=doc["marks"], path=path)


def _doc_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("dataset"), dict) or not isinstance(doc.get("marks"), dict):
        return "no dataset identity and marks"
    ident = doc["dataset"]
    if not isinstance(ident.get("classes"), list) or not isinstance(ident.get("splits"), dict):
        return "the dataset identity has no classes and split sizes"
    k = len(ident["classes"])
    for tile, m in doc["marks"].items():
        try:
            parse_tile(tile)
        except HistoError as exc:
            return str(exc)
        if not isinstance(m, dict) or m.get("action") not in ACTIONS:
            return f"{tile}: the action must be one of {', '.join(ACTIONS)}"
        if m["action"] == "relabel" and not (isinstance(m.get("label"), int) and 0 <= m["label"] < k):
            return f"{tile}: relabel needs a class index from 0 to {k - 1}"
    return None


def _write(path: Path, corr: Corrections) -> None:
    write_json_atomic(path, {"version": VERSION, "dataset": corr.identity, "marks": corr.marks})


def _locked_update(path: Path, identity: dict[str, Any] | None, change: Any) -> Corrections:
    from histo_core.procs import one_start

    path.parent.mkdir(parents=True, exist_ok=True)
    with one_start(path.parent / f".{path.name}.lock"):
        if path.exists():
            corr = load_corrections(path)
            if identity is not None and identity_key(identity) != identity_key(corr.identity):
                raise HistoError(f"{path}: holds the corrections of another dataset ({corr.identity.get('title')})")
        elif identity is None:
            raise HistoError(f"{path}: no such corrections file")
        else:
            corr = Corrections(identity=identity, path=path)
        change(corr)
        _write(path, corr)
    return corr


def add_marks(
    path: str | os.PathLike, identity: dict[str, Any], marks: list[dict[str, Any]], *, run: str = "", source: str = ""
) -> Corrections:
    """Record `marks` ({"tile", "action", "label" for relabel, "given"}); a tile marked again keeps the last mark.
    Test tiles are refused: corrections change training labels only."""
    k = len(identity["classes"])
    clean: dict[str, dict[str, Any]] = {}
    for m in marks:
        split, row = parse_tile(m.get("tile", ""))
        if split == "test":
            raise HistoError(f"{m['tile']}: test labels are never corrected (corrections change training labels only)")
        if not 0 <= row < int(identity["splits"].get(split, 0)):
            raise HistoError(f"{m['tile']}: the {split} split has {identity['splits'].get(split, 0)} tiles")
        action = m.get("action")
        if action not in ACTIONS:
            raise HistoError(f"{m['tile']}: the action must be one of {', '.join(ACTIONS)}, got {action!r}")
        entry: dict[str, Any] = {"action": action, "marked_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        if action == "relabel":
            label = m.get("label")
            if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < k:
                raise HistoError(f"{m['tile']}: relabel needs a class index from 0 to {k - 1}, got {label!r}")
            entry["label"] = int(label)
        if m.get("given") is not None:
            entry["given"] = int(m["given"])
        entry.update(run=str(m.get("run", run)), source=str(m.get("source", source)))
        clean[f"{split}:{row}"] = entry
    return _locked_update(Path(path), identity, lambda c: c.marks.update(clean))


def remove_marks(path: str | os.PathLike, tiles: list[str]) -> Corrections:
    """Undo the marks of `tiles` (tiles without a mark are ignored)."""

    def drop(c: Corrections) -> None:
        for t in tiles:
            c.marks.pop(str(t), None)

    return _locked_update(Path(path), None, drop)


# -- applying ---------------------------------------------------------------------------------------------------


def check_corrections(path: str | os.PathLike, identity: dict[str, Any]) -> Corrections:
    """The corrections at `path`, refused (ConfigError naming --corrections) unless made for this dataset."""
    try:
        corr = load_corrections(path)
    except HistoError as exc:
        raise ConfigError(f"--corrections: {exc}") from None
    if identity_key(corr.identity) != identity_key(identity):
        raise ConfigError(
            f"--corrections {path}: made for another dataset or another version of it "
            f"({corr.identity.get('title', '?')}, splits {corr.identity.get('splits')}); this run's dataset is "
            f"{identity.get('title', '?')}, splits {identity.get('splits')}"
        )
    return corr


def training_tile_ids(rows: np.ndarray, train_len: int) -> list[str]:
    """Tile ids of rows of a run's training set (train, or train then val for train+val)."""
    return [f"train:{r}" if r < train_len else f"val:{r - train_len}" for r in np.asarray(rows, np.int64).tolist()]


def apply_corrections(
    corr: Corrections, rows: np.ndarray, labels: np.ndarray, train_len: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(labels with the relabels applied, keep mask (False for excluded tiles), what was applied) for the training
    tiles at `rows` (rows of train, or train then val) whose current labels are `labels`. Marks on tiles the run
    does not train on (val tiles of a train-only run, tiles left out by --max-train-samples) change nothing."""
    labels = np.asarray(labels, np.int64).copy()
    keep = np.ones(len(labels), bool)
    relabelled = excluded = confirmed = 0
    for i, tile in enumerate(training_tile_ids(rows, train_len)):
        m = corr.marks.get(tile)
        if m is None:
            continue
        if m["action"] == "relabel":
            relabelled += int(labels[i] != m["label"])
            labels[i] = m["label"]
        elif m["action"] == "exclude":
            keep[i] = False
            excluded += 1
        else:
            confirmed += 1
    applied = {
        "file": str(corr.path) if corr.path else "",
        "key": identity_key(corr.identity),
        "digest": corr.digest(),
        "marks": len(corr.marks),
        "relabelled": relabelled,
        "excluded": excluded,
        "confirmed": confirmed,
    }
    return labels, keep, applied


def summary_line(applied: dict[str, Any] | None) -> str:
    """ "corrections <file>: 12 relabelled, 3 excluded, 5 confirmed" for a run's record (empty without)."""
    if not applied:
        return ""
    return (
        f"corrections {Path(applied['file']).name} ({applied['digest']}): {applied['relabelled']} relabelled, "
        f"{applied['excluded']} excluded, {applied['confirmed']} confirmed"
    )
