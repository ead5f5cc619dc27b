"""Looking inside a model: embeddings saved at the end of training, exact cosine search and the k-NN vote, the
ROAD faithfulness score (a wrong map must rank below the real one), the background embed job, and the CLI
commands embed / similar / label-errors / explain-quality on a model trained on real PathMNIST tiles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo_core import paths
from histo_core.cli import main
from histo_core.embeddings import load_store, sample_points, target_for
from histo_core.errors import HistoError
from histo_core.similar import cosine_knn, knn_vote

ROOT = Path(__file__).resolve().parent.parent


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- pure parts ------------------------------------------------------------------------------------------
def test_sample_points_all_or_proportional():
    small = sample_points({"train": 100, "val": 20, "test": 20}, max_points=1000)
    assert [len(v) for v in small.values()] == [100, 20, 20]
    big = sample_points({"train": 30_000, "val": 5_000, "test": 5_000}, max_points=20_000)
    assert [len(v) for v in big.values()] == [15_000, 2_500, 2_500]
    assert all((np.diff(v) > 0).all() for v in big.values())  # sorted, no repeats
    assert (sample_points({"train": 30_000, "val": 5_000, "test": 5_000})["val"] == big["val"]).all()  # seeded


def test_cosine_knn_is_exact_across_blocks():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(103, 16)).astype(np.float16)
    q = rng.normal(size=(5, 16)).astype(np.float32)
    pos, dist = cosine_knn(ref, q, k=7, block=10)  # 11 blocks: the merge must keep the global best
    r = ref.astype(np.float32)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (r / np.linalg.norm(r, axis=1, keepdims=True)).T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :7]
    assert (pos == expected).all()
    assert np.allclose(dist, 1 - np.take_along_axis(sims, expected, 1), atol=1e-5)
    assert (np.diff(dist, axis=1) >= 0).all()
    # a reference row queried with itself comes first at distance ~0, unless excluded
    pos, dist = cosine_knn(ref, ref[[4, 50]].astype(np.float32), k=3, block=10)
    assert list(pos[:, 0]) == [4, 50] and dist[:, 0].max() < 1e-5
    pos, _ = cosine_knn(ref, ref[[4, 50]].astype(np.float32), k=3, exclude_self=np.array([4, 50]), block=10)
    assert 4 not in pos[0] and 50 not in pos[1]


def test_knn_vote_majority_and_ties():
    labels = np.array([[1, 1, 2, 0], [2, 0, 0, 2], [3, 3, 3, 3]])
    dist = np.array([[0.1, 0.2, 0.3, 0.4], [0.05, 0.3, 0.3, 0.06], [0.1, 0.1, 0.1, 0.1]])
    voted, share = knn_vote(labels, dist, 4)
    assert list(voted) == [1, 2, 3]  # row 1: a 2-2 tie goes to the closer neighbours (class 2)
    assert list(share) == [0.5, 0.5, 1.0]


# -- embeddings of a real run ------------------------------------------------------------------------------
def test_training_saves_embeddings(trained_pathmnist_run):
    store = load_store(target_for(str(trained_pathmnist_run.path)).out_dir)
    assert store is not None
    assert store.meta["counts"] == {"train": 160, "val": 40, "test": 40}
    assert store.meta["projected"] == 240 and "t-SNE" in store.meta["projection"]
    feats = store.features("train")
    assert feats.dtype == np.float16 and feats.shape == (160, store.meta["dims"]) and np.isfinite(feats).all()
    assert np.abs(np.asarray(feats, np.float32)).sum(1).min() > 0
    xy, split, row = store.projection()
    assert xy.shape == (240, 2) and np.isfinite(xy).all() and np.bincount(split).tolist() == [160, 40, 40]
    with np.load(trained_pathmnist_run.predictions_path("test")) as z:
        assert (store.outputs("test")[1] == z["labels"]).all()
    df = store.points()
    assert len(df) == 240 and set(df["split"]) == {"train", "val", "test"}


def test_knn_vote_agrees_with_the_model(trained_pathmnist_run):
    from histo_core.similar import agreement_report

    rep = agreement_report(load_store(target_for(str(trained_pathmnist_run.path)).out_dir), k=8)
    assert rep["tiles"] == 40 and rep["reference_tiles"] == 160  # this run trained on train only
    assert rep["agreement"] >= 0.7 and rep["knn_accuracy"] >= 0.6 and rep["top1_label_accuracy"] >= 0.5


def test_faithfulness_ranks_wrong_maps_below_real_ones(trained_pathmnist_run, monkeypatch):
    from histo_core.explain import compute_cams
    from histo_core.faithfulness import describe, road_scores, verdict
    from histo_core.model_cache import load_model
    from histo_core.predict import predict
    from histo_core.review import RunTiles

    loaded = load_model(str(trained_pathmnist_run.path))
    tiles = RunTiles(trained_pathmnist_run).get("test", np.arange(40))
    targets = predict(loaded, tiles).argmax(1)
    cams = compute_cams(loaded.model, loaded.meta, tiles, "GradCAM", targets=targets)
    real = road_scores(loaded.model, loaded.meta, tiles, cams, targets)
    inverted = road_scores(loaded.model, loaded.meta, tiles, 1.0 - cams, targets)
    noise = np.random.default_rng(0).random(cams.shape).astype(np.float32)
    random = road_scores(loaded.model, loaded.meta, tiles, noise, targets)
    assert real.mean() > random.mean() > inverted.mean()
    assert (real > inverted).mean() >= 0.7
    assert np.allclose(real, road_scores(loaded.model, loaded.meta, tiles, cams, targets))  # seeded
    # the unperturbed batch goes through the model once, not before each of the 8 perturbations; same scores
    import histo_core.faithfulness as faithfulness

    calls: list[int] = []
    hook = loaded.model.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    once = road_scores(loaded.model, loaded.meta, tiles, cams, targets)
    passes_once = len(calls)
    monkeypatch.setattr(faithfulness, "OriginalOnce", lambda model, original: model)
    every_time = road_scores(loaded.model, loaded.meta, tiles, cams, targets)
    hook.remove()
    assert (passes_once, len(calls) - passes_once) == (9, 16)  # one batch of 40 tiles, four percentiles
    assert np.allclose(once, real) and np.allclose(every_time, real)
    assert verdict(np.array([0.1, -0.02, 0.3]), np.array([False, False, True])) == ["faithful", "unfaithful", "flat"]
    assert "may mislead" in describe(-0.01, False) and describe(0.0, True).startswith("flat")
    assert "-0.000" not in describe(-0.0001, False) and "ROAD score 0.000" in describe(-0.0001, False)  # was jargon
    assert "UNFAITHFUL" not in describe(-0.01, False) and "may mislead" not in describe(0.02, False)


# -- CLI -----------------------------------------------------------------------------------------------------
def test_similar_returns_a_training_tile_itself_first(trained_pathmnist_run, pathmnist_mini, tmp_path, capsys):
    with np.load(pathmnist_mini) as z:
        tiles, labels = z["train_images"][[3, 77]], z["train_labels"].reshape(-1)[[3, 77]]
    files = []
    for i, t in zip((3, 77), tiles):
        Image.fromarray(t).save(tmp_path / f"train{i}.png")
        files.append(tmp_path / f"train{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    code, out, err = cli(
        capsys, "similar", trained_pathmnist_run.path, *files, tmp_path / "broken.png", "--k", "4", "--json"
    )
    assert code == 1, err  # one file could not be read; the others are answered
    doc = json.loads(out)
    classes = load_store(target_for(str(trained_pathmnist_run.path)).out_dir).classes
    for rec, row, label in zip(doc["results"][:2], (3, 77), labels):
        first = rec["neighbours"][0]
        assert (first["split"], first["row"], first["label"]) == ("train", row, classes[label])
        assert first["distance"] < 1e-3 and len(rec["neighbours"]) == 4
        assert rec["knn_vote"] in classes and isinstance(rec["agree"], bool)
    assert doc["results"][2]["file"] == "broken.png" and "error" in doc["results"][2]
    code, out, _ = cli(capsys, "similar", trained_pathmnist_run.path, files[0], "--k", "2")
    assert code == 0 and "k-NN vote" in out and "train#3 0.00" in out


def test_explain_quality_cli(trained_pathmnist_run, capsys):
    code, out, err = cli(
        capsys, "explain-quality", trained_pathmnist_run.path, "--tiles", "6", "--methods", "GradCAM,EigenCAM", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["tiles"] == 6 and doc["sampled"] and [r["rank"] for r in doc["methods"]] == [1, 2]
    assert {r["method"] for r in doc["methods"]} == {"GradCAM", "EigenCAM"}
    assert "EigenCAM: maps and ROAD scores" in err  # progress on stderr
    saved = json.loads(trained_pathmnist_run.faithfulness_path.read_text())
    assert saved["methods"] == doc["methods"]
    trained_pathmnist_run.faithfulness_path.unlink()


def test_label_errors_cli(trained_pathmnist_run, capsys):
    code, out, err = cli(
        capsys,
        "label-errors",
        trained_pathmnist_run.path,
        "--folds",
        "2",
        "--epochs",
        "1",
        "--recompute",
        "--top",
        "5",
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    s = doc["summary"]
    assert not doc["cached"] and s["tiles"] == 160 and s["flipped"] == 16 and len(doc["ranked"]) == 5
    assert "fold 1/2: training on" in err  # progress on stderr (the first line of each step is always shown)
    code, out, _ = cli(capsys, "label-errors", trained_pathmnist_run.path)
    assert code == 0 and "[saved result; --recompute to search again]" in out
    trained_pathmnist_run.label_errors_path.unlink()  # the session's shared run stays as it was


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "no-such-run"], "no-such-run: not a run directory"),
        (["embed", "RUN", "--max-points", "3"], "--max-points must be at least 10"),
        (["similar", "RUN", "x.png", "--k", "0"], "--k must be a positive integer"),
        (["label-errors", "RUN", "--folds", "1"], "--folds must be at least 2"),
        (["label-errors", "no-such-run"], "no-such-run: no such run"),
        (["explain-quality", "RUN", "--methods", "GradCAM,Magic"], "--methods: unknown method 'Magic'"),
        (["explain-quality", "RUN", "--tiles", "0"], "--tiles must be a positive integer"),
    ],
)
def test_bad_input_one_line_exit_2(argv, message, capsys, trained_pathmnist_run):
    argv = [str(trained_pathmnist_run.path) if a == "RUN" else a for a in argv]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("command", ["embed", "similar", "label-errors", "explain-quality"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0 and "usage:" in capsys.readouterr().out


# -- background embed process (the `embed` kind) ---------------------------------------------------------------
@pytest.mark.slow
def test_embed_task_for_an_export_and_a_failing_one(trained_pathmnist_run):
    from histo_core.export import export_run
    from histo_core.launch import submit_task
    from tests.taskfiles import wait_for_task

    export_run(trained_pathmnist_run, "mini")
    target = target_for("mini")
    assert target.run_path is None and str(paths.data_dir()) in str(target.out_dir)
    task = submit_task("embed", {"model": "mini", "splits": ["test", "train"]})
    with pytest.raises(HistoError, match="this feature map is already (queued|running)"):
        submit_task("embed", {"model": "mini", "splits": ["test", "train"]})
    status = wait_for_task(task, 240)
    assert status.state == "completed", (status, task.log_path.read_text())
    store = load_store(target.out_dir)
    assert store.meta["counts"] == {"test": 40, "train": 160} and store.meta["projected"] == 200
    assert task.result()["counts"] == {"test": 40, "train": 160} and status.step == status.steps_per_epoch

    bad = submit_task("embed", {"model": "no-such-model"})
    status = wait_for_task(bad, 240)
    assert status.state == "failed" and "no-such-model: not a run directory" in status.error


@pytest.mark.slow
def test_embed_cli_in_a_subprocess(trained_pathmnist_run, tmp_path):
    """The command the background job runs, as a user would type it: progress on stderr, JSON on stdout."""
    from histo_core.export import export_run

    export_run(trained_pathmnist_run, "mini2")
    proc = subprocess.run(
        [sys.executable, "-m", "histo_core", "embed", "mini2", "--split", "val", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["counts"] == {"val": 40} and doc["projected"] == 40
    assert "[100%] saved 40 tiles' features" in proc.stderr


# -- the training tiles of a shipped model -------------------------------------------------------------------
def test_shipped_model_uses_the_dataset_its_card_names(shipped_model, pathmnist_mini):
    """Bug: for a shipped model the similar-tiles panel said the model does not record its dataset (its card
    names it), showing a server path and a CLI flag."""
    from histo_core.embeddings import target_for

    target = target_for(str(shipped_model))
    assert Path(target.dataset).resolve() == pathmnist_mini.resolve()


def test_a_model_whose_tiles_are_absent_says_so_in_plain_words(shipped_model, tmp_path):
    import json
    import shutil

    from histo_core.embed_target import MissingTrainingData, target_for

    pt = tmp_path / "elsewhere.pt"
    shutil.copy(shipped_model, pt)
    card = json.loads(shipped_model.with_suffix(".json").read_text())
    card["dataset"]["file"] = "no/such/pathmnist.npz"
    card["training"]["config"]["dataset"] = str(tmp_path / "gone" / "pathmnist.npz")
    pt.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(MissingTrainingData) as info:
        target_for(str(pt))
    text = str(info.value)
    assert "was trained on PathMNIST" in text and "ships no data" in text
    assert "--dataset" not in text and str(tmp_path) not in text


def test_the_card_names_the_training_file_before_the_trainers_absolute_path(shipped_model, pathmnist_mini, tmp_path):
    """Bug (CI on a clone elsewhere): the config's absolute path of the machine that trained the shipped model
    exists on some machines and won over the card's portable file."""
    import json
    import shutil

    from histo_core.embeddings import target_for

    pt = tmp_path / "moved.pt"
    shutil.copy(shipped_model, pt)
    shutil.copy(pathmnist_mini, tmp_path / "its-tiles.npz")
    card = json.loads(shipped_model.with_suffix(".json").read_text())
    card["dataset"]["file"] = "its-tiles.npz"
    card["training"]["config"]["dataset"] = str(pathmnist_mini.resolve())
    pt.with_suffix(".json").write_text(json.dumps(card))
    assert Path(target_for(str(pt)).dataset) == (tmp_path / "its-tiles.npz").resolve()
