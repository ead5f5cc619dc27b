"""Evaluating a model on a labelled dataset: class matching (names, NCT abbreviations, user map), classes with no
counterpart reported apart, --split all, saving with the run, weights files, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from histo_core import paths
from histo_core.errors import HistoError
from histo_core.evaluation import evaluate, evaluate_run, list_evaluations

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def synthetic_run():
    from tests.runfiles import write_run

    return write_run("completed", seed=1)


@pytest.mark.slow
def test_own_dataset_and_a_resized_npz_with_generic_class_names(synthetic_run, tmp_path):
    from histo_core.datasets import open_dataset

    own = evaluate_run(synthetic_run, split="val")
    assert own["split"] == "val" and own["n"] == 300 and len(own["confusion"]) == 6
    assert not list_evaluations(synthetic_run)  # evaluate_run does not save
    big = open_dataset("synthetic", size=40).split("test")
    np.savez(tmp_path / "other.npz", test_images=big.images, test_labels=big.labels)
    other = evaluate(str(synthetic_run.path), str(tmp_path / "other.npz"), name="resized")
    assert other["n"] == 300 and other["dataset"].endswith("other.npz") and other["unmatched"] == []
    assert [e["name"] for e in list_evaluations(synthetic_run)] == ["resized"]


def test_classes_matched_by_name_the_rest_reported_apart(synthetic_run, pathmnist_mini):
    """The synthetic model knows adipose, background, lymphocytes, mucus of PathMNIST's nine classes."""
    rep = evaluate(str(synthetic_run.path), str(pathmnist_mini), "test")
    matched = {k: v for k, v in rep["class_matching"].items() if v}
    assert set(matched) == {"adipose", "background", "lymphocytes", "mucus"}
    apart = {u["class"]: u["tiles"] for u in rep["unmatched"]}
    assert set(apart) == {
        "debris",
        "smooth muscle",
        "normal colon mucosa",
        "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium",
    }
    assert rep["n"] + sum(apart.values()) == rep["tiles_total"] == 40
    assert all(sum(u["predicted_as"].values()) == u["tiles"] for u in rep["unmatched"])


def test_errors_are_one_clear_line(synthetic_run, tmp_path):
    with pytest.raises(HistoError, match="split 'nope': the dataset has train, val, test"):
        evaluate(str(synthetic_run.path), split="nope")
    with pytest.raises(HistoError, match="'NOPE' is not a class of the dataset"):
        evaluate(str(synthetic_run.path), class_map={"NOPE": "adipose"})


@pytest.mark.slow
def test_kather_folder_with_a_class_map_and_split_all(trained_pathmnist_run, shared_data):
    folder = shared_data / "tiles" / "kather2016"
    rep = evaluate(
        str(trained_pathmnist_run.path),
        str(folder),
        "all",
        class_map={
            "01_TUMOR": "TUM",
            "02_STROMA": "STR",
            "04_LYMPHO": "LYM",
            "05_DEBRIS": "DEB",
            "06_MUCOSA": "NORM",
            "07_ADIPOSE": "ADI",
            "08_EMPTY": "BACK",
        },
        name="kather 2016",
    )
    assert rep["tiles_total"] == 32 and rep["split"] == "all"
    assert rep["class_matching"]["01_TUMOR"] == "colorectal adenocarcinoma epithelium"
    assert [u["class"] for u in rep["unmatched"]] == ["03_COMPLEX"]
    assert rep["n"] == 32 - rep["unmatched"][0]["tiles"] and 0 <= rep["accuracy"] <= 1
    assert rep["name"] == "kather-2016" and Path(rep["saved_to"]).parent == trained_pathmnist_run.path / "evaluations"
    assert list_evaluations(trained_pathmnist_run)[0]["name"] == "kather-2016"


@pytest.mark.slow
def test_a_weights_file_on_a_folder_named_by_abbreviations(trained_pathmnist_run, shared_data, tmp_path):
    from histo_core.export import export_run

    pt = export_run(trained_pathmnist_run, "shipped-like")
    rep = evaluate(str(pt), str(shared_data / "tiles" / "crc-he" / "NCT-CRC-HE-100K-NONORM"), "all")
    assert rep["n"] == 9 and rep["unmatched"] == [] and "saved_to" not in rep
    assert rep["class_matching"]["TUM"] == "colorectal adenocarcinoma epithelium"


@pytest.mark.slow
def test_cli_evaluate_with_a_class_map(trained_pathmnist_run, shared_data):
    env = {**os.environ, "HISTO_RUNS_DIR": str(paths.runs_dir()), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "histo_core",
        "evaluate",
        str(trained_pathmnist_run.path),
        "--dataset",
        str(shared_data / "tiles" / "kather2016"),
        "--split",
        "all",
        "--class-map",
        "01_TUMOR=TUM,02_STROMA=STR",
        "--name",
        "cli-kather",
    ]
    p = subprocess.run([*cmd, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["class_matching"]["02_STROMA"] == "cancer-associated stroma" and doc["n"] == 8
    assert {u["class"] for u in doc["unmatched"]} == {
        "03_COMPLEX",
        "04_LYMPHO",
        "05_DEBRIS",
        "06_MUCOSA",
        "07_ADIPOSE",
        "08_EMPTY",
    }
    text = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "01_TUMOR -> TUM" in text.stdout and "03_COMPLEX: 4 tile(s) not scored" in text.stdout
    assert "saved as evaluation 'cli-kather'" in text.stdout
    bad = subprocess.run(
        [*cmd[:-2], "--class-map", "01_TUMOR=tumor"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "'tumor' is not a class of the model" in bad.stderr


def test_where_evaluations_are_saved(synthetic_run, shipped_model):
    """A run's in its evaluations/ folder; a weights model's (by path or export name) in one folder per model under
    the data dir, never in weights/."""
    from histo_core.evaluation import evaluations_folder

    assert (
        evaluations_folder(synthetic_run)
        == evaluations_folder(str(synthetic_run.path))
        == synthetic_run.path / "evaluations"
    )
    folder = paths.data_dir() / "evaluations" / "pathmnist-resnet9"
    assert evaluations_folder(str(shipped_model)) == folder
    assert list_evaluations(str(shipped_model)) == []
