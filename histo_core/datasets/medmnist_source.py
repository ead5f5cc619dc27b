"""MedMNIST 2D sets read straight from their npz files: the `medmnist` and `npz` dataset sources.

Metadata comes from `medmnist.INFO`. Files are read with numpy (memory-mapped when the npz members are
stored uncompressed and large), not through the `medmnist` Dataset classes, which assert the official
sample counts and so refuse subsets such as ../shared/data/pathmnist-mini.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from histo_core import paths
from histo_core.datasets import npzio
from histo_core.datasets.base import DatasetInfo, Split, TileDataset, check_label_range, check_labels
from histo_core.datasets.download import DEFAULT_TIMEOUT, Progress, download_file
from histo_core.datasets.sources import DatasetEntry, DatasetSource, dataset_flag, register_source
from histo_core.errors import DatasetError, DownloadError

NPZ_SPLITS = {"train": "train", "val": "val", "test": "test"}
SIZES = (28, 64, 128, 224)


@lru_cache(maxsize=1)
def medmnist_info() -> dict:
    """medmnist.INFO. Read from medmnist/info.py alone: `import medmnist` also imports torch, sklearn and
    the dataset classes (seconds on a cold start) just to reach this dict."""
    if "medmnist" in sys.modules:
        from medmnist import INFO

        return INFO
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the medmnist package is not installed: pip install medmnist (it holds the metadata)")
    info_file = Path(next(iter(spec.submodule_search_locations))) / "info.py"
    module_spec = importlib.util.spec_from_file_location("_histo_medmnist_info", info_file)
    if module_spec is None or module_spec.loader is None:
        raise DatasetError(f"cannot load {info_file}: reinstall medmnist (pip install --force-reinstall medmnist)")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.INFO


def flags_2d() -> list[str]:
    """All MedMNIST 2D flags (3D volumes are not tiles)."""
    return [f for f in medmnist_info() if not f.endswith("3d")]


def npz_filename(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def is_multi_label(flag: str) -> bool:
    """ChestMNIST is multi-label (14 findings per image); the tile classifiers here are single-label."""
    return medmnist_info()[flag]["task"].startswith("multi-label")


def download_source(flag: str, size: int) -> tuple[str, str]:
    """(url, md5) of the official file for `flag` at `size`, from medmnist.INFO (`url`/`MD5`, `url_64`/`MD5_64`...)."""
    meta = medmnist_info()[flag]
    suffix = "" if size == 28 else f"_{size}"
    return meta[f"url{suffix}"], meta[f"MD5{suffix}"]


def medmnist_file(flag: str, size: int = 28, data_dir: str | os.PathLike | None = None) -> Path:
    return paths.data_dir(data_dir) / npz_filename(flag, size)


def download_medmnist(
    flag: str,
    size: int = 28,
    *,
    data_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    force: bool = False,
) -> Path:
    """Download MedMNIST `flag` at `size` px into the data dir (no-op when present). Raises DownloadError."""
    flag = flag.lower()
    if flag not in flags_2d():
        raise DownloadError(f"{flag}: not a MedMNIST 2D dataset; choose one of {', '.join(flags_2d())}")
    if int(size) not in SIZES:
        raise DownloadError(f"{flag}: size must be one of {', '.join(map(str, SIZES))}, got {size}")
    dest = medmnist_file(flag, int(size), data_dir)
    if dest.exists() and not force:
        return dest
    url, md5 = download_source(flag, int(size))
    try:
        return download_file(url, dest, md5, progress=progress, timeout=timeout)
    except DownloadError as exc:
        raise DownloadError(
            f"{flag} ({size} px): {exc}. Without internet, download {url} on another machine and put it at "
            f"{dest} (or point --data-dir / HISTO_DATA_DIR at the folder that holds {dest.name})"
        ) from None


def npz_split_sizes(path: Path) -> dict[str, int]:
    """{split: number of tiles} read from the npz headers only (no image data is decompressed)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            return {s: npzio.member_shape(zf, f"{s}_labels")[0] for s in NPZ_SPLITS if f"{s}_labels.npy" in names}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None


def read_medmnist_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images uint8 (N,H,W[,C]), labels (N,))} from a MedMNIST-layout npz, with specific errors."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None
    with zf:
        npzio.check_declared_sizes(zf, path)  # before anything is allocated: shapes, sizes, compression ratio
        keys = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        present = [s for s in NPZ_SPLITS if f"{s}_images" in keys]
        if not present:
            raise DatasetError(
                f"{path}: not a MedMNIST-layout npz: expected keys like 'train_images'/'train_labels', "
                f"found {sorted(keys) or 'none'}"
            )
        out = {}
        for split in present:
            if f"{split}_labels" not in keys:
                raise DatasetError(f"{path}: has '{split}_images' but no '{split}_labels'")
            try:
                images = npzio.load_member(zf, path, f"{split}_images")
                labels = npzio.load_member(zf, path, f"{split}_labels")
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                raise DatasetError(f"{path}: cannot read '{split}' arrays ({exc})") from None
            if images.ndim not in (3, 4) or images.dtype != np.uint8:
                raise DatasetError(
                    f"{path}: '{split}_images' must be uint8 (N,H,W) or (N,H,W,C), got {images.dtype} {images.shape}"
                )
            if images.ndim == 4 and images.shape[3] not in (1, 3):
                raise DatasetError(
                    f"{path}: '{split}_images' must have 1 or 3 channels, got {images.shape[3]} ({images.shape})"
                )
            if images.shape[1] != images.shape[2]:
                raise DatasetError(
                    f"{path}: '{split}_images' tiles must be square, got {images.shape[1]}x{images.shape[2]}"
                )
            if labels.ndim == 0 or images.shape[0] != labels.shape[0]:
                raise DatasetError(
                    f"{path}: '{split}_images' has {images.shape[0]} images but '{split}_labels' has "
                    f"{labels.shape[0] if labels.ndim else 0} labels"
                )
            if labels.ndim == 0 or labels.size != labels.shape[0]:
                raise DatasetError(
                    f"{path}: '{split}_labels' has shape {labels.shape}: multi-label data is not supported; "
                    "expected one class index per image, shaped (N,) or (N, 1)"
                )
            out[split] = (images, _integer_labels(np.asarray(labels).reshape(-1), f"{path} '{split}_labels'"))
        return out


def _integer_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Labels as int64, refusing what a cast would silently turn into nonsense (NaN, 2.5, text)."""
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if bad.size:
            raise DatasetError(
                f"{where}: {bad.size} labels are not whole numbers (e.g. {labels[bad[0]].item()!r} at row {bad[0]}); "
                "labels must be class indices 0..K-1"
            )
        return labels.astype(np.int64)
    raise DatasetError(f"{where}: labels are {labels.dtype} values, not class indices 0..K-1")


def _guess_flag(path: Path) -> str | None:
    stem = path.stem.split("_")[0].lower()
    return stem if stem in medmnist_info() else None


def open_medmnist_npz(
    path: Path, flag: str | None = None, *, as_rgb: bool = False, name: str | None = None
) -> TileDataset:
    """Open a MedMNIST-layout npz. `flag` (e.g. 'pathmnist') supplies metadata; guessed from the file name."""
    path = Path(path)
    arrays = read_medmnist_npz(path)
    flag = flag or _guess_flag(path)
    meta = medmnist_info().get(flag, {}) if flag else {}
    first = next(iter(arrays.values()))[0]
    size = int(first.shape[1])
    channels = int(first.shape[3]) if first.ndim == 4 else 1
    max_label = max((int(lab.max()) for _, lab in arrays.values() if lab.size), default=0)
    check_label_range(max_label, f"{path} labels")  # before any list or bincount sized by it
    if meta:
        classes = [meta["label"][k] for k in sorted(meta["label"], key=int)]
        task = "binary" if len(classes) == 2 else "multi-class"
    else:
        classes = [f"class {i}" for i in range(max_label + 1)]
        task = "binary" if len(classes) == 2 else "multi-class"
    for split, (_, labels) in arrays.items():
        check_labels(labels, len(classes), f"{path} '{split}_labels'")
    info = DatasetInfo(
        name=name or str(path),
        title=f"{meta.get('python_class', flag or path.stem)} ({size} px)" if meta else f"{path.name} ({size} px)",
        source="medmnist",
        classes=classes,
        channels=3 if (as_rgb and channels == 1) else channels,
        size=size,
        task=task,
        license=meta.get("license", ""),
        citation=_citation(meta),
        location=str(path),
        description=meta.get("description", ""),
        native_channels=channels,
        extra={"flag": flag} if flag else {},
    )
    splits = {s: Split(s, imgs, labels, expand_to_rgb=as_rgb and channels == 1) for s, (imgs, labels) in arrays.items()}
    return TileDataset(info, splits)


def _citation(meta: dict) -> str:
    if not meta:
        return ""
    return (
        "Yang, J. et al. MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image "
        "classification. Scientific Data 10, 41 (2023). " + meta.get("publication", "")
    ).strip()


class MedMNISTSource(DatasetSource):
    """Every MedMNIST 2D flag, one npz per size in the data dir, downloadable from the official URLs."""

    kind = "medmnist"
    order = 20
    # Source tiles of known flags: (pixels at the scanner's resolution, µm per pixel). A model trained on them
    # sees this field of view whatever its input size (PathMNIST: NCT-CRC-HE 224 px tiles at 0.5 µm/px, shown
    # at 28/64/128/224 px). Any npz named after the flag counts.
    SCALES = {"pathmnist": (224, 0.5)}
    label = "MedMNIST set"
    downloadable = True

    def names(self) -> tuple[str, ...]:
        return tuple(flags_2d())

    def _file(self, flag: str, size: int, data_dir) -> Path:
        return paths.data_dir(data_dir) / npz_filename(flag, size)

    def _how_to_get(self, flag: str, size: int, data_dir) -> str:
        file = self._file(flag, size, data_dir)
        return (
            f"{flag} ({size} px) is not downloaded: run `python -m histo_core datasets --download {flag}"
            f" --size {size}` (needs internet) or put {file.name} in {file.parent}"
        )

    def open(self, spec, options, *, size, as_rgb, data_dir, seed, progress) -> TileDataset:
        if is_multi_label(spec):
            raise DatasetError(
                f"{spec} is multi-label (several findings per image); Histo Explorer trains single-label "
                "classifiers: choose another MedMNIST set"
            )
        size_ = int(size or 28)
        if size_ not in SIZES:
            raise DatasetError(f"{spec}: size must be one of {', '.join(map(str, SIZES))}, got {size_}")
        file = self._file(spec, size_, data_dir)
        if not file.exists():
            raise DatasetError(self._how_to_get(spec, size_, data_dir))
        return open_medmnist_npz(file, flag=spec, as_rgb=as_rgb, name=spec)

    def known_scale(self, dataset):
        return self.SCALES.get(dataset_flag(dataset))

    def entries(self, data_dir=None) -> list[DatasetEntry]:
        return [self.status(flag, None, data_dir) for flag in flags_2d()]

    def status(self, name: str, size: int | None = None, data_dir=None) -> DatasetEntry:
        meta = medmnist_info()[name]
        size_status: dict[str, dict] = {}
        for s in SIZES:
            file = self._file(name, s, data_dir)
            size_status[str(s)] = {"available": file.is_file(), "file": str(file)}
            if file.is_file():
                size_status[str(s)]["split_sizes"] = npz_split_sizes(file)
        here = tuple(s for s in SIZES if size_status[str(s)]["available"])
        present = (int(size) in here) if size else bool(here)
        wanted = int(size or (here[0] if here else 28))
        multi = is_multi_label(name)
        return DatasetEntry(
            name,
            meta["python_class"],
            self.kind,
            sizes=here,
            channels=meta["n_channels"],
            location=str(self._file(name, wanted, data_dir)) if size else str(paths.data_dir(data_dir)),
            present=present,
            downloadable=True,
            all_sizes=SIZES,
            missing="" if present else self._how_to_get(name, wanted, data_dir),
            availability=("sizes " + ",".join(map(str, here))) if here else "not downloaded",
            supported=not multi,
            note="multi-label; Histo Explorer trains single-label classifiers" if multi else "",
            tag="MedMNIST",
            classes=tuple(meta["label"][k] for k in sorted(meta["label"], key=int)),
            split_sizes=dict(meta["n_samples"]),
            size_status=size_status,
            description=meta["description"],
            license=meta.get("license", ""),
        )

    def download(self, name, size, *, data_dir=None, progress=None, timeout=10.0) -> Path:
        return download_medmnist(name, int(size or 28), data_dir=data_dir, progress=progress, timeout=timeout)


class NpzFileSource(DatasetSource):
    """Any npz in the MedMNIST layout (train_images, train_labels, ...), served at its own tile size."""

    kind = "npz"
    order = 45
    label = "MedMNIST-layout npz"

    def recognises(self, path: Path) -> bool:
        return path.suffix.lower() == ".npz" and not path.is_dir()

    def open(self, spec, options, *, size, as_rgb, data_dir, seed, progress) -> TileDataset:
        return open_medmnist_npz(Path(spec).expanduser(), as_rgb=as_rgb)


register_source(MedMNISTSource(), first=False)
register_source(NpzFileSource(), first=False)
