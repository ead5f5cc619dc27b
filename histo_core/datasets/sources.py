"""The dataset source registry: one `DatasetSource` per kind of dataset, and the one place they are listed.

A source knows how to recognise a spec (a registered name it owns, or a path of its kind), open it into a
`TileDataset`, and describe it without opening it: name, classes, split sizes, tile sizes, whether it is here,
whether it can be downloaded and, when it is not here, what is missing. `open_dataset`, the catalog
(`catalog.available_datasets`), `python -m histo_core datasets` and the pages all ask the registry; none of them
knows the kinds.

    source, base, options = source_for("manifest.csv?label=dx")    # the CSV source, its path, {'label': 'dx'}
    entries = dataset_statuses()                                    # every registered dataset and its state
    ds = open_dataset("pathmnist", size=64)

Adding a kind is one class: subclass `DatasetSource` (see synthetic.py for the smallest one) and call
`register_source(MySource())` in its module (a built-in one is imported by `histo_core/datasets/__init__.py`;
its `order` places it among the others). This module imports no kind.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from histo_core.datasets.base import TileDataset
from histo_core.errors import DatasetError

Progress = Callable[[int, int], None]  # (done, total)
DECODE_SIZES: tuple[int | None, ...] = (None, 28, 32, 64, 96, 128, 224)  # decoded kinds: None = min(64, native)


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset as the catalog, the CLI listing and the pickers show it, without opening it."""

    spec: str  # what open_dataset() takes
    title: str
    source: str  # the kind: synthetic | medmnist | pcam | csv | npz | folder | ... (a source's `kind`)
    sizes: tuple[int | None, ...] = ()  # sizes it can be opened at here; () = its native size only
    channels: int | None = None  # 1 for grayscale sets (offer as_rgb), None when unknown
    location: str = ""
    present: bool = True  # can be opened here now
    synthetic: bool = False
    user_added: bool = False
    downloadable: bool = False  # `datasets --download` and the Datasets page can fetch it
    all_sizes: tuple[int | None, ...] = ()  # every size it exists at, downloadable ones included
    missing: str = ""  # when not present: what is missing and how to get it
    availability: str = ""  # short text for listings: "sizes 28,64", "not downloaded", "yes (generated)"
    supported: bool = True
    note: str = ""
    tag: str = ""  # shown after the title in pickers ("MedMNIST")
    classes: tuple[str, ...] = ()
    split_sizes: dict[str, int | None] = field(default_factory=dict)
    size_status: dict[str, dict[str, Any]] = field(default_factory=dict)  # per size: available, file, split_sizes
    description: str = ""
    license: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # kind-specific facts for listings

    @property
    def name(self) -> str:
        return self.spec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DatasetSource:
    """One kind of dataset. Override what applies: `names`/`entries` for registered datasets, `recognises` for
    paths, `open` always, `download` when `downloadable`."""

    kind: str = ""  # also the `source` of its entries
    label: str = ""  # what a spec of this kind is, in messages: "CSV manifest", "image folder"
    takes_options: bool = False  # `spec?name=value` options (CSV column names)
    downloadable: bool = False
    path_sizes: tuple[int | None, ...] = ()  # sizes a path of this kind can be opened at; () = native only
    path_channels: int | None = None  # channels of a path of this kind, None when unknown before opening
    order: int = 50  # place among the sources registered with first=False: lower is listed and tried first

    def names(self) -> tuple[str, ...]:
        """Registered names this source owns (lower case)."""
        return ()

    def recognises(self, path: Path) -> bool:
        """True when `path` (which may not exist yet) is a dataset of this kind."""
        return False

    def open(
        self,
        spec: str,
        options: dict[str, str],
        *,
        size: int | None,
        as_rgb: bool,
        data_dir: str | os.PathLike | None,
        seed: int,
        progress: Progress | None,
    ) -> TileDataset:
        raise NotImplementedError

    def entries(self, data_dir: str | os.PathLike | None = None) -> list[DatasetEntry]:
        """Its registered datasets, each with whether it is here."""
        return []

    def status(self, name: str, size: int | None = None, data_dir: str | os.PathLike | None = None) -> DatasetEntry:
        """One registered dataset; `size` narrows `present`/`location` to that size where sizes are files."""
        return next(e for e in self.entries(data_dir) if e.spec == name)

    def download(
        self, name: str, size: int | None, *, data_dir=None, progress: Progress | None = None, timeout: float = 10.0
    ) -> Path:
        raise DatasetError(f"{name}: {self.label or self.kind} datasets cannot be downloaded by Histo Explorer")

    def known_scale(self, dataset: dict[str, Any]) -> tuple[int, float] | None:
        """(source pixels one tile covers, µm per source pixel) known for a dataset of this kind (a
        `DatasetInfo.to_dict()`, as dataset.json and model cards keep it), or None."""
        return None

    def original_file(self, info: Any, tile_name: str) -> Path | None:
        """The original image file behind a tile (`Split.tile_names` entry) of a dataset of this kind, or None
        when its tiles have no file of their own."""
        return None


_SOURCES: list[DatasetSource] = []  # each kind's module registers its source when imported (timm-style)


def sources() -> list[DatasetSource]:
    """Every registered source; the built-in kinds are imported (and so registered) by `histo_core.datasets`."""
    return _SOURCES


def register_source(source: DatasetSource, *, first: bool = True) -> DatasetSource:
    """Add a kind. `first`: ahead of every registered one (so a specific kind wins over a plain folder); else
    placed by its `order` (how the built-in kinds register themselves)."""
    taken = {n for s in sources() for n in s.names()} & set(source.names())
    if taken:
        raise DatasetError(f"dataset name(s) {', '.join(sorted(taken))} already registered")
    after = [i for i, s in enumerate(_SOURCES) if s.order > source.order]
    _SOURCES.insert(0 if first else (after[0] if after else len(_SOURCES)), source)
    return source


def unregister_source(source: DatasetSource) -> None:
    if source in sources():
        sources().remove(source)


def kind_source(kind: str) -> DatasetSource | None:
    """The source of kind `kind` (a `DatasetInfo.source`), or None."""
    return next((s for s in sources() if s.kind == kind), None)


def dataset_flag(dataset: dict[str, Any]) -> str:
    """The set a dataset dict names, lower case: a MedMNIST flag (`extra.flag`) or its name's stem before '_'
    ('pathmnist_64.npz' -> 'pathmnist')."""
    flag = str((dataset.get("extra") or {}).get("flag") or dataset.get("name") or "").lower()
    return Path(flag).stem.split("_")[0] if flag else flag


def source_scale(dataset: dict[str, Any]) -> tuple[int | None, float | None]:
    """(source pixels one training tile covered, µm per source pixel), each None when unknown: recorded by the
    dataset (extra "native_tile_px", "mpp") or known to a source (`DatasetSource.known_scale`)."""
    extra = dataset.get("extra") or {}
    px = extra.get("native_tile_px") or extra.get("native_size") or dataset.get("native_tile_px")
    mpp = extra.get("mpp") or dataset.get("mpp")
    known = next((k for s in sources() if (k := s.known_scale(dataset))), None)
    if known:
        px, mpp = px or known[0], mpp or known[1]
    return (int(px) if px else None), (float(mpp) if mpp else None)


def original_file(info: Any, tile_name: str) -> Path | None:
    """The original image file behind a tile of `info`'s dataset (folder and CSV kinds), or None."""
    source = kind_source(getattr(info, "source", ""))
    return source.original_file(info, tile_name) if source else None


def registered_names() -> list[str]:
    return [n for s in sources() for n in s.names()]


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split 'manifest.csv?image=file&label=dx' into ('manifest.csv', {'image': 'file', 'label': 'dx'}).

    A spec that names an existing path is taken whole, so a file name containing '?' still works.
    """
    spec = str(spec).strip()
    if "?" not in spec or Path(spec).expanduser().exists():
        return spec, {}
    base, query = spec.split("?", 1)
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise DatasetError(f"{spec}: option {part!r} must look like name=value (e.g. {base}?label=diagnosis)")
        options[key.strip().lower()] = urllib.parse.unquote(value.strip())
    return base.strip(), options


def named_source(name: str) -> DatasetSource | None:
    """The source owning registered name `name`, or None."""
    name = name.strip().lower()
    return next((s for s in sources() if name in s.names()), None)


def path_source(path: str | os.PathLike) -> DatasetSource | None:
    """The first source recognising `path` (which may not exist), or None."""
    p = Path(path).expanduser()
    return next((s for s in sources() if s.recognises(p)), None)


def source_for(spec: str) -> tuple[DatasetSource | None, str, dict[str, str]]:
    """(source, base spec, options) for a spec: a registered name's source, else the path's; None when neither."""
    base, options = parse_spec(spec)
    source = named_source(base) if base else None
    if source is None and base:
        source = path_source(base)
    return source, base, options


def describe_spec(spec: str) -> str:
    """What a spec points at, for messages: 'registered dataset', 'CSV manifest', 'image folder', 'path'."""
    source, base, _ = source_for(spec)
    if source is None:
        return "path"
    return "registered dataset" if named_source(base) else source.label


def dataset_statuses(data_dir: str | os.PathLike | None = None) -> list[DatasetEntry]:
    """Every registered dataset, in display order, with whether it is here."""
    return [e for s in sources() for e in s.entries(data_dir)]


def dataset_status(name: str, size: int | None = None, data_dir: str | os.PathLike | None = None) -> DatasetEntry:
    """One registered dataset's entry (at `size` for kinds whose sizes are separate files)."""
    source = named_source(name)
    if source is None:
        raise DatasetError(f"{name}: not a registered dataset (see `python -m histo_core datasets`)")
    return source.status(name.strip().lower(), size, data_dir)


def download_dataset(
    name: str, size: int | None = None, *, data_dir=None, progress: Progress | None = None, timeout: float = 10.0
) -> Path:
    """Fetch a registered dataset that can be downloaded; returns the file."""
    source = named_source(name)
    if source is None:
        downloadable = [e.spec for e in dataset_statuses(data_dir) if e.downloadable and e.supported]
        raise DatasetError(f"{name}: not a dataset that can be downloaded (one of {', '.join(downloadable[:8])}, ...)")
    return source.download(name.strip().lower(), size, data_dir=data_dir, progress=progress, timeout=timeout)


def open_dataset(
    spec: str | os.PathLike,
    *,
    size: int | None = None,
    as_rgb: bool = False,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> TileDataset:
    """Open a dataset by registered name or path. Raises `DatasetError` with a specific message.

    `size`: MedMNIST file size (28/64/128/224), synthetic tile size, or the size image folders and CSV
    manifests are decoded to (None: min(64, native)); npz and PCam files are served at their own size.
    `progress(done, total)` is called while decoding images or decompressing PCam files.
    """
    source, base, options = source_for(str(spec))
    if not base:
        raise DatasetError("no dataset given: name a registered dataset (e.g. 'synthetic') or a path")
    if named_source(base) is None and not Path(base).expanduser().exists():
        raise DatasetError(
            f"{base}: not a registered dataset and no such file or folder "
            f"(registered: {', '.join(registered_names()[:6])}, ...; see `python -m histo_core datasets`)"
        )
    if source is None:
        kinds = ", ".join(s.label for s in sources() if s.label and not s.names())
        raise DatasetError(f"{base}: unsupported dataset file; use one of: {kinds}")
    if options and not source.takes_options:
        with_options = " and ".join(f"{s.label}s" for s in sources() if s.takes_options)
        what = "registered datasets" if named_source(base) else f"{source.label}s"
        raise DatasetError(f"{base}: options ({', '.join(options)}) are only for {with_options}; {what} take none")
    name_or_path = base.lower() if named_source(base) else base
    return source.open(name_or_path, options, size=size, as_rgb=as_rgb, data_dir=data_dir, seed=seed, progress=progress)
