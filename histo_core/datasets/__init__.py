"""Dataset registry: a dataset is named by a registered name or by a path.

open_dataset("synthetic")                     # built-in demo, no download
open_dataset("pathmnist", size=28)            # MedMNIST 2D flag, from the data dir
open_dataset("../shared/data/pathmnist-mini/pathmnist.npz")
open_dataset("/data/Kather_texture_2016_image_tiles_5000", size=64)   # class folders
open_dataset("/data/quilt_subset.csv")        # CSV manifest
open_dataset("/data/pcam")                    # folder of PatchCamelyon .h5 files
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from histo_core import paths
from histo_core.datasets.base import SPLITS, DatasetInfo, Split, TileDataset, stratified_split
from histo_core.datasets.decoded_tiles import Progress
from histo_core.datasets.pcam import looks_like_pcam
from histo_core.errors import DatasetError

__all__ = [
    "SPLITS",
    "DatasetInfo",
    "Split",
    "TileDataset",
    "stratified_split",
    "open_dataset",
    "registered_names",
    "dataset_entries",
    "DatasetEntry",
    "describe_spec",
    "parse_spec",
]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    title: str
    source: str  # medmnist | pcam | synthetic
    sizes: tuple[int, ...]
    description: str = ""


def dataset_entries() -> list[DatasetEntry]:
    """Every registered dataset, in display order: synthetic first, then MedMNIST 2D, then PCam."""
    from histo_core.datasets.medmnist_source import SIZES, flags_2d, medmnist_info

    info = medmnist_info()
    entries = [
        DatasetEntry(
            "synthetic",
            "Synthetic H&E demo (SYNTHETIC)",
            "synthetic",
            (28, 32, 64, 96, 128, 224),
            "Procedurally generated H&E-like tiles; needs no download.",
        )
    ]
    for flag in flags_2d():
        entries.append(DatasetEntry(flag, info[flag]["python_class"], "medmnist", SIZES, info[flag]["description"]))
    entries.append(
        DatasetEntry(
            "pcam",
            "PatchCamelyon",
            "pcam",
            (96,),
            "327,680 96x96 lymph-node tiles, binary (metastasis or not), official HDF5 files.",
        )
    )
    return entries


def registered_names() -> list[str]:
    return [e.name for e in dataset_entries()]


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


def describe_spec(spec: str) -> str:
    """What a spec points at, for messages: 'registered dataset', 'MedMNIST npz', 'image folder', ..."""
    spec, _ = parse_spec(spec)
    if spec.lower() in registered_names():
        return "registered dataset"
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".npz":
        return "MedMNIST-layout npz"
    if p.suffix.lower() == ".csv":
        return "CSV manifest"
    if p.is_dir():
        return "PCam folder" if looks_like_pcam(p) else "image folder"
    if p.name.endswith((".h5", ".h5.gz")):
        return "PCam folder"
    return "path"


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
    spec, options = parse_spec(str(spec))
    if not spec:
        raise DatasetError("no dataset given: name a registered dataset (e.g. 'synthetic') or a path")
    opener = _registered_opener(spec, size=size, as_rgb=as_rgb, data_dir=data_dir, progress=progress)
    if opener is not None:
        _no_options(spec, options, "registered datasets")
        return opener()
    path = Path(spec).expanduser()
    if not path.exists():
        raise DatasetError(
            f"{spec}: not a registered dataset and no such file or folder "
            f"(registered: {', '.join(registered_names()[:6])}, ...; see `python -m histo_core datasets`)"
        )
    if path.is_file() and path.suffix.lower() == ".csv":
        from histo_core.datasets.csv_manifest import open_csv_manifest

        return open_csv_manifest(
            path, size=size, seed=seed, as_rgb=as_rgb, data_dir=data_dir, options=options, progress=progress
        )
    _no_options(spec, options, describe_spec(spec) + "s")
    if path.is_file() and path.suffix.lower() == ".npz":
        from histo_core.datasets.medmnist_source import open_medmnist_npz

        return open_medmnist_npz(path, as_rgb=as_rgb)
    if path.is_dir() and looks_like_pcam(path):
        from histo_core.datasets.pcam import open_pcam

        return open_pcam(path, data_dir=data_dir, progress=progress)
    if path.is_dir():
        from histo_core.datasets.class_folders import open_class_folders

        return open_class_folders(path, size=size, seed=seed, as_rgb=as_rgb, data_dir=data_dir, progress=progress)
    if path.name.endswith((".h5", ".h5.gz")):
        from histo_core.datasets.pcam import open_pcam

        return open_pcam(path.parent, data_dir=data_dir, progress=progress)
    raise DatasetError(
        f"{spec}: unsupported dataset file; use a MedMNIST .npz, a .csv manifest, a folder of class folders, "
        "or a folder of PatchCamelyon .h5 files"
    )


def _no_options(spec: str, options: dict[str, str], what: str) -> None:
    if options:
        raise DatasetError(f"{spec}: options ({', '.join(options)}) are only for CSV manifests; {what} take none")


def _registered_opener(spec: str, *, size, as_rgb, data_dir, progress) -> Callable[[], TileDataset] | None:
    name = spec.lower()
    if name == "synthetic":
        from histo_core.datasets.synthetic import open_synthetic

        return lambda: open_synthetic(size)
    if name == "pcam":
        from histo_core.datasets.pcam import PCAM_URL, open_pcam

        folder = paths.data_dir(data_dir) / "pcam"
        if not (folder.is_dir() and looks_like_pcam(folder)):
            raise DatasetError(
                f"pcam is not present: download camelyonpatch_level_2_split_*_{{x,y}}.h5.gz from {PCAM_URL} "
                f"into {folder}"
            )
        return lambda: open_pcam(folder, data_dir=data_dir, progress=progress)
    from histo_core.datasets.medmnist_source import SIZES, flags_2d, is_multi_label, npz_filename, open_medmnist_npz

    if name in flags_2d():
        if is_multi_label(name):
            raise DatasetError(
                f"{name} is multi-label (several findings per image); Histo Explorer trains single-label "
                "classifiers: choose another MedMNIST set"
            )
        size_ = int(size or 28)
        if size_ not in SIZES:
            raise DatasetError(f"{name}: size must be one of {', '.join(map(str, SIZES))}, got {size_}")
        file = paths.data_dir(data_dir) / npz_filename(name, size_)
        if not file.exists():
            raise DatasetError(
                f"{name} ({size_} px) is not downloaded: run `python -m histo_core datasets --download {name}"
                f" --size {size_}` (needs internet) or put {file.name} in {file.parent}"
            )
        return lambda: open_medmnist_npz(file, flag=name, as_rgb=as_rgb, name=name)
    return None
