"""Bad input gets one specific line (exit 2 in the CLI), never a traceback, a hang or a silent default."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from histo_core import paths
from histo_core.cli import main
from tests.runfiles import write_run


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--size", "100000"], "--size must be at most 1024 px"),
        (["--threads", "100000"], "--threads must be between 0 (all cores) and 512, got 100000"),
        (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295, got -1"),
        (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
    ],
)
def test_absurd_training_values_are_refused_before_a_run_folder_exists(capsys, flags, message):
    code, _, err = cli(capsys, "train", "--dataset", "synthetic", "--epochs", "1", *flags)
    assert code == 2 and message in one_line(err)
    assert not paths.runs_dir().exists() or not any(paths.runs_dir().iterdir())


def test_a_bad_slot_limit_is_refused_before_a_run_folder_exists(capsys, monkeypatch):
    monkeypatch.setenv("HISTO_MAX_RUNS_CPU", "abc")
    code, _, err = cli(capsys, "train", "--dataset", "synthetic", "--epochs", "1", "--device", "cpu")
    assert code == 2 and "HISTO_MAX_RUNS_CPU='abc' is not a whole number" in one_line(err)
    assert not paths.runs_dir().exists() or not any(paths.runs_dir().iterdir())


@pytest.fixture
def model_run():
    return write_run("completed")


def predict_json(capsys, *argv: str) -> tuple[int, dict, str]:
    code, out, err = cli(capsys, "predict", *argv, "--json")
    return code, (json.loads(out) if out.strip() else {}), err


def test_predict_reads_only_regular_files(capsys, model_run, tmp_path):
    fifo = tmp_path / "tile.png"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    code, doc, err = predict_json(capsys, model_run.id, str(fifo), "/dev/zero")
    assert "Traceback" not in err
    errors = [r["error"] for r in doc["results"]]
    assert errors[0] == "tile.png: not an image file (a device, pipe or socket); give a regular image file"
    assert errors[1] == "zero: not an image file (a device, pipe or socket); give a regular image file"


def test_cam_dir_that_cannot_be_written_is_one_line(capsys, model_run, tmp_path):
    tile = tmp_path / "t.png"
    Image.new("RGB", (40, 40), (200, 100, 150)).save(tile)
    code, _, err = cli(capsys, "predict", model_run.id, str(tile), "--cam", "GradCAM", "--cam-dir", "/proc/self/")
    assert code == 2 and "--cam-dir /proc/self/: cannot" in one_line(err)


def test_a_plain_pickle_is_named_as_such(capsys, tmp_path):
    pt = tmp_path / "model.pt"
    pt.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    code, _, err = cli(capsys, "predict", str(pt), str(pt))
    assert code == 2 and "a plain Python pickle, not a PyTorch checkpoint" in one_line(err)


def test_nan_labels_in_an_npz_are_named(tmp_path):
    from histo_core.datasets import open_dataset
    from histo_core.errors import DatasetError

    npz = tmp_path / "nan.npz"
    labels = np.array([0, 1, np.nan, 1], np.float64)
    np.savez(npz, train_images=np.zeros((4, 8, 8, 3), np.uint8), train_labels=labels)
    with pytest.raises(DatasetError, match=r"1 labels are not whole numbers \(e.g. nan at row 2\)"):
        open_dataset(npz)


@pytest.mark.parametrize("value", ["huge", "0", "-5"])
def test_a_bad_pixel_limit_is_refused_by_name(monkeypatch, value):
    from histo_core.errors import ConfigError
    from histo_core.image_decode import max_image_pixels

    monkeypatch.setenv("HISTO_MAX_IMAGE_PIXELS", value)
    with pytest.raises(ConfigError, match="HISTO_MAX_IMAGE_PIXELS"):
        max_image_pixels()


def test_a_runs_dir_that_is_a_file_is_named(capsys, monkeypatch, tmp_path):
    not_a_folder = tmp_path / "runs.txt"
    not_a_folder.write_text("x")
    monkeypatch.setenv("HISTO_RUNS_DIR", str(not_a_folder))
    code, _, err = cli(capsys, "runs", "list")
    assert code == 2 and "the runs directory is a file, not a folder" in one_line(err)


def test_datasets_info_refuses_a_negative_size(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["datasets", "--info", "synthetic", "--size", "-28"])
    assert exit_.value.code == 2
    assert "must be a tile size in pixels from 1 to 1024, got '-28'" in capsys.readouterr().err


def test_a_folder_bomb_cites_our_limit_not_pillows(tmp_path, monkeypatch):
    from histo_core.datasets import open_dataset

    for c in ("A", "B"):
        (tmp_path / "ds" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20, 20), (10 * i, 90, 200)).save(tmp_path / "ds" / c / f"{i}.png")
    Image.new("L", (6000, 6000)).save(tmp_path / "ds" / "A" / "bomb.png")  # 36 M pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)  # Pillow's own guard fires first
    monkeypatch.setenv("HISTO_MAX_IMAGE_PIXELS", "20000000")
    ds = open_dataset(tmp_path / "ds", size=28)
    skipped = " ".join(ds.info.extra["skipped"])
    assert "bomb.png: more pixels than the limit of 20,000,000 (HISTO_MAX_IMAGE_PIXELS)" in skipped
