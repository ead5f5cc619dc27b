"""A CSV manifest: one row per image, with an image path column and a label column.

    path,label,split
    tiles/a.png,tumour,train
    tiles/b.png,stroma,test

Column names are found case-insensitively among common names (see PATH_COLUMNS, LABEL_COLUMNS,
SPLIT_COLUMNS) or given in the spec: `manifest.csv?image=file_name&label=diagnosis&split=fold`.
Relative paths are relative to the CSV's folder. Labels are class names (sorted alphabetically into
class indices) or integers 0..K-1. Without a split column the split is stratified and seeded.
Decoding, resizing and caching are shared with image folders (`histo_core.datasets.decoded_tiles`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from histo_core import paths
from histo_core.datasets.base import SPLITS, TileDataset, check_label_range, split_note, stratified_split
from histo_core.datasets.decoded_tiles import decode_image_files, decoded_dataset
from histo_core.datasets.sources import DECODE_SIZES, DatasetSource, Progress, register_source
from histo_core.errors import DatasetError

PATH_COLUMNS = ("path", "image", "filepath", "file", "filename", "image_path", "img", "tile")
LABEL_COLUMNS = ("label", "class", "target", "labels", "class_name", "category", "y")
SPLIT_COLUMNS = ("split", "subset", "set", "partition")
SPLIT_VALUES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
OPTIONS = ("image", "label", "split")


def _read_table(path: Path):
    import pandas as pd

    try:
        table = pd.read_csv(
            path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig"
        )  # -sig: spreadsheets often start CSVs with a byte-order mark
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({str(exc).splitlines()[0]})") from None
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        raise DatasetError(f"{path}: the manifest has no rows")
    return table


def _column(path: Path, table, given: str | None, candidates: tuple[str, ...], what: str, option: str) -> str:
    """The required column for `what`: the one given in the spec, else the first of `candidates` present."""
    found = _optional_column(path, table, given, candidates, what)
    if found is None:
        raise DatasetError(
            f"{path}: cannot find the {what} column among {', '.join(table.columns)}; name it one of "
            f"{', '.join(candidates[:4])} or give it in the spec: {path.name}?{option}=<column>"
        )
    return found


def _optional_column(path: Path, table, given: str | None, candidates: tuple[str, ...], what: str) -> str | None:
    by_lower = {c.lower(): c for c in table.columns}
    if given:
        if given.lower() not in by_lower:
            raise DatasetError(f"{path}: no column {given!r} for the {what}; columns are {', '.join(table.columns)}")
        return by_lower[given.lower()]
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    return None


def _labels(path: Path, values: list[str], column: str) -> tuple[np.ndarray, list[str]]:
    empty = [i + 2 for i, v in enumerate(values) if not v.strip()]  # +2: header line, 1-based lines
    if empty:
        raise DatasetError(f"{path}: {len(empty)} rows have no {column!r} label (lines {_first(empty)})")
    stripped = [v.strip() for v in values]
    if all(_is_int(v) for v in stripped):
        ints = np.asarray([int(v) for v in stripped], np.int64)
        if ints.min() < 0:
            bad = [i + 2 for i in np.flatnonzero(ints < 0)]
            raise DatasetError(f"{path}: integer labels in {column!r} must be >= 0 (lines {_first(bad)})")
        check_label_range(int(ints.max()), f"{path}: column {column!r}")
        return ints, [str(i) for i in range(int(ints.max()) + 1)]
    classes = sorted(set(stripped))
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[v] for v in stripped], np.int64), classes


def _is_int(v: str) -> bool:
    return v.lstrip("+-").isdigit()


def _first(items: list, n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _splits(path: Path, values: list[str] | None, column: str | None) -> np.ndarray | None:
    if values is None:
        return None
    out = []
    for line, v in enumerate(values, start=2):
        key = v.strip().lower()
        if key not in SPLIT_VALUES:
            raise DatasetError(
                f"{path}: line {line}: the split in column {column!r} is not one of train, val, test "
                "(also accepted: training, valid, validation, dev, testing)"
            )
        out.append(SPLIT_VALUES[key])
    return np.asarray(out)


def open_csv_manifest(
    path: str | os.PathLike,
    *,
    size: int | None = None,
    seed: int = 0,
    as_rgb: bool = False,
    data_dir: str | os.PathLike | None = None,
    options: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> TileDataset:
    path = Path(path).expanduser().resolve()
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DatasetError(f"{path.name}: unknown option(s) {', '.join(unknown)}; CSV options are {', '.join(OPTIONS)}")
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    table = _read_table(path)
    path_col = _column(path, table, options.get("image"), PATH_COLUMNS, "image path", "image")
    label_col = _column(path, table, options.get("label"), LABEL_COLUMNS, "label", "label")
    split_col = _optional_column(path, table, options.get("split"), SPLIT_COLUMNS, "split")

    files = [_resolve(path.parent, p) for p in table[path_col]]
    roots = paths.confined_roots(data_dir)  # a web user's manifest: rows outside the roots are refused as missing
    missing = [line for line, f in enumerate(files, start=2) if paths.member_refused(f, roots) or not f.is_file()]
    if missing:  # line numbers, never the cells themselves: a manifest's values are not echoed back
        what = "not found" if roots is None else paths.MEMBER_REFUSAL
        raise DatasetError(
            f"{path}: {len(missing)} of {len(files)} image paths in column {path_col!r} {what} (relative to "
            f"{path.parent}; lines {_first(missing, 5)})"
        )
    out_lines = [line for line, f in enumerate(files, start=2) if paths.leaves_folder(f, path.parent)]
    labels, classes = _labels(path, list(table[label_col]), label_col)
    if len(classes) < 2:
        raise DatasetError(f"{path}: column {label_col!r} has only one class; need at least 2")
    split_of = _splits(path, list(table[split_col]) if split_col else None, split_col)

    decoded = decode_image_files(files, size=size, data_dir=data_dir, label=path.stem, progress=progress)
    kept = decoded.kept
    labels_kept, names = labels[kept], [str(table[path_col].iloc[i]) for i in kept]
    notes = []
    if out_lines:  # only the command line gets here with such rows: say that it followed them
        notes.append(
            f"{len(out_lines)} rows lead out of the manifest's folder (lines {_first(out_lines, 5)}) and were "
            "followed; the web app refuses rows outside its allowed folders"
        )
    if split_of is None:
        split_indices = stratified_split(labels_kept, seed=seed)
        notes.append(split_note("no split column", split_indices, seed))
    else:
        split_kept = split_of[kept]
        split_indices = {s: np.flatnonzero(split_kept == s) for s in SPLITS if (split_kept == s).any()}
    return decoded_dataset(
        decoded,
        labels_kept,
        names,
        split_indices,
        classes,
        as_rgb=as_rgb,
        name=str(path),
        title=f"{path.name} (CSV manifest, {decoded.size} px)",
        source="csv",
        location=str(path),
        description=f"{len(kept)} images listed in {path.name} (columns {path_col!r}, {label_col!r}"
        f"{f', {split_col!r}' if split_col else ''}), decoded to {decoded.size} px and cached.",
        extra={
            "skipped": decoded.skipped,
            "columns": {"image": path_col, "label": label_col, "split": split_col},
            "cache": str(decoded.cache_file),
            "notes": notes,
        },
    )


def _resolve(base: Path, value: str) -> Path:
    p = Path(value.strip()).expanduser()
    return p if p.is_absolute() else base / p


class CsvManifestSource(DatasetSource):
    """A .csv file listing image paths and labels (`manifest.csv?image=col&label=col&split=col`)."""

    kind = "csv"
    order = 40
    label = "CSV manifest"
    takes_options = True
    path_sizes = DECODE_SIZES

    def recognises(self, path: Path) -> bool:
        return path.suffix.lower() == ".csv" and not path.is_dir()

    def original_file(self, info, tile_name: str) -> Path | None:
        p = Path(tile_name).expanduser()  # a manifest's relative paths are relative to the manifest
        return p if p.is_absolute() else Path(info.location).parent / p

    def open(self, spec, options, *, size, as_rgb, data_dir, seed, progress) -> TileDataset:
        return open_csv_manifest(
            spec, size=size, seed=seed, as_rgb=as_rgb, data_dir=data_dir, options=options, progress=progress
        )


register_source(CsvManifestSource(), first=False)
