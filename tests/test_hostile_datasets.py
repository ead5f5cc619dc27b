"""A web user's dataset reaches only files inside the data roots: its own path, and every file it names (folder
members, CSV rows, PCam files). Outside and missing get one answer, so a page is no oracle for what exists."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from histo_core import paths
from histo_core.datasets import open_dataset
from histo_core.errors import DatasetError
from tests.conftest import ROOT
from tests.test_datasets_sources import make_class_folders
from tests.test_page_datasets import each_tab
from tests.test_security import page_text

OUTSIDE_COLOUR = (12, 200, 34)  # no tile inside the roots has it


@pytest.fixture
def outside():
    """A folder outside every data root (the tests' roots are pytest's temp folder and ../shared), holding a
    class folder of images and one loose image, all of a colour no inside tile has."""
    folder = Path(tempfile.mkdtemp(prefix="histo-outside-"))
    (folder / "STR").mkdir()
    for i in range(4):
        Image.new("RGB", (40, 40), OUTSIDE_COLOUR).save(folder / "STR" / f"s{i}.png")
    Image.new("RGB", (40, 40), OUTSIDE_COLOUR).save(folder / "secret.png")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def hostile_folder(root: Path, outside: Path, target_exists: bool = True) -> Path:
    """Class folders inside a root, with a class folder linked outside, an image linked to an outside image and
    to /etc/passwd, and a link to an outside file that does not exist."""
    make_class_folders(root)
    (root / "STR").symlink_to(outside / "STR", target_is_directory=True)
    (root / "TUM" / "zz_secret.png").symlink_to(outside / ("secret.png" if target_exists else "no-such.png"))
    (root / "TUM" / "passwd.png").symlink_to("/etc/passwd")
    (root / "MUC" / "zz_gone.png").symlink_to(outside / "nothing-here.png")
    return root


def hostile_csv(folder: Path, outside: Path) -> Path:
    make_class_folders(folder / "tiles")
    rows = ["path,label", "tiles/ADI/ADI_1.png,ADI", "tiles/TUM/TUM_1.png,TUM", "tiles/ADI/ADI_4.png,ADI"]
    rows.append(f"{os.path.relpath(outside / 'secret.png', folder)},TUM")  # ../../ up and out
    rows.append(f"{outside / 'secret.png'},TUM")  # absolute
    csv = folder / "manifest.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def confined(monkeypatch) -> None:
    monkeypatch.setenv(paths.CONFINE_ENV, "1")


def all_tiles(ds) -> np.ndarray:
    return np.concatenate([np.asarray(ds.splits[s].images[:]) for s in ds.splits])


def test_a_web_users_folder_never_reaches_outside_files(tmp_path, outside, monkeypatch):
    folder = hostile_folder(tmp_path / "hostile", outside)
    confined(monkeypatch)
    ds = open_dataset(folder, size=28)
    assert ds.info.classes == ["ADI", "MUC", "TUM"]  # the linked STR folder is not a class
    tiles = all_tiles(ds)
    assert not (tiles.reshape(len(tiles), -1, 3) == OUTSIDE_COLOUR).all(axis=2).any(), "an outside pixel was read"
    skipped = ds.info.extra["skipped"]
    refusal = paths.MEMBER_REFUSAL
    for name in ("STR", "TUM/zz_secret.png", "TUM/passwd.png", "MUC/zz_gone.png"):
        assert f"{name}: {refusal}" in skipped, skipped
    assert not any("not an image" in s for s in skipped)  # /etc/passwd was never opened


def test_outside_and_missing_members_read_the_same(tmp_path, outside, monkeypatch):
    confined(monkeypatch)
    there = open_dataset(hostile_folder(tmp_path / "a", outside, target_exists=True), size=28)
    gone = open_dataset(hostile_folder(tmp_path / "b", outside, target_exists=False), size=28)
    assert there.info.extra["skipped"] == gone.info.extra["skipped"]


def test_a_web_users_csv_refuses_rows_outside_as_it_refuses_missing_ones(tmp_path, outside, monkeypatch):
    csv = hostile_csv(tmp_path / "m", outside)
    confined(monkeypatch)
    with pytest.raises(DatasetError) as there:
        open_dataset(csv, size=28)
    message = str(there.value)
    assert f"2 of 5 image paths in column 'path' {paths.MEMBER_REFUSAL}" in message and "lines 5, 6" in message
    assert "secret" not in message and str(outside) not in message
    shutil.rmtree(outside)  # now the outside rows name nothing: the answer must not change
    with pytest.raises(DatasetError) as gone:
        open_dataset(csv, size=28)
    assert str(gone.value) == message


def test_the_command_line_follows_links_out_and_says_so(tmp_path, outside):
    folder = hostile_folder(tmp_path / "cli", outside)
    (folder / "TUM" / "passwd.png").unlink()
    (folder / "MUC" / "zz_gone.png").unlink()
    ds = open_dataset(folder, size=28)  # no confinement: the machine's own user may open anything
    assert ds.info.classes == ["ADI", "MUC", "STR", "TUM"]
    notes = " ".join(ds.info.extra["notes"])
    assert "2 entries lead out of the dataset's folder through a link and were followed" in notes, notes
    assert "STR" in notes and "TUM/zz_secret.png" in notes
    csv = hostile_csv(tmp_path / "m", outside)
    ds = open_dataset(csv, size=28)
    assert any("2 rows lead out of the manifest's folder (lines 5, 6)" in n for n in ds.info.extra["notes"])


def test_pcam_files_linked_outside_count_as_missing(tmp_path, outside, monkeypatch):
    import h5py

    real = outside / "pcam"
    real.mkdir()
    with h5py.File(real / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f["x"] = np.zeros((4, 96, 96, 3), np.uint8)
    with h5py.File(real / "camelyonpatch_level_2_split_test_y.h5", "w") as f:
        f["y"] = np.zeros((4, 1, 1, 1), np.uint8)
    folder = tmp_path / "pcam"
    folder.mkdir()
    for xy in "xy":
        name = f"camelyonpatch_level_2_split_test_{xy}.h5"
        (folder / name).symlink_to(real / name)
    assert len(open_dataset(folder).splits["test"].labels) == 4  # the command line follows them
    confined(monkeypatch)
    with pytest.raises(DatasetError, match="no PatchCamelyon split found"):
        open_dataset(folder)


def test_the_server_process_and_its_children_are_confined(monkeypatch):
    monkeypatch.delenv(paths.CONFINE_ENV, raising=False)
    assert paths.confined_roots() is None
    AppTest.from_file(str(ROOT / "pages" / "0_Home.py"), default_timeout=60).run()
    assert os.environ.get(paths.CONFINE_ENV) == "1"  # a page confines its process; procs.child_env passes it on
    from histo_core.procs import child_env

    assert child_env()[paths.CONFINE_ENV] == "1"
    assert paths.confined_roots() == paths.data_roots()


def _shown(page: str, folder: Path, outside: Path) -> str:
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=90)
    at.query_params["dataset"] = str(folder)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [page_text(at)]
    if page == "1_Datasets.py":  # open the skip list, and every tab (only the open one is built)
        assert any("skipped" in e.label for e in at.expander), [e.label for e in at.expander]
        shown = [page_text(tab) for tab in each_tab(at)]
    text = "\n".join(shown).replace("\\", "")  # without the Markdown escapes of plain(): the words shown
    assert "secret" not in text.replace("zz_secret.png: " + paths.MEMBER_REFUSAL, "")
    assert str(outside) not in text and "not an image" not in text
    return text.replace(str(folder), "<folder>")


@pytest.mark.parametrize("page", ["1_Datasets.py", "2_Train.py"])
def test_pages_show_no_outside_tile_and_no_difference_between_outside_and_missing(page, tmp_path, outside):
    there = _shown(page, hostile_folder(tmp_path / "ds", outside, target_exists=True), outside)
    shutil.rmtree(tmp_path / "ds")
    from streamlit import cache_data, cache_resource

    cache_data.clear()
    cache_resource.clear()
    gone = _shown(page, hostile_folder(tmp_path / "ds", outside, target_exists=False), outside)
    assert there == gone


def test_feature_map_page_opens_a_hostile_folder_without_outside_tiles(tmp_path, outside):
    from histo_core.datasets.catalog import add_local_dataset
    from tests.runfiles import write_run

    folder = hostile_folder(tmp_path / "fm", outside)
    add_local_dataset(str(folder))  # registered from the command line (which follows the links)
    run = write_run("completed", seed=1, run_id="run-a")
    at = AppTest.from_file(str(ROOT / "pages" / "7_Feature_map.py"), default_timeout=90)
    at.query_params["model"] = run.id
    at.query_params["dataset"] = str(folder)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert str(outside) not in page_text(at)
    from pages.ui.feature_map import _dataset

    ds = _dataset(str(folder.resolve()), 28, True, None, 0)  # what the page shows tiles from: now confined
    assert "STR" not in ds.info.classes
    tiles = all_tiles(ds)
    assert not (tiles.reshape(len(tiles), -1, 3) == OUTSIDE_COLOUR).all(axis=2).any()
