"""Datasets: a dataset is named by a registered name or by a path, and opened through the source registry
(`histo_core.datasets.sources`: one source per kind).

open_dataset("synthetic")                     # built-in demo, no download
open_dataset("pathmnist", size=28)            # MedMNIST 2D flag, from the data dir
open_dataset("../shared/data/pathmnist-mini/pathmnist.npz")
open_dataset("/data/Kather_texture_2016_image_tiles_5000", size=64)   # class folders
open_dataset("/data/quilt_subset.csv")        # CSV manifest
open_dataset("/data/pcam")                    # folder of PatchCamelyon .h5 files
"""

from __future__ import annotations

# The built-in kinds: each module registers its source when imported (their `order` says which is tried first).
from histo_core.datasets import class_folders, csv_manifest, medmnist_source, pcam, synthetic  # noqa: F401
from histo_core.datasets.base import SPLITS, DatasetInfo, Split, TileDataset, stratified_split
from histo_core.datasets.sources import (
    DatasetEntry,
    DatasetSource,
    dataset_status,
    dataset_statuses,
    describe_spec,
    download_dataset,
    open_dataset,
    parse_spec,
    register_source,
    registered_names,
    source_for,
)

__all__ = [
    "SPLITS",
    "DatasetEntry",
    "DatasetInfo",
    "DatasetSource",
    "Split",
    "TileDataset",
    "dataset_status",
    "dataset_statuses",
    "describe_spec",
    "download_dataset",
    "open_dataset",
    "parse_spec",
    "register_source",
    "registered_names",
    "source_for",
    "stratified_split",
]
