"""`python -m histo_core datasets`: listing, --info, --download, --add/--remove, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from histo_core.cli import main
from tests.conftest import ROOT
from tests.test_datasets_sources import make_class_folders, write_medmnist_npz


def run_cli(capsys, *argv):
    code = main(["datasets", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_listing_json_parses_and_reflects_downloads(capsys, tmp_path):
    write_medmnist_npz(tmp_path / "pathmnist_64.npz", size=64, sizes=(10, 3, 2))
    code, out, _ = run_cli(capsys, "--json", "--data-dir", str(tmp_path))
    assert code == 0
    listing = json.loads(out)
    rows = {r["name"]: r for r in listing["datasets"]}
    assert listing["data_dir"] == str(tmp_path)
    assert rows["synthetic"]["available"] and rows["synthetic"]["split_sizes"] == {
        "train": 1200,
        "val": 300,
        "test": 300,
    }
    path = rows["pathmnist"]
    assert path["available"] and path["sizes"]["64"]["available"] and not path["sizes"]["28"]["available"]
    assert path["sizes"]["64"]["split_sizes"] == {"train": 10, "val": 3, "test": 2}  # read from the file
    assert path["split_sizes"] == {"train": 89996, "val": 10004, "test": 7180}  # official, from medmnist.INFO
    assert not rows["tissuemnist"]["available"] and rows["tissuemnist"]["channels"] == 1
    assert not rows["chestmnist"]["supported"]
    assert not rows["pcam"]["available"] and "organmnist3d" not in rows


def test_listing_text(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "--data-dir", str(tmp_path))
    assert code == 0
    assert f"data dir: {tmp_path}" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("pathmnist "))
    assert "not downloaded" in line and "89996/10004/7180" in line


def test_info_on_a_folder_json(capsys, tmp_path):
    make_class_folders(tmp_path / "set", classes=("ADI", "TUM"), per_class=10)
    code, out, err = run_cli(capsys, "--info", str(tmp_path / "set"), "--size", "32", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["split_sizes"] == {"train": 12, "val": 4, "test": 4}  # 10 per class -> 6/2/2
    assert doc["class_counts"]["train"] == {"ADI": 6, "TUM": 6} and doc["tile_shape"] == [32, 32, 3]
    assert "decoding images" in err  # the progress bar goes to stderr, never into the JSON


def test_info_text_on_real_pathmnist_mini(capsys, pathmnist_mini):
    code, out, _ = run_cli(capsys, "--info", str(pathmnist_mini))
    assert code == 0
    assert "splits: train 160, val 40, test 40" in out and "9 classes" in out and "license: CC BY 4.0" in out


@pytest.mark.slow
def test_bad_spec_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "histo_core", "datasets", "--info", str(tmp_path / "nope.npz")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope.npz" in lines[0]


def test_download_offline_exits_2(capsys, monkeypatch, tmp_path):
    import histo_core.datasets.medmnist_source as download

    monkeypatch.setattr(download, "download_source", lambda f, s: ("http://127.0.0.1:9/pathmnist.npz", "x"))
    code, out, err = run_cli(capsys, "--download", "pathmnist", "--size", "28", "--data-dir", str(tmp_path))
    assert code == 2 and "cannot reach" in err and str(tmp_path / "pathmnist.npz") in err


def test_download_already_present(capsys, tmp_path):
    write_medmnist_npz(tmp_path / "pathmnist.npz")
    code, out, _ = run_cli(capsys, "--download", "pathmnist", "--data-dir", str(tmp_path), "--json")
    assert code == 0 and json.loads(out)["already_present"] is True


def test_add_and_remove_local_dataset(capsys, tmp_path):
    write_medmnist_npz(tmp_path / "mine.npz")
    code, out, _ = run_cli(capsys, "--add", str(tmp_path / "mine.npz"), "--json")
    assert code == 0 and json.loads(out)["split_sizes"] == {"train": 12, "val": 4, "test": 4}
    _, out, _ = run_cli(capsys, "--json")
    assert [e["spec"] for e in json.loads(out)["local"]] == [str(tmp_path / "mine.npz")]
    assert run_cli(capsys, "--remove", str(tmp_path / "mine.npz"))[0] == 0
    code, _, err = run_cli(capsys, "--remove", str(tmp_path / "mine.npz"))
    assert code == 2 and "not in the list" in err


def test_add_invalid_path_is_refused(capsys, tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    code, _, err = run_cli(capsys, "--add", str(tmp_path / "bad.npz"))
    assert code == 2 and "not a MedMNIST-layout npz" in err


@pytest.mark.parametrize("argv", [["--info"], ["--download", "x", "--info", "y"]])
def test_argument_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(["datasets", *argv])
    assert exc.value.code == 2
