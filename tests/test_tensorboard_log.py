"""TensorBoard logs beside metrics.jsonl: scalars per epoch, hyper-parameters with final metrics, confusion
matrix images; a real run writes them as it trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histo_core.tensorboard_log import RunBoard, confusion_image


def read_events(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"images": 10, "scalars": 1000})
    acc.Reload()
    return acc


def test_board_writes_scalars_hparams_and_the_confusion_matrix(tmp_path):
    board = RunBoard(tmp_path)
    for e in (1, 2, 3):
        board.epoch({"epoch": e, "train_loss": 1.0 / e, "val_loss": None, "train_acc": 0.5 + 0.1 * e, "lr": 1e-3})
    results = {"epochs_run": 3, "test": {"accuracy": 0.75, "auc": 0.9, "confusion": [[3, 1], [0, 4]]}}
    board.finish({"arch": "resnet9", "lr": 1e-3, "augment": {"flip": True}, "size": None}, results, ["a", "b"])
    board.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))
    acc = read_events(tmp_path)
    tags = acc.Tags()
    assert {"loss/train", "accuracy/train_given_labels", "lr"} <= set(tags["scalars"])
    assert "loss/val" not in tags["scalars"]  # None is not logged as a value
    assert [s.step for s in acc.Scalars("loss/train")] == [1, 2, 3]
    assert acc.Scalars("loss/train")[1].value == np.float32(0.5)
    assert "confusion_matrix/test" in tags["images"]
    hp = [p for p in tmp_path.rglob("events.out.tfevents.*")]
    assert any("hparam/test_accuracy" in str(read_events(p.parent).Tags()["scalars"]) for p in hp)


def test_confusion_image_shows_counts_as_shades():
    img = confusion_image(np.array([[9, 0], [1, 5]]), ["adipose", "background"])
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and img.shape[0] == img.shape[1]


def test_a_real_run_writes_its_board_as_it_trains(trained_pathmnist_run):
    run = trained_pathmnist_run
    assert list(run.path.glob("events.out.tfevents.*")), "no TensorBoard events beside metrics.jsonl"
    acc = read_events(run.path)
    epochs = len(run.metrics())
    assert len(acc.Scalars("loss/train")) == epochs and len(acc.Scalars("accuracy/val")) == epochs
    assert "confusion_matrix/test" in acc.Tags()["images"]
