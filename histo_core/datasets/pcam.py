"""PatchCamelyon from its official HDF5 files, read lazily.

A PCam folder holds `camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5` (x: (N, 96, 96, 3) uint8
tiles, y: (N, 1, 1, 1) uint8 labels), or the same files gzipped (`.h5.gz`, as distributed). The 7 GB
train split is never loaded: tiles are read per batch. An uncompressed, contiguous HDF5 dataset (what
the official files contain) is memory-mapped at its byte offset, the fastest way to read random rows;
chunked or compressed ones are read through h5py, one File per process (re-opened after a fork, so
DataLoader workers never share a handle). `.h5.gz` files are decompressed once, next to the .gz when
that folder is writable, else under `<data dir>/cache/pcam/`.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from histo_core import limits, paths
from histo_core.datasets.base import DatasetInfo, Split, TileDataset
from histo_core.datasets.sources import DatasetEntry, DatasetSource, Progress, dataset_flag, register_source
from histo_core.errors import DatasetError
from histo_core.fsutil import atomic_file

FILE_SPLITS = {"train": "train", "valid": "val", "test": "test"}  # file name part -> our split name
CLASSES = ["no tumour", "metastatic tumour"]
TILE_SIZE = 96
PCAM_URL = "https://github.com/basveeling/pcam (files on Zenodo: https://zenodo.org/records/2546921)"
CITATION = (
    "Veeling, B. S., Linmans, J., Winkens, J., Cohen, T., Welling, M. Rotation Equivariant CNNs for Digital "
    "Pathology. MICCAI 2018. arXiv:1806.03962. Tiles from Camelyon16: Ehteshami Bejnordi, B. et al. "
    "Diagnostic Assessment of Deep Learning Algorithms for Detection of Lymph Node Metastases in Women With "
    "Breast Cancer. JAMA 318(22), 2199-2210 (2017)."
)


def file_name(file_split: str, xy: str) -> str:
    return f"camelyonpatch_level_2_split_{file_split}_{xy}.h5"


def looks_like_pcam(folder: Path) -> bool:
    return any(Path(folder).glob("camelyonpatch_level_2_split_*_x.h5*"))


class H5Rows:
    """Rows of an HDF5 dataset, opened lazily once per process; pickles without its file handle."""

    def __init__(self, path: Path, key: str, shape: tuple[int, ...]):
        self.path, self.key, self.shape = Path(path), key, tuple(shape)
        self._file: Any = None
        self._pid: int | None = None

    def _dataset(self):
        import h5py

        if self._file is None or self._pid != os.getpid():
            # After a fork the parent's handle must not be used (HDF5 state is not fork-safe): open anew.
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file[self.key]

    def __getitem__(self, idx) -> np.ndarray:
        return self._dataset()[idx]

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {"path": self.path, "key": self.key, "shape": self.shape, "_file": None, "_pid": None}

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None


def _h5_array(path: Path, key: str, what: str) -> tuple[Any, tuple[int, ...], np.dtype]:
    """(array-like, shape, dtype) for dataset `key` of `path`: a memmap when contiguous and uncompressed."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                found = ", ".join(f.keys()) or "none"
                raise DatasetError(f"{path}: no dataset {key!r} for the {what} (found: {found})")
            ds = f[key]
            shape, dtype = tuple(ds.shape), ds.dtype
            offset = ds.id.get_offset() if ds.chunks is None and ds.compression is None else None
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from None
    if offset is not None and dtype == np.uint8 and np.prod(shape) > 0:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape), shape, dtype
    return H5Rows(path, key, shape), shape, dtype


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def _decompressed(gz: Path, data_dir, progress: Progress | None, notes: list[str]) -> Path:
    """The .h5 for `gz`, decompressed once (streamed to disk, never held in memory)."""
    target = gz.with_suffix("")  # strip .gz
    if not _writable(gz.parent):
        target = paths.data_dir(data_dir) / "cache" / "pcam" / target.name
    if target.exists() and target.stat().st_mtime >= gz.stat().st_mtime:
        notes.append(f"{gz.name}: using the copy decompressed earlier at {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    total = gz.stat().st_size
    limit = limits.max_dataset_bytes()
    declared = _gzip_declared_size(gz)  # modulo 4 GiB (the gzip trailer): a lower bound, checked up front
    _check_room(gz, target.parent, declared, limit)
    written = 0
    try:
        with open(gz, "rb") as raw, gzip.GzipFile(fileobj=raw) as src, atomic_file(target) as dst:  # no partial .h5
            while chunk := src.read(8 << 20):
                written += len(chunk)
                if written % (512 << 20) < len(chunk) or written > limit:  # every 512 MB and at the limit
                    _check_room(gz, target.parent, written, limit, already=written - len(chunk))
                dst.write(chunk)
                if progress is not None:
                    progress(min(raw.tell(), total), total)  # compressed bytes read so far
    except DatasetError:
        raise
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DatasetError(
                f"{gz}: disk full while decompressing into {target.parent}; free space there and open it again"
            ) from None
        raise DatasetError(f"{gz}: cannot decompress ({exc}); download the file again") from None
    notes.append(
        f"{gz.name}: decompressed once to {target} ({target.stat().st_size / 1e9:.2f} GB); later opens use that copy"
    )
    return target


FREE_SPACE_MARGIN = 512 * 2**20  # leave this much free on the disk a .h5.gz is decompressed onto


def _gzip_declared_size(gz: Path) -> int:
    """The uncompressed size the gzip trailer states (modulo 4 GiB)."""
    try:
        with open(gz, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return int.from_bytes(fh.read(4), "little")
    except OSError:
        return 0


def _check_room(gz: Path, folder: Path, needed: int, limit: int, already: int = 0) -> None:
    """Refuse output beyond HISTO_MAX_DATASET_BYTES or beyond the free space of `folder` (less a margin)."""
    if needed > limit:
        raise DatasetError(
            f"{gz}: decompresses to more than {limits.human_bytes(limit)} "
            "(HISTO_MAX_DATASET_BYTES); raise that limit if the file is genuine"
        )
    free = shutil.disk_usage(folder).free
    if needed - already > free - FREE_SPACE_MARGIN:
        raise DatasetError(
            f"{gz}: not enough free disk space in {folder} to decompress it (needs at least "
            f"{limits.human_bytes(needed)}, {limits.human_bytes(max(free, 0))} free)"
        )


def _existing(folder: Path, name: str, roots: list[Path] | None) -> Path | None:
    """The file `name` (or `name`.gz) of `folder`; a link out of the web app's roots counts as missing."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if not paths.member_refused(candidate, roots) and candidate.is_file():
            return candidate
    return None


def _usable(path: Path, data_dir, progress, notes) -> Path:
    return _decompressed(path, data_dir, progress, notes) if path.suffix == ".gz" else path


def _open_split(folder: Path, file_split: str, data_dir, progress, notes) -> Split | None:
    x_name, y_name = file_name(file_split, "x"), file_name(file_split, "y")
    roots = paths.confined_roots(data_dir)
    x_found = _existing(folder, x_name, roots)
    if x_found is None:
        return None
    y_found = _existing(folder, y_name, roots)
    if y_found is None:  # checked before decompressing x: that can take minutes
        raise DatasetError(f"{folder / y_name}: missing (or {y_name}.gz): it holds the labels for {x_found.name}")
    x_path = _usable(x_found, data_dir, progress, notes)
    y_path = _usable(y_found, data_dir, progress, notes)
    images, x_shape, x_dtype = _h5_array(x_path, "x", "tiles")
    if len(x_shape) != 4 or x_shape[1] != x_shape[2] or x_shape[3] != 3 or x_dtype != np.uint8:
        raise DatasetError(f"{x_path}: 'x' must be uint8 tiles shaped (N, 96, 96, 3), got {x_dtype} {x_shape}")
    labels, y_shape, _ = _h5_array(y_path, "y", "labels")
    if len(y_shape) == 0 or int(np.prod(y_shape[1:])) != 1:
        raise DatasetError(f"{y_path}: 'y' must hold one label per tile, shaped (N, 1, 1, 1), got {y_shape}")
    if y_shape[0] != x_shape[0]:
        raise DatasetError(
            f"{y_path}: {y_shape[0]} labels but {x_path.name} has {x_shape[0]} tiles; the x and y files must match"
        )
    y = np.asarray(labels[:]).reshape(-1).astype(np.int64)  # labels are small: 1 byte per tile
    if y.size and (y.min() < 0 or y.max() > 1):
        raise DatasetError(f"{y_path}: labels must be 0 or 1, found {int(y.min())}..{int(y.max())}")
    return Split(FILE_SPLITS[file_split], images, y, lazy=isinstance(images, H5Rows))


def open_pcam(
    folder: str | os.PathLike, *, data_dir: str | os.PathLike | None = None, progress: Progress | None = None
) -> TileDataset:
    folder = Path(folder).expanduser()
    if not folder.is_dir() or not looks_like_pcam(folder):
        raise DatasetError(
            f"{folder}: no PatchCamelyon files; download camelyonpatch_level_2_split_*_{{x,y}}.h5.gz from "
            f"{PCAM_URL} and put them in {folder}"
        )
    notes: list[str] = []
    splits = {}
    for file_split, split in FILE_SPLITS.items():
        s = _open_split(folder, file_split, data_dir, progress, notes)
        if s is not None:
            splits[split] = s
    if not splits:
        expected = ", ".join(file_name(f, "x") for f in FILE_SPLITS)
        raise DatasetError(
            f"{folder}: no PatchCamelyon split found; expected files named {expected} "
            "(or the same with .gz), each with its _y file"
        )
    size = next(iter(splits.values())).tile_shape[0]
    info = DatasetInfo(
        name=str(folder),
        title=f"PatchCamelyon ({size} px)",
        source="pcam",
        classes=list(CLASSES),
        channels=3,
        size=size,
        task="binary",
        license="CC0 1.0",
        citation=CITATION,
        location=str(folder),
        description="96x96 px tiles from Camelyon16 lymph-node sections at 10x; label 1 when the centre "
        "32x32 px region holds at least one pixel of metastatic tumour.",
        native_channels=3,
        extra={"notes": notes, "lazy": True},
    )
    return TileDataset(info, splits)


OFFICIAL_SPLIT_SIZES = {"train": 262144, "val": 32768, "test": 32768}


class PCamSource(DatasetSource):
    """PatchCamelyon: the registered name `pcam` (files in `<data dir>/pcam`) or any folder of its HDF5 files."""

    kind = "pcam"
    order = 30
    label = "PCam folder"
    path_channels = 3
    SCALE = (96, 0.972)  # PatchCamelyon tiles: 96 px at 0.972 µm/px

    def known_scale(self, dataset):
        return self.SCALE if dataset.get("source") == self.kind or dataset_flag(dataset) == "pcam" else None

    def names(self) -> tuple[str, ...]:
        return ("pcam",)

    def recognises(self, path: Path) -> bool:
        return (path.is_dir() and looks_like_pcam(path)) or path.name.endswith((".h5", ".h5.gz"))

    def _missing(self, folder: Path) -> str:
        return (
            f"pcam is not present: download camelyonpatch_level_2_split_*_{{x,y}}.h5.gz from {PCAM_URL} into {folder}"
        )

    def open(self, spec, options, *, size, as_rgb, data_dir, seed, progress) -> TileDataset:
        if spec == "pcam":
            folder = paths.data_dir(data_dir) / "pcam"
            if not (folder.is_dir() and looks_like_pcam(folder)):
                raise DatasetError(self._missing(folder))
        else:
            folder = Path(spec).expanduser()
            folder = folder if folder.is_dir() else folder.parent
        return open_pcam(folder, data_dir=data_dir, progress=progress)

    def entries(self, data_dir=None) -> list[DatasetEntry]:
        folder = paths.data_dir(data_dir) / "pcam"
        files: dict[str, str | None] = {}
        for file_split, split in FILE_SPLITS.items():
            x = folder / file_name(file_split, "x")
            files[split] = "h5" if x.is_file() else "h5.gz" if x.with_name(x.name + ".gz").is_file() else None
        present = any(files.values())
        split_sizes: dict[str, int | None] = dict(OFFICIAL_SPLIT_SIZES)
        for split, kind in files.items():
            if kind == "h5":  # header only; .h5.gz ones are decompressed on first open, not by a listing
                split_sizes[split] = _h5_rows(folder / file_name({"val": "valid"}.get(split, split), "x"))
        return [
            DatasetEntry(
                "pcam",
                "PatchCamelyon",
                self.kind,
                sizes=(),
                channels=3,
                location=str(folder),
                present=present,
                all_sizes=(TILE_SIZE,),
                missing="" if present else self._missing(folder),
                availability="yes" if present else "not present",
                classes=tuple(CLASSES),
                split_sizes=split_sizes,
                size_status={str(TILE_SIZE): {"available": present}},
                description="327,680 96x96 lymph-node tiles, binary (metastasis or not), official HDF5 files.",
                license="CC0 1.0",
                details={"files": files},
            )
        ]


def _h5_rows(path: Path) -> int | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f["x"].shape[0])
    except (OSError, KeyError):
        return None


register_source(PCamSource(), first=False)
