"""Every dataset source on small files made here, and the real sample files in ../shared/data."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from histo_core.datasets import npzio, open_dataset, parse_spec
from histo_core.datasets.decoded_tiles import tile_from_file
from histo_core.datasets.medmnist_source import npz_split_sizes
from histo_core.datasets.pcam import H5Rows
from histo_core.errors import DatasetError

# -- helpers --------------------------------------------------------------------------------------------


def write_medmnist_npz(path: Path, sizes=(12, 4, 4), size=28, channels=3, classes=3, seed=0, compress=True, **override):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        shape = (n, size, size, channels) if channels > 1 else (n, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % classes).astype(np.uint8).reshape(-1, 1)
    arrays.update(override)
    (np.savez_compressed if compress else np.savez)(path, **arrays)
    return arrays


def tile(color, size=40, mode="RGB") -> Image.Image:
    return Image.new(mode, (size, size), color)


def make_class_folders(root: Path, classes=("ADI", "MUC", "TUM"), per_class=5, size=40) -> dict[str, list[Path]]:
    """Folders of TIFF, PNG and JPEG tiles, each class a distinct solid colour."""
    colors = {"ADI": (240, 240, 240), "MUC": (180, 150, 220), "TUM": (90, 40, 130), "STR": (230, 120, 170)}
    out = {}
    for c in classes:
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        out[c] = []
        for i in range(per_class):
            ext = (".tif", ".png", ".jpg")[i % 3]
            p = d / f"{c}_{i}{ext}"
            tile(colors[c], size).save(p)
            out[c].append(p)
    return out


# -- MedMNIST npz ---------------------------------------------------------------------------------------


def test_npz_in_medmnist_layout(tmp_path):
    arrays = write_medmnist_npz(tmp_path / "pathmnist.npz")
    ds = open_dataset(tmp_path / "pathmnist.npz")
    assert ds.split_sizes() == {"train": 12, "val": 4, "test": 4}
    assert ds.info.classes[0] == "adipose" and ds.info.num_classes == 9  # metadata from medmnist.INFO via the name
    got = ds.split("val").get([3, 0, 3])
    np.testing.assert_array_equal(got, arrays["val_images"][[3, 0, 3]])
    assert npz_split_sizes(tmp_path / "pathmnist.npz") == {"train": 12, "val": 4, "test": 4}


def test_npz_large_uncompressed_members_are_memory_mapped(tmp_path, monkeypatch):
    arrays = write_medmnist_npz(tmp_path / "bloodmnist_64.npz", size=64, compress=False)
    monkeypatch.setattr(npzio, "MMAP_THRESHOLD", 1024)  # every image member here is > 1 KiB
    ds = open_dataset(tmp_path / "bloodmnist_64.npz")
    train = ds.split("train")
    assert isinstance(train.images, np.memmap)
    np.testing.assert_array_equal(train.get(slice(None)), arrays["train_images"])
    np.testing.assert_array_equal(train.labels, arrays["train_labels"].reshape(-1))
    assert ds.info.size == 64 and ds.info.title.startswith("BloodMNIST")


def test_npz_grayscale_keeps_one_channel_and_expands_on_request(tmp_path):
    write_medmnist_npz(tmp_path / "tissuemnist.npz", channels=1, classes=8)
    gray = open_dataset(tmp_path / "tissuemnist.npz")
    assert gray.info.channels == 1 and gray.split("train").get([0]).shape == (1, 28, 28, 1)
    rgb = open_dataset(tmp_path / "tissuemnist.npz", as_rgb=True)
    t = rgb.split("train").get([0])
    assert rgb.info.channels == 3 and rgb.info.native_channels == 1 and t.shape == (1, 28, 28, 3)
    assert (t[..., 0] == t[..., 2]).all()


def test_npz_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        open_dataset(tmp_path / "nothing.npz")


def test_npz_without_expected_keys(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 28, 28), np.uint8), labels=np.zeros(2))
    with pytest.raises(DatasetError, match="not a MedMNIST-layout npz.*train_images.*found \\['images', 'labels'\\]"):
        open_dataset(tmp_path / "x.npz")


def test_npz_length_mismatch(tmp_path):
    write_medmnist_npz(tmp_path / "pathmnist.npz", val_labels=np.zeros((3, 1), np.uint8))
    with pytest.raises(DatasetError, match="'val_images' has 4 images but 'val_labels' has 3 labels"):
        open_dataset(tmp_path / "pathmnist.npz")


def test_npz_labels_out_of_range(tmp_path):
    write_medmnist_npz(tmp_path / "pathmnist.npz", test_labels=np.array([[0], [1], [9], [2]], np.uint8))
    with pytest.raises(DatasetError, match="'test_labels'.*labels must be in 0..8 for 9 classes, found 0..9"):
        open_dataset(tmp_path / "pathmnist.npz")


def test_npz_multilabel_refused(tmp_path):
    write_medmnist_npz(tmp_path / "data.npz", train_labels=np.zeros((12, 14), np.uint8))
    with pytest.raises(DatasetError, match="multi-label"):
        open_dataset(tmp_path / "data.npz")


def test_registered_medmnist_not_downloaded_says_how(tmp_path):
    with pytest.raises(DatasetError, match=r"pathmnist \(64 px\) is not downloaded.*--download pathmnist --size 64"):
        open_dataset("pathmnist", size=64, data_dir=tmp_path)
    with pytest.raises(DatasetError, match="size must be one of 28, 64, 128, 224"):
        open_dataset("pathmnist", size=96, data_dir=tmp_path)


def test_registered_medmnist_from_data_dir(tmp_path):
    write_medmnist_npz(tmp_path / "dermamnist_64.npz", size=64, classes=7)
    ds = open_dataset("dermamnist", size=64, data_dir=tmp_path)
    assert ds.info.name == "dermamnist" and ds.info.num_classes == 7 and ds.info.size == 64


def test_real_pathmnist_mini(pathmnist_mini):
    ds = open_dataset(pathmnist_mini)
    assert ds.split_sizes() == {"train": 160, "val": 40, "test": 40}
    assert ds.info.num_classes == 9 and ds.info.license == "CC BY 4.0"
    assert ds.split("train").get(np.arange(5)).shape == (5, 28, 28, 3)
    assert sum(ds.class_counts()["train"]) == 160


# -- image folders --------------------------------------------------------------------------------------


def test_class_folders_with_seeded_stratified_split(tmp_path):
    make_class_folders(tmp_path / "set", per_class=10)
    ds = open_dataset(tmp_path / "set", seed=3)
    assert ds.info.classes == ["ADI", "MUC", "TUM"] and ds.info.source == "folder"
    assert ds.split_sizes() == {"train": 18, "val": 6, "test": 6}  # 10 per class -> 6/2/2
    assert all(min(c) >= 1 for c in ds.class_counts().values())  # every class in every split
    assert ds.info.size == 40  # native 40 px < 64: not upscaled
    again = open_dataset(tmp_path / "set", seed=3)
    assert again.split("test").tile_names == ds.split("test").tile_names
    other = open_dataset(tmp_path / "set", seed=4)
    assert other.split("test").tile_names != ds.split("test").tile_names


def test_folder_tiles_decode_to_the_right_class_colour(tmp_path):
    make_class_folders(tmp_path / "set", per_class=3, size=80)
    ds = open_dataset(tmp_path / "set", size=32)
    train = ds.split("train")
    tiles = train.get(np.arange(len(train)))
    assert tiles.shape[1:] == (32, 32, 3)
    for t, label in zip(tiles, train.labels):
        mean = t.reshape(-1, 3).mean(axis=0)
        expected = {"ADI": (240, 240, 240), "MUC": (180, 150, 220), "TUM": (90, 40, 130)}[ds.info.classes[label]]
        assert np.abs(mean - expected).max() < 6  # JPEG is lossy


def test_folder_default_size_caps_at_64(tmp_path):
    make_class_folders(tmp_path / "set", classes=("ADI", "TUM"), per_class=3, size=150)
    assert open_dataset(tmp_path / "set").info.size == 64


def test_folder_with_train_val_test_folders(tmp_path):
    for split, n in (("train", 4), ("valid", 2), ("test", 3)):
        make_class_folders(tmp_path / "set" / split, classes=("ADI", "TUM"), per_class=n)
    ds = open_dataset(tmp_path / "set")
    assert ds.split_sizes() == {"train": 8, "val": 4, "test": 6}
    assert ds.info.extra["layout"] == "train/val/test folders"
    assert all(n.startswith("valid/") for n in ds.split("val").tile_names)


def test_folder_missing_val_folder_is_carved_from_train(tmp_path):
    make_class_folders(tmp_path / "set" / "train", classes=("ADI", "TUM"), per_class=10)
    make_class_folders(tmp_path / "set" / "test", classes=("ADI", "TUM"), per_class=2)
    ds = open_dataset(tmp_path / "set")
    sizes = ds.split_sizes()
    assert sizes["test"] == 4 and sizes["val"] >= 2 and sizes["train"] + sizes["val"] == 20
    assert not set(ds.split("train").tile_names) & set(ds.split("val").tile_names)
    assert any(n.startswith(f"no val folder: {sizes['val']} tiles carved from train") for n in ds.info.extra["notes"])


def test_folder_skips_non_image_and_unreadable_files(tmp_path):
    make_class_folders(tmp_path / "set", classes=("ADI", "TUM"), per_class=3)
    (tmp_path / "set" / "ADI" / "notes.txt").write_text("not a tile")
    (tmp_path / "set" / "TUM" / "broken.png").write_bytes(b"this is not a png")
    ds = open_dataset(tmp_path / "set")
    skipped = ds.info.extra["skipped"]
    assert any(s.startswith("ADI/notes.txt") for s in skipped)
    assert any(s.startswith("broken.png: not an image") for s in skipped)
    assert sum(ds.split_sizes().values()) == 6


def test_folder_with_one_class(tmp_path):
    make_class_folders(tmp_path / "set", classes=("TUM",), per_class=3)
    with pytest.raises(DatasetError, match=r"only one class folder \(TUM\); a classifier needs at least 2"):
        open_dataset(tmp_path / "set")


def test_folder_with_an_empty_class(tmp_path):
    make_class_folders(tmp_path / "set", classes=("ADI", "TUM"), per_class=3)
    (tmp_path / "set" / "MUC").mkdir()
    with pytest.raises(DatasetError, match=r"set/MUC: no images"):
        open_dataset(tmp_path / "set")


def test_folder_of_datasets_points_at_the_inner_folder(tmp_path):
    make_class_folders(tmp_path / "all" / "NCT-CRC-HE-100K", classes=("ADI", "TUM"), per_class=2)
    make_class_folders(tmp_path / "all" / "CRC-VAL-HE-7K", classes=("ADI", "TUM"), per_class=2)
    with pytest.raises(DatasetError, match="no images \\(it holds folders ADI, TUM: open .* itself"):
        open_dataset(tmp_path / "all")


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    tile((1, 2, 3)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        open_dataset(tmp_path / "flat")


def test_folder_cache_is_reused_and_invalidated_by_changes(tmp_path, monkeypatch):
    files = make_class_folders(tmp_path / "set", classes=("ADI", "TUM"), per_class=3)
    first = open_dataset(tmp_path / "set")
    cache = Path(first.info.extra["cache"])
    assert cache.is_file() and cache.parent.parent.parent == Path(os.environ["HISTO_DATA_DIR"])

    import histo_core.datasets.decoded_tiles as decoded_tiles

    def no_decoding(*a, **k):
        raise AssertionError("decoded again although nothing changed")

    with monkeypatch.context() as patch:
        patch.setattr(decoded_tiles, "_decode_all", no_decoding)
        again = open_dataset(tmp_path / "set")
    assert again.info.extra["cache"] == str(cache)
    np.testing.assert_array_equal(again.split("train").get([0]), first.split("train").get([0]))

    tile((0, 0, 0)).save(files["TUM"][0])  # rewrite one file: new mtime/size -> decode again
    later = time.time() + 5
    os.utime(files["TUM"][0], (later, later))
    changed = open_dataset(tmp_path / "set")
    assert changed.info.extra["cache"] != str(cache)
    assert not cache.exists()  # the stale version is removed


def test_real_kather2016_folder(shared_data):
    ds = open_dataset(shared_data / "tiles" / "kather2016")
    assert ds.info.classes[0] == "01_TUMOR" and ds.info.num_classes == 8
    assert sum(ds.split_sizes().values()) == 32 and ds.info.size == 64
    assert ds.split("val").get([0]).shape == (1, 64, 64, 3)
    assert "PROVENANCE.md: not in a class folder" in ds.info.extra["skipped"]


def test_real_crc_he_folders(shared_data):
    nct = open_dataset(shared_data / "tiles" / "crc-he" / "NCT-CRC-HE-100K-NONORM", size=96)
    assert nct.info.classes == ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
    assert sum(nct.split_sizes().values()) == 9 and nct.info.size == 96
    val7k = open_dataset(shared_data / "tiles" / "crc-he" / "CRC-VAL-HE-7K")  # TIFF and JPEG
    assert val7k.info.classes == ["BACK", "MUS", "STR", "TUM"] and sum(val7k.split_sizes().values()) == 13
    with pytest.raises(DatasetError, match="CRC-VAL-HE-7K: no images"):
        open_dataset(shared_data / "tiles" / "crc-he")


# -- image conversion -----------------------------------------------------------------------------------


def test_16bit_grayscale_keeps_its_range(tmp_path):
    arr = np.full((20, 20), 65535, np.uint16)
    arr[:, :10] = 32896  # ~ half range
    Image.fromarray(arr).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    t = tile_from_file(tmp_path / "g16.png", 20, 1)
    assert t.shape == (20, 20, 1) and t[0, 15, 0] == 255 and abs(int(t[0, 2, 0]) - 128) <= 1
    Image.fromarray(np.full((20, 20), 200, np.uint16)).save(tmp_path / "dark16.png")
    assert tile_from_file(tmp_path / "dark16.png", 20, 1)[0, 0, 0] == 1  # same scale for every image, no stretching


def test_rgba_flattens_onto_white_and_palette_and_cmyk_convert(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert tile_from_file(tmp_path / "clear.png", 8, 3)[0, 0].tolist() == [255, 255, 255]
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    pal.save(tmp_path / "pal.png")
    assert tile_from_file(tmp_path / "pal.png", 8, 3)[0, 0].tolist() == [10, 200, 30]
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=100)  # pure red in CMYK
    assert np.abs(tile_from_file(tmp_path / "red.jpg", 8, 3)[0, 0].astype(int) - [255, 0, 0]).max() <= 3
    Image.new("L", (8, 8), 77).save(tmp_path / "gray.png")
    assert tile_from_file(tmp_path / "gray.png", 8, 3)[0, 0].tolist() == [77, 77, 77]


def test_grayscale_folder_keeps_one_channel(tmp_path):
    for c, v in (("a", 30), ("b", 200)):
        (tmp_path / "g" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (16, 16), v).save(tmp_path / "g" / c / f"{i}.png")
    ds = open_dataset(tmp_path / "g")
    assert ds.info.channels == 1 and ds.split("train").get([0]).shape == (1, 16, 16, 1)
    assert open_dataset(tmp_path / "g", as_rgb=True).split("train").get([0]).shape == (1, 16, 16, 3)


def test_non_square_images_are_centre_cropped(tmp_path):
    img = Image.new("RGB", (60, 20), (0, 0, 255))
    img.paste((255, 0, 0), (20, 0, 40, 20))  # red centre square, blue sides
    img.save(tmp_path / "wide.png")
    t = tile_from_file(tmp_path / "wide.png", 10, 3)
    assert t.shape == (10, 10, 3) and (t[..., 0] > 200).all() and (t[..., 2] < 60).all()


# -- CSV manifests --------------------------------------------------------------------------------------


def write_manifest(tmp_path: Path, header="path,label", split=False, per_class=4) -> Path:
    files = make_class_folders(tmp_path / "imgs", classes=("ADI", "TUM"), per_class=per_class)
    lines = [header + (",split" if split else "")]
    for c, paths in files.items():
        for i, p in enumerate(paths):
            row = f"imgs/{c}/{p.name},{c.lower()}"
            if split:
                row += "," + ("train", "validation", "test", "train")[i % 4]
            lines.append(row)
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "manifest.csv"


def test_csv_manifest_auto_columns_string_labels_and_split_column(tmp_path):
    csv = write_manifest(tmp_path, header="Image,Class", split=True)
    ds = open_dataset(csv)
    assert ds.info.source == "csv" and ds.info.classes == ["adi", "tum"]
    assert ds.split_sizes() == {"train": 4, "val": 2, "test": 2}
    assert ds.info.extra["columns"] == {"image": "Image", "label": "Class", "split": "split"}
    t = ds.split("train")
    for name, label in zip(t.tile_names, t.labels):
        assert name.split("/")[1].lower() == ds.info.classes[label]


def test_csv_manifest_explicit_columns_in_spec_and_int_labels(tmp_path):
    make_class_folders(tmp_path / "imgs", classes=("ADI", "TUM"), per_class=6)
    rows = ["file_name,dx"] + [
        f"{p.relative_to(tmp_path)},{int('TUM' in p.name)}" for p in sorted((tmp_path / "imgs").rglob("*.*"))
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows))
    ds = open_dataset(f"{tmp_path / 'm.csv'}?image=file_name&label=dx")
    assert ds.info.classes == ["0", "1"] and sum(ds.split_sizes().values()) == 12
    assert parse_spec("a.csv?image=x&label=y") == ("a.csv", {"image": "x", "label": "y"})
    with pytest.raises(DatasetError, match="cannot find the image path column among file_name, dx"):
        open_dataset(tmp_path / "m.csv")
    with pytest.raises(DatasetError, match="no column 'nope'"):
        open_dataset(f"{tmp_path / 'm.csv'}?image=nope&label=dx")


def test_csv_manifest_missing_paths_listed_with_count(tmp_path):
    csv = write_manifest(tmp_path)
    with csv.open("a") as fh:
        for i in range(5):
            fh.write(f"imgs/gone_{i}.png,adi\n")
    with pytest.raises(
        DatasetError,
        match=r"5 of 13 image paths in column 'path' not found .*lines 10, 11, 12, "
        r"13, 14\)",
    ) as err:
        open_dataset(csv)
    assert "gone_" not in str(err.value)  # line numbers, never the cells of the manifest


def test_csv_manifest_bad_split_value_and_empty_label(tmp_path):
    csv = write_manifest(tmp_path, split=True)
    csv.write_text(csv.read_text().replace("validation", "holdout", 1))
    with pytest.raises(DatasetError, match="the split in column 'split' is not one of train, val, test"):
        open_dataset(csv)
    csv = write_manifest(tmp_path)
    csv.write_text(csv.read_text().replace(",tum\n", ",\n", 1))
    with pytest.raises(DatasetError, match="1 rows have no 'label' label"):
        open_dataset(csv)


def test_csv_manifest_with_byte_order_mark(tmp_path):
    csv = write_manifest(tmp_path)
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())  # as spreadsheets save "CSV UTF-8"
    assert open_dataset(csv).info.extra["columns"]["image"] == "path"


def test_csv_shares_the_decode_cache_with_folders(tmp_path):
    csv = write_manifest(tmp_path)
    ds = open_dataset(csv, size=24)
    assert Path(ds.info.extra["cache"]).is_file() and ds.info.size == 24


# -- PatchCamelyon --------------------------------------------------------------------------------------


def write_pcam(folder: Path, n=(20, 6, 6), size=96, chunked=False, gz=False, y_shape=None, x_shape=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    data = {}
    for file_split, count in zip(("train", "valid", "test"), n):
        x = rng.integers(0, 256, x_shape or (count, size, size, 3), dtype=np.uint8)
        y = (np.arange(count) % 2).astype(np.uint8).reshape(y_shape or (count, 1, 1, 1))
        data[file_split] = (x, y)
        for key, arr in (("x", x), ("y", y)):
            name = folder / f"camelyonpatch_level_2_split_{file_split}_{key}.h5"
            with h5py.File(name, "w") as f:
                if chunked:
                    f.create_dataset(key, data=arr, chunks=(1,) + arr.shape[1:], compression="gzip")
                else:
                    f.create_dataset(key, data=arr)
            if gz:
                with open(name, "rb") as src, gzip.open(f"{name}.gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                name.unlink()
    return data


@pytest.mark.parametrize("chunked", [False, True])
def test_pcam_h5_read_lazily(tmp_path, chunked):
    data = write_pcam(tmp_path / "pcam", chunked=chunked)
    ds = open_dataset(tmp_path / "pcam")
    assert ds.info.classes == ["no tumour", "metastatic tumour"] and ds.info.task == "binary"
    assert ds.split_sizes() == {"train": 20, "val": 6, "test": 6} and ds.info.size == 96
    train = ds.split("train")
    assert isinstance(train.images, H5Rows) == chunked and (train.lazy == chunked)
    assert not isinstance(train.images, np.ndarray) or isinstance(train.images, np.memmap)
    np.testing.assert_array_equal(train.get([7, 2, 7, 19]), data["train"][0][[7, 2, 7, 19]])
    np.testing.assert_array_equal(ds.split("val").labels, data["valid"][1].reshape(-1))


def test_pcam_h5_wrapper_pickles_and_reopens_in_another_process(tmp_path):
    data = write_pcam(tmp_path / "pcam", chunked=True)
    split = open_dataset(tmp_path / "pcam").split("test")
    split.get([0])  # opens the file in this process
    clone = pickle.loads(pickle.dumps(split.images))
    assert clone._file is None
    np.testing.assert_array_equal(clone[np.array([1, 4])], data["test"][0][[1, 4]])
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply(_read_rows, (split, [0, 5]))
    np.testing.assert_array_equal(got, data["test"][0][[0, 5]])


def _read_rows(split, idx):
    return split.get(idx)


def test_pcam_h5_gz_decompressed_once(tmp_path):
    data = write_pcam(tmp_path / "pcam", gz=True)
    ds = open_dataset(tmp_path / "pcam")
    np.testing.assert_array_equal(ds.split("train").get([3]), data["train"][0][[3]])
    plain = tmp_path / "pcam" / "camelyonpatch_level_2_split_train_x.h5"
    assert plain.is_file()  # next to the .gz
    assert any("decompressed once" in n for n in ds.info.extra["notes"])
    stamp = plain.stat().st_mtime_ns
    again = open_dataset(tmp_path / "pcam")
    assert not any("decompressed" in n for n in again.info.extra["notes"]) and plain.stat().st_mtime_ns == stamp


def test_pcam_h5_gz_in_read_only_folder_goes_to_the_cache(tmp_path, monkeypatch):
    import histo_core.datasets.pcam as pcam

    write_pcam(tmp_path / "ro", n=(4, 2, 2), gz=True)
    monkeypatch.setattr(pcam, "_writable", lambda folder: False)  # tests may run as root, who writes anywhere
    ds = open_dataset(tmp_path / "ro")
    cache = Path(os.environ["HISTO_DATA_DIR"]) / "cache" / "pcam"
    assert Path(ds.split("train").images.filename).parent == cache
    assert not list((tmp_path / "ro").glob("*.h5"))


def test_pcam_mismatched_lengths(tmp_path):
    write_pcam(tmp_path / "pcam")
    with h5py.File(tmp_path / "pcam" / "camelyonpatch_level_2_split_valid_y.h5", "w") as f:
        f.create_dataset("y", data=np.zeros((5, 1, 1, 1), np.uint8))
    with pytest.raises(
        DatasetError, match="split_valid_y.h5: 5 labels but camelyonpatch_level_2_split_valid_x.h5 has 6"
    ):
        open_dataset(tmp_path / "pcam")


def test_pcam_wrong_shape(tmp_path):
    write_pcam(tmp_path / "pcam", n=(4, 4, 4), x_shape=(4, 96, 96))
    with pytest.raises(DatasetError, match=r"split_train_x.h5: 'x' must be uint8 tiles shaped \(N, 96, 96, 3\)"):
        open_dataset(tmp_path / "pcam")


def test_pcam_missing_y_file(tmp_path):
    write_pcam(tmp_path / "pcam")
    (tmp_path / "pcam" / "camelyonpatch_level_2_split_test_y.h5").unlink()
    with pytest.raises(
        DatasetError, match="split_test_y.h5: missing .*labels for camelyonpatch_level_2_split_test_x.h5"
    ):
        open_dataset(tmp_path / "pcam")


def test_registered_pcam_from_data_dir(tmp_path):
    with pytest.raises(DatasetError, match="pcam is not present: download .* into"):
        open_dataset("pcam", data_dir=tmp_path)
    write_pcam(tmp_path / "pcam", n=(2, 2, 2))
    assert open_dataset("pcam", data_dir=tmp_path).split_sizes() == {"train": 2, "val": 2, "test": 2}


# -- synthetic ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_synthetic_is_deterministic_and_labelled():
    a, b = open_dataset("synthetic"), open_dataset("synthetic")
    np.testing.assert_array_equal(a.split("val").get([0, 1]), b.split("val").get([0, 1]))
    assert a.info.synthetic and "SYNTHETIC" in a.info.title
    assert open_dataset("synthetic", size=64).split("test").get([0]).shape == (1, 64, 64, 3)


def test_spec_options_rejected_where_meaningless(tmp_path):
    write_medmnist_npz(tmp_path / "pathmnist.npz")
    with pytest.raises(DatasetError, match="only for CSV manifests"):
        open_dataset(f"{tmp_path / 'pathmnist.npz'}?label=x")


def test_folder_split_note_says_what_the_split_made(tmp_path):
    """Bug: the note said "split 70/15/15 per class" where the split made val 0 / test 0."""
    make_class_folders(tmp_path / "tiny", per_class=2)
    tiny = open_dataset(tmp_path / "tiny")
    sizes = {s: len(tiny.split(s)) if s in tiny.splits else 0 for s in ("train", "val", "test")}
    note = " ".join(tiny.info.extra["notes"])
    assert "70/15/15 per class" not in note
    assert f"train {sizes['train']}, val 0, test 0" in note and "val and test are empty" in note
    assert "fewer than 3 tiles" in note
    make_class_folders(tmp_path / "set", per_class=10)
    note = " ".join(open_dataset(tmp_path / "set", seed=3).info.extra["notes"])
    assert "train 18, val 6, test 6" in note and "empty" not in note
