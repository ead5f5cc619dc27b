"""`python -m histo_core predict`: real tiles, bad files next to good ones, CAM files, exit codes."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo_core import paths
from histo_core.cli import main

ROOT = Path(__file__).resolve().parent.parent
# PathMNIST's classes in label order; the sample folders use the NCT-CRC-HE codes in the same order.
CODES = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]


def bomb_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def bad_files(folder: Path, good_png: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "corrupt.png": good_png.read_bytes()[:600],
        "notes.png": b"this is a text file\n",
        "empty.png": b"",
        "bomb.png": bomb_png(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / n for n in files]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_real_tiles_json(trained_pathmnist_run, shared_data, capsys):
    tiles = sorted((shared_data / "tiles" / "pathmnist-224").glob("*/*.png"))
    crc = sorted(p for p in (shared_data / "tiles" / "crc-he").rglob("*") if p.suffix.lower() in (".tif", ".jpg"))
    assert len(tiles) == 45 and len(crc) >= 20
    code, out, err = run_cli(capsys, trained_pathmnist_run.path, *tiles, *crc, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["classified"] == len(tiles) + len(crc) and doc["failed"] == 0
    assert doc["model"]["classes"][8] == "colorectal adenocarcinoma epithelium" and not doc["model"]["synthetic"]
    results = doc["results"]
    for rec in results:
        assert abs(sum(rec["probabilities"].values()) - 1) < 1e-3
        assert rec["prediction"] == max(rec["probabilities"], key=rec["probabilities"].get)
    # The 224 px PNGs are PathMNIST tiles upscaled: preprocessing must bring back what the model was trained on.
    truth = [CODES.index(p.parent.name) for p in tiles]
    predicted = [doc["model"]["classes"].index(r["prediction"]) for r in results[: len(tiles)]]
    accuracy = np.mean(np.array(truth) == np.array(predicted))
    assert accuracy >= 0.4, f"accuracy {accuracy:.2f} on PathMNIST tiles (9 classes)"
    tta_code, tta_out, _ = run_cli(capsys, trained_pathmnist_run.path, *tiles[:5], "--json", "--tta")
    assert tta_code == 0 and json.loads(tta_out)["tta"] is True


def test_bad_files_next_to_good_ones(trained_pathmnist_run, shared_data, tmp_path, capsys):
    good = sorted((shared_data / "tiles" / "pathmnist-224").glob("TUM/*.png"))[:2]
    bad = bad_files(tmp_path / "bad", good[0])
    code, out, err = run_cli(capsys, trained_pathmnist_run.path, good[0], *bad, tmp_path / "missing.png", good[1])
    assert code == 1  # some files could not be read
    lines = out.splitlines()
    arch = trained_pathmnist_run.config()["arch"]
    assert lines[0].startswith(f"model: {trained_pathmnist_run.id} ({arch}, 28 px, 9 classes)")
    errors = [line for line in lines if line.startswith("ERROR ")]
    assert errors == [
        "ERROR corrupt.png: damaged or truncated PNG file, cannot decode its pixels (image file is truncated)",
        "ERROR notes.png: not an image (it is a text file; cannot identify image file)",
        "ERROR empty.png: empty file (0 bytes), not an image",
        errors[3],
        "ERROR missing.png: no such file",
    ]
    assert errors[3].startswith("ERROR bomb.png: refused, the image declares 2,500,000,000 pixels")
    classified = [line for line in lines if line.startswith(good[0].name) or line.startswith(good[1].name)]
    assert len(classified) == 2  # both good files still classified, in order around the bad ones
    assert lines[-1] == "2 classified, 5 could not be read"
    code, out, _ = run_cli(capsys, trained_pathmnist_run.path, *bad, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["classified"] == 0 and [r["file"] for r in doc["results"]] == [p.name for p in bad]


def test_cam_files(trained_pathmnist_run, shared_data, tmp_path, capsys):
    src = sorted((shared_data / "tiles" / "pathmnist-224").glob("*/*.png"))[::9]
    weird = tmp_path / "in" / "we\x1bird name (1).png"
    weird.parent.mkdir()
    weird.write_bytes(src[0].read_bytes())
    cam_dir = tmp_path / "cams"
    code, out, err = run_cli(
        capsys,
        trained_pathmnist_run.path,
        *src,
        weird,
        "--cam",
        "GradCAM++",
        "--cam-dir",
        cam_dir,
        "--target",
        "8",
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    written = sorted(p.name for p in cam_dir.iterdir())
    assert len(written) == len(src) + 1
    assert all(n.endswith("_GradCAMpp_colorectal_adenocarcinoma_epithelium.png") for n in written)
    assert "we_ird_name_1_GradCAMpp_colorectal_adenocarcinoma_epithelium.png" in written
    for rec in doc["results"]:
        assert rec["cam"]["target"] == "colorectal adenocarcinoma epithelium"
        assert isinstance(rec["cam"]["uniform"], bool)  # a forced class with no evidence may give a flat map
        img = np.asarray(Image.open(rec["cam"]["path"]))
        assert img.shape == (224, 224, 3)
    # explaining each tile's own prediction: maps with something to show
    code, out, _ = run_cli(
        capsys, trained_pathmnist_run.path, *src, "--cam", "GradCAM", "--cam-dir", tmp_path / "own", "--json"
    )
    recs = json.loads(out)["results"]
    assert code == 0 and all(r["cam"]["target"] == r["prediction"] for r in recs)
    assert sum(r["cam"]["uniform"] for r in recs) <= 1, [r["cam"] for r in recs]
    # duplicate names from different folders do not overwrite each other
    dup = tmp_path / "other" / src[0].name
    dup.parent.mkdir()
    dup.write_bytes(src[0].read_bytes())
    code, out, _ = run_cli(
        capsys, trained_pathmnist_run.path, src[0], dup, "--cam", "EigenCAM", "--cam-dir", tmp_path / "cams2"
    )
    assert code == 0 and len(list((tmp_path / "cams2").iterdir())) == 2


def test_folder_input_and_text_output(trained_pathmnist_run, shared_data, capsys):
    code, out, _ = run_cli(
        capsys, trained_pathmnist_run.path, shared_data / "tiles" / "crc-he" / "NCT-CRC-HE-100K-NONORM"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[-1] == "9 classified, 0 could not be read"
    first = lines[1]
    assert first.startswith("ADI-") and "(" in first
    assert lines[2].startswith("  unlike-the-training-tiles score ")  # the flag's score under each file
    assert lines[3].startswith("  adipose ") and "colorectal adenocarcinoma epithelium" in lines[3]


def test_model_by_id_and_export_name(trained_pathmnist_run, shared_data, capsys):
    (paths.runs_dir() / trained_pathmnist_run.id).symlink_to(trained_pathmnist_run.path)
    tile = sorted((shared_data / "tiles" / "pathmnist-224").glob("ADI/*.png"))[0]
    code, out, _ = run_cli(capsys, trained_pathmnist_run.id, tile, "--json")
    assert code == 0 and json.loads(out)["model"]["label"] == trained_pathmnist_run.id
    import shutil

    shutil.copy(trained_pathmnist_run.best_ckpt, paths.weights_dir() / "crc-mini.pt")
    code, out, _ = run_cli(capsys, "crc-mini", tile, "--json")
    assert code == 0 and json.loads(out)["model"]["label"] == "crc-mini"


def test_bad_model_and_options(trained_pathmnist_run, tmp_path, capsys):
    tile = tmp_path / "t.png"
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tile)
    code, out, err = run_cli(capsys, "no-such-model", tile)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: no-such-model: not a run directory, run id, model file or export name")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 not really")
    code, _, err = run_cli(capsys, junk, tile)
    assert code == 2 and "junk.pt: not a" in err
    code, _, err = run_cli(capsys, trained_pathmnist_run.path, tile, "--cam", "GradCAM")
    assert code == 2 and "--cam needs --cam-dir" in err
    code, _, err = run_cli(capsys, trained_pathmnist_run.path, tile, "--target", "kidney")
    assert code == 2 and "--target 'kidney': not a class of this model" in err
    code, _, err = run_cli(capsys, trained_pathmnist_run.path, tmp_path / "empty-dir")
    assert code == 1  # a missing path is a per-file error
    (tmp_path / "empty-dir").mkdir()
    code, _, err = run_cli(capsys, trained_pathmnist_run.path, tmp_path / "empty-dir")
    assert code == 2 and "folder holds no image files" in err


@pytest.mark.slow
def test_help_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "histo_core", "predict", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "exit status: 0 every file classified" in out.stdout
    assert "--cam METHOD" in out.stdout and "GradCAM++" in out.stdout
