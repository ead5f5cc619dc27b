"""A folder of class folders, optionally inside train/val/test folders.

    kather2016/01_TUMOR/*.tif, kather2016/02_STROMA/*.tif, ...          -> seeded stratified 70/15/15 split
    NCT-CRC-HE/train/ADI/*.tif, NCT-CRC-HE/test/ADI/*.tif, ...           -> the given splits

Split folders may be named train/training, val/valid/validation, test/testing. A split folder that is
missing (e.g. only train/ and test/) is carved from train, stratified and seeded. Images are read from
the class folder itself (not from deeper folders, so that a folder of datasets is not mistaken for a
dataset). Decoding, resizing and caching: `histo_core.datasets.decoded_tiles`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from histo_core import paths
from histo_core.datasets.base import SPLITS, TileDataset, split_note, stratified_split
from histo_core.datasets.decoded_tiles import decode_image_files, decoded_dataset, is_image_file
from histo_core.datasets.sources import DECODE_SIZES, DatasetSource, Progress, register_source
from histo_core.errors import DatasetError

SPLIT_FOLDER_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
ABOUT_FILES = ("PROVENANCE.md", "README.md", "README.txt", "README", "LICENSE", "LICENSE.txt")


class _Members:
    """What a scan may open. With `roots` (a dataset opened for a web user) only members that resolve inside them:
    a link to a folder or file outside, or a missing one, is skipped with one refusal for both. Without (the
    command line) anything, and the members reached through a link out of the dataset's folder are noted."""

    def __init__(self, root: Path, roots: list[Path] | None):
        self.root, self.roots = root, roots
        self.skipped: list[str] = []
        self.linked_out: list[str] = []
        self._out: set[Path] = set()

    def allowed(self, path: Path) -> bool:
        if paths.member_refused(path, self.roots):
            self.skipped.append(f"{path.relative_to(self.root)}: {paths.MEMBER_REFUSAL}")
            return False
        if self.roots is None and path.parent not in self._out and paths.leaves_folder(path, self.root):
            self._out.add(path)  # a linked folder is named once, not with each of its files
            self.linked_out.append(str(path.relative_to(self.root)))
        return True

    def subfolders(self, folder: Path) -> list[Path]:
        return [p for p in _subfolders(folder) if self.allowed(p)]

    def class_files(self, class_dir: Path) -> list[Path]:
        images = []
        with os.scandir(class_dir) as entries:  # scandir knows file vs folder without a stat per file
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith(".") or not self.allowed(class_dir / entry.name):
                    continue
                if entry.is_file() and is_image_file(Path(entry.name)):
                    images.append(class_dir / entry.name)
                else:
                    what = "folder inside a class folder" if entry.is_dir() else "not an image file"
                    self.skipped.append(f"{Path(entry.path).relative_to(self.root)}: {what}")
        return images

    def notes(self) -> list[str]:
        if not self.linked_out:
            return []
        shown = ", ".join(self.linked_out[:3]) + (", ..." if len(self.linked_out) > 3 else "")
        return [
            f"{len(self.linked_out)} entries lead out of the dataset's folder through a link and were followed "
            f"({shown}); the web app skips them unless their targets lie in its allowed folders"
        ]


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(root: Path, members: _Members) -> tuple[dict[str, dict[str, list[Path]]], str]:
    """{split or '': {class: files}} and the layout description; skipped entries go to `members.skipped`."""
    members.skipped += [
        f"{p.name}: not in a class folder" for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")
    ]
    subs = members.subfolders(root)
    if not subs:
        raise DatasetError(
            f"{root}: no class sub-folders; put each class's images in its own folder, "
            f"e.g. {root.name}/TUMOR/*.png and {root.name}/STROMA/*.png"
        )
    split_dirs = [s for s in subs if s.name.lower() in SPLIT_FOLDER_NAMES]
    if split_dirs:
        layout = {}
        for s in split_dirs:
            split = SPLIT_FOLDER_NAMES[s.name.lower()]
            if split in layout:
                raise DatasetError(f"{root}: two folders for the {split} split ({s.name} and another); keep one")
            layout[split] = {c.name: members.class_files(c) for c in members.subfolders(s)}
        members.skipped += [f"{s.name}/: not a train/val/test folder" for s in subs if s not in split_dirs]
        return layout, "train/val/test folders"
    return {"": {c.name: members.class_files(c) for c in subs}}, "class folders"


def _check_classes(root: Path, layout: dict[str, dict[str, list[Path]]]) -> list[str]:
    for split, by_class in layout.items():
        for name, files in by_class.items():
            if not files:
                where = root / split / name if split else root / name
                nested = [p.name for p in _subfolders(where)][:4]
                hint = (
                    f" (it holds folders {', '.join(nested)}: open {where} itself if it is a dataset)"
                    if nested
                    else "; remove the folder or add images"
                )
                raise DatasetError(f"{where}: no images{hint}")
    classes = sorted({c for cl in layout.values() for c in cl})
    if len(classes) < 2:
        found = f"only one class folder ({classes[0]})" if classes else "no class folders"
        raise DatasetError(f"{root}: {found}; a classifier needs at least 2 class sub-folders")
    return classes


def open_class_folders(
    path: str | os.PathLike,
    *,
    size: int | None = None,
    seed: int = 0,
    as_rgb: bool = False,
    data_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> TileDataset:
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{path}: no such folder")
    members = _Members(root, paths.confined_roots(data_dir))
    layout, layout_name = _scan(root, members)
    classes = _check_classes(root, layout)
    files, labels, split_of = [], [], []
    for split, by_class in layout.items():
        for name, class_files in by_class.items():
            files += class_files
            labels += [classes.index(name)] * len(class_files)
            split_of += [split] * len(class_files)
    decoded = decode_image_files(files, size=size, data_dir=data_dir, label=root.name, progress=progress)
    kept = decoded.kept
    labels_kept = np.asarray(labels, np.int64)[kept]
    split_kept = np.asarray(split_of)[kept]
    names = [str(files[i].relative_to(root)) for i in kept]
    notes: list[str] = members.notes()
    split_indices = _split_indices(labels_kept, split_kept, seed, notes)
    about = next(
        (root / f for f in ABOUT_FILES if not paths.member_refused(root / f, members.roots) and (root / f).is_file()),
        None,
    )
    return decoded_dataset(
        decoded,
        labels_kept,
        names,
        split_indices,
        classes,
        as_rgb=as_rgb,
        name=str(root),
        title=f"{root.name} (image folder, {decoded.size} px)",
        source="folder",
        citation=f"See {about}" if about else "",
        location=str(root),
        description=f"{len(kept)} images in {len(classes)} class folders ({layout_name}), "
        f"decoded to {decoded.size} px and cached.",
        extra={
            "skipped": members.skipped + decoded.skipped,
            "layout": layout_name,
            "cache": str(decoded.cache_file),
            "notes": notes,
            "about_file": str(about) if about else "",
        },
    )


def _split_indices(labels: np.ndarray, split_of: np.ndarray, seed: int, notes: list[str]) -> dict[str, np.ndarray]:
    """Indices per split: the folders' own splits (missing val/test carved from train), else stratified."""
    if (split_of == "").all():
        parts = stratified_split(labels, seed=seed)
        notes.append(split_note("no train/val/test folders", parts, seed))
        return parts
    given = {s: np.flatnonzero(split_of == s) for s in SPLITS if (split_of == s).any()}
    missing = [s for s in SPLITS if s not in given]
    if missing and "train" in given:
        train = given["train"]
        parts = stratified_split(labels[train], fractions=(0.7, 0.15, 0.15), seed=seed)
        kept_train = [parts["train"]] + [parts[s] for s in SPLITS[1:] if s not in missing]
        given["train"] = train[np.sort(np.concatenate(kept_train))]
        for s in missing:
            given[s] = train[parts[s]]
            notes.append(
                f"no {s} folder: {len(parts[s])} tiles carved from train for {s} (15% per class, seed {seed})"
                if len(parts[s])
                else f"no {s} folder, and train is too small to carve one from (fewer than 3 tiles per class)"
            )
    return {s: given[s] for s in SPLITS if s in given}


class ClassFoldersSource(DatasetSource):
    """Any other folder: one sub-folder per class (optionally inside train/val/test folders)."""

    kind = "folder"
    order = 90  # the catch-all: tried last
    label = "image folder"
    path_sizes = DECODE_SIZES

    def recognises(self, path: Path) -> bool:
        return path.is_dir()

    def original_file(self, info, tile_name: str) -> Path | None:
        return Path(info.location) / tile_name

    def open(self, spec, options, *, size, as_rgb, data_dir, seed, progress) -> TileDataset:
        return open_class_folders(spec, size=size, seed=seed, as_rgb=as_rgb, data_dir=data_dir, progress=progress)


register_source(ClassFoldersSource(), first=False)
