"""export_run / list_exports: weights/<name>.pt (loadable, no train_state) + model card."""

from __future__ import annotations

import json

import pytest
import torch

from histo_core import paths
from histo_core.checkpoint import load_checkpoint, model_from_checkpoint
from histo_core.errors import HistoError
from histo_core.export import check_export_name, delete_export, export_run, list_exports
from tests.runfiles import CLASSES, write_run


def test_export_writes_loadable_weights_and_card():
    run = write_run("completed", name="demo")
    path = export_run(run, "demo-simplecnn_v1.0")
    assert path == paths.weights_dir() / "demo-simplecnn_v1.0.pt"

    ckpt = load_checkpoint(path)
    assert "train_state" not in ckpt
    assert ckpt["classes"] == CLASSES and ckpt["input_size"] == 28 and ckpt["in_channels"] == 3
    exported = model_from_checkpoint(ckpt, path)
    original = model_from_checkpoint(load_checkpoint(run.best_ckpt))
    x = torch.rand(2, 3, 28, 28)
    assert torch.allclose(exported(x), original(x))

    card = json.loads(path.with_suffix(".json").read_text())
    test = run.results()["test"]
    assert card["arch"] == "simplecnn" and card["classes"] == CLASSES
    assert card["input_size"] == 28 and card["in_channels"] == 3
    assert card["mean"] == [0.5, 0.5, 0.5] and card["std"] == [0.25, 0.25, 0.25]
    assert card["dataset"]["synthetic"] is True and card["dataset"]["name"] == "synthetic"
    assert card["metrics"]["test_accuracy"] == pytest.approx(test["accuracy"])
    assert card["metrics"]["test_auc"] == pytest.approx(test["auc"])
    assert card["metrics"]["test_ece"] == pytest.approx(test["ece"])
    assert card["training_config"]["arch"] == "simplecnn" and card["training_config"]["epochs"] == 3
    assert card["run_id"] == run.id and card["exported_at"]


def test_export_refuses_overwrite_unless_asked():
    run = write_run("completed")
    export_run(run, "m1")
    with pytest.raises(HistoError, match="exists; choose another name or overwrite"):
        export_run(run, "m1")
    other = write_run("completed", seed=3)
    export_run(other, "m1", overwrite=True)
    assert json.loads((paths.weights_dir() / "m1.json").read_text())["run_id"] == other.id


@pytest.mark.parametrize("bad", ["", "../evil", "a/b", "has space", "-lead", "x" * 101, "é"])
def test_bad_export_names_are_refused(bad):
    with pytest.raises(HistoError, match="letters, digits"):
        check_export_name(bad)


def test_export_name_may_end_in_pt():
    assert check_export_name("model.pt") == "model"


def test_only_completed_runs_export():
    run = write_run("failed", error="boom")
    with pytest.raises(HistoError, match="failed; only a completed run can be exported"):
        export_run(run, "x")
    assert not (paths.weights_dir() / "x.pt").exists()


def test_list_exports_skips_broken_cards_with_a_note():
    run = write_run("completed")
    export_run(run, "good")
    weights = paths.weights_dir()
    (weights / "broken.json").write_text("{not json")
    (weights / "orphan.json").write_text(
        json.dumps({"arch": "simplecnn", "classes": ["a", "b"], "input_size": 28, "in_channels": 3})
    )
    notes: list[str] = []
    cards = list_exports(notes=notes)
    assert [c["name"] for c in cards] == ["good"]
    assert cards[0]["path"] == str(weights / "good.pt")
    assert any("broken.json" in n and "invalid JSON" in n for n in notes)
    assert any("orphan.json" in n and "orphan.pt is missing" in n for n in notes)


def test_delete_export():
    export_run(write_run("completed"), "gone")
    delete_export("gone")
    assert list_exports() == []
    with pytest.raises(HistoError, match="no such export"):
        delete_export("gone")


@pytest.mark.slow
def test_export_of_a_real_run_predicts_like_the_run():
    """A run trained by the real trainer, exported, then loaded by name the way Classify/predict do."""
    import numpy as np

    from histo_core.config import TrainConfig
    from histo_core.model_cache import load_model
    from histo_core.predict import predict
    from histo_core.training import prepare_run, run_training

    threads = torch.get_num_threads()
    try:
        run = prepare_run(
            TrainConfig(
                dataset="synthetic",
                arch="simplecnn",
                epochs=1,
                batch_size=32,
                max_train_samples=96,
                device="cpu",
                threads=1,
                tta=False,
            )
        )
        assert run_training(run)["state"] == "completed"
    finally:
        torch.set_num_threads(threads)
    export_run(run, "real-export")
    card = list_exports()[0]
    assert card["name"] == "real-export" and card["classes"] == run.dataset()["classes"]
    assert card["metrics"]["test_accuracy"] == pytest.approx(run.results()["test"]["accuracy"])

    tiles = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    from_export = predict(load_model("real-export"), tiles)
    from_run = predict(load_model(str(run.path)), tiles)
    assert np.allclose(from_export, from_run, atol=1e-6)


def test_a_shipped_models_name_is_reserved(shipped_model, capsys):
    import shutil

    from histo_core.cli import main
    from histo_core.model_catalog import resolve_model_path

    run = write_run("completed")
    code = main(["runs", "export", run.id, "--name", "pathmnist-resnet9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "name of a model shipped with Histo Explorer" in err and "Traceback" not in err
    assert not (paths.weights_dir() / "pathmnist-resnet9.pt").exists()
    # an export that took the name before names were reserved never shadows the shipped model
    shutil.copy(run.best_ckpt, paths.weights_dir() / "pathmnist-resnet9.pt")
    assert resolve_model_path("pathmnist-resnet9")[0] == shipped_model
