"""Which datasets can be opened here: the registered ones that are present (the synthetic demo, downloaded
MedMNIST sets, PCam...; each source says, see `sources.py`), and local paths the user added (kept in
`<data dir>/histo_datasets.json`).

The Train, Evaluate and Datasets pages list `available_datasets()`; adding a path validates it by
opening it, so the list never offers something that fails to open for a reason known at add time.
"""

from __future__ import annotations

import os
from pathlib import Path

from histo_core import paths
from histo_core.datasets.sources import (
    DatasetEntry,
    Progress,
    dataset_statuses,
    describe_spec,
    named_source,
    open_dataset,
    parse_spec,
    path_source,
    registered_names,
)
from histo_core.errors import DatasetError
from histo_core.fsutil import write_json_atomic

CATALOG_FILE = paths.DATASETS_FILE
_catalog_path = paths.datasets_file
local_dataset_entries = paths.added_datasets  # the user-added datasets as stored: {path, title, source, kind, channels}


def local_datasets(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Paths the user added, in the order added."""
    return [e["path"] for e in local_dataset_entries(data_dir)]


def add_local_dataset(
    path: str | os.PathLike, data_dir: str | os.PathLike | None = None, *, progress: Progress | None = None
):
    """Open `path` (npz, image folder, CSV manifest, PCam folder) to validate it, then remember it.

    Returns the opened TileDataset. Raises DatasetError with the reason it cannot be used.
    """
    text = str(path).strip()
    if not text:
        raise DatasetError("no path given: type the path of an .npz, a .csv manifest, an image folder or a PCam folder")
    base, options = parse_spec(text)
    if not Path(base).expanduser().exists():
        raise DatasetError(f"{base}: no such file or folder")
    spec = canonical_spec(text)
    ds = open_dataset(spec, data_dir=data_dir, progress=progress)
    entries = [e for e in local_dataset_entries(data_dir) if e["path"] != spec]
    entries.append(
        {
            "path": spec,
            "title": ds.info.title,
            "source": ds.info.source,
            "kind": describe_spec(spec),
            "channels": ds.info.native_channels or ds.info.channels,
        }
    )
    _catalog_path(data_dir).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(_catalog_path(data_dir), {"datasets": entries})
    return ds


def canonical_spec(spec: str) -> str:
    """The one spelling of a dataset spec that the catalog lists: a path with `~`, `..` and symlinks resolved
    (options kept), so a link or a typed path reaching a listed dataset by another way (a root on a mount,
    linked from home) finds it; anything else as given."""
    text = str(spec).strip()
    base, options = parse_spec(text)
    path = Path(base).expanduser()
    if not base or named_source(base) is not None or not path.exists():
        return text
    return str(path.resolve()) + (f"?{text.split('?', 1)[1]}" if options else "")


def remove_local_dataset(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> bool:
    """Forget a user-added path (files are not touched). True when it was in the list."""
    text = str(path).strip()
    entries = local_dataset_entries(data_dir)
    keep = [e for e in entries if e["path"] != text and e["path"] != _resolved_or_same(text)]
    if len(keep) == len(entries):
        return False
    write_json_atomic(_catalog_path(data_dir), {"datasets": keep})
    return True


def _resolved_or_same(text: str) -> str:
    try:
        return str(Path(text).expanduser().resolve())
    except OSError:
        return text


def available_datasets(data_dir: str | os.PathLike | None = None) -> list[DatasetEntry]:
    """Registered datasets present here (in the registry's order: synthetic demo first), then user-added paths."""
    out = [e for e in dataset_statuses(data_dir) if e.present and e.supported]
    for e in local_dataset_entries(data_dir):
        base = e["path"].split("?", 1)[0]
        if not Path(base).exists():
            continue  # moved or deleted since it was added; still in the file, so it reappears if restored
        source = path_source(base)
        out.append(
            DatasetEntry(
                e["path"],
                e.get("title") or Path(base).name,
                e.get("source") or (source.kind if source else "path"),
                sizes=source.path_sizes if source else (),
                channels=e.get("channels"),
                location=base,
                user_added=True,
                tag=source.label if source else "path",
            )
        )
    return out


def default_dataset_spec(data_dir: str | os.PathLike | None = None) -> str:
    """The first real dataset available here; the synthetic demo when there is none."""
    real = [d for d in available_datasets(data_dir) if not d.synthetic]
    return real[0].spec if real else "synthetic"


def check_web_spec(spec: str, data_dir: str | os.PathLike | None = None) -> str:
    """Refuse a dataset spec the web app must not open: a path outside `paths.data_roots()` (typed, from a
    URL, through a symlink or `..`). Registered names (synthetic, MedMNIST flags, pcam) are always allowed.

    Checked before anything looks at the file, and the message is the same whatever is there (an existing
    file, a folder, nothing), so it reveals nothing about the server. Returns `spec` unchanged; raises
    DatasetError(paths.OUTSIDE_ROOTS_MESSAGE). The CLI does not call this: it opens any path."""
    text = str(spec).strip()
    if not text:
        return text
    if text.lower() in registered_names():
        return text
    roots = paths.data_roots(data_dir)
    candidates = [text] + ([text.split("?", 1)[0]] if "?" in text else [])
    if all(c.strip() and paths.inside_roots(c.strip(), roots) for c in candidates):
        return text
    raise DatasetError(paths.OUTSIDE_ROOTS_MESSAGE)
