"""Test helper: write a realistic run directory without training (fast), in the run-dir contract's layout.

The checkpoint holds a real SimpleCNN's weights; reports come from histo_core.metrics on generated
probabilities, so pages and exports see exactly the shapes a real run produces. Tests that need the real
trainer use histo_core.training / jobs.submit instead.
"""

from __future__ import annotations

import time

import numpy as np

from histo_core.checkpoint import save_checkpoint
from histo_core.config import TrainConfig
from histo_core.fsutil import savez_atomic, write_json_atomic
from histo_core.metrics import classification_report
from histo_core.models import build_model
from histo_core.runs import RunDir, RunStatus, create_run_dir

CLASSES = ["adipose", "background", "lymphocytes", "stroma", "tumour", "mucus"]


def _probs(labels: np.ndarray, k: int, skill: float, rng: np.random.Generator) -> np.ndarray:
    logits = rng.normal(0, 1, (len(labels), k))
    logits[np.arange(len(labels)), labels] += skill
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def write_run(
    state: str = "completed",
    *,
    epochs: int = 3,
    epochs_done: int | None = None,
    name: str = "",
    arch: str = "simplecnn",
    lr: float = 1e-3,
    noise: float = 0.0,
    skill: float = 2.5,
    seed: int = 0,
    error: str | None = None,
    pid: int | None = None,
    run_id: str | None = None,
    classes: list[str] | None = None,
) -> RunDir:
    """A run directory in `state`. completed: results, predictions, best/last.pt; failed/cancelled: the epochs
    done so far, last.pt and val_latest.json; running/queued: status with `pid` and a fresh heartbeat."""
    rng = np.random.default_rng(seed)
    class_names = list(classes or CLASSES)
    cfg = TrainConfig(
        dataset="synthetic",
        arch=arch,
        epochs=epochs,
        lr=lr,
        noise=noise,
        batch_size=64,
        name=name,
        seed=seed,
        device="cpu",
    )
    run = create_run_dir(None, run_id)
    write_json_atomic(run.config_path, cfg.to_dict())
    dataset = {
        "name": "synthetic",
        "title": "Synthetic H&E demo (SYNTHETIC)",
        "source": "synthetic",
        "classes": class_names,
        "channels": 3,
        "size": 28,
        "synthetic": True,
        "num_classes": len(class_names),
    }
    write_json_atomic(run.dataset_path, dataset)
    done = epochs if state == "completed" else (epochs_done if epochs_done is not None else 1)
    now = time.time()
    for e in range(1, done + 1):
        run.append_metrics(
            {
                "epoch": e,
                "train_loss": 1.5 / e,
                "train_acc": 0.5 + 0.1 * e,
                "val_loss": 1.6 / e,
                "val_acc": 0.45 + 0.1 * e,
                "val_auc": 0.8 + 0.03 * e,
                "lr": lr,
                "seconds": 2.0,
                "images_per_s": 900.0,
            }
        )
    k = len(class_names)
    labels = np.repeat(np.arange(k), 10)
    val_probs = _probs(labels, k, skill, rng)
    val_report = classification_report(val_probs, labels, class_names)
    if done:
        write_json_atomic(run.val_latest_path, val_report)
        model = build_model(arch, k, 3, 28)
        meta = {
            "arch": arch,
            "num_classes": k,
            "in_channels": 3,
            "input_size": 28,
            "classes": class_names,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "mlp_head": False,
            "dataset": {"name": "synthetic", "title": dataset["title"], "synthetic": True, "source": "synthetic"},
        }
        save_checkpoint(run.last_ckpt, model, meta, epoch=done, train_state={"epoch": done, "note": "test"})
        if state == "completed":
            save_checkpoint(run.best_ckpt, model, meta, epoch=done, metrics={"val_acc": 0.75})
    if state == "completed":
        test_probs = _probs(labels, k, skill, rng)
        test_report = classification_report(test_probs, labels, class_names)
        write_json_atomic(
            run.results_path,
            {
                "test": test_report,
                "val": val_report,
                "best_epoch": done,
                "epochs_run": done,
                "stopped_early": False,
                "train_seconds": 6.0,
                "device": "cpu",
            },
        )
        savez_atomic(run.predictions_path("test"), probs=test_probs, labels=labels, indices=np.arange(len(labels)))
    from histo_core.procs import proc_start_time

    status = RunStatus(
        state=state,
        pid=pid,
        pid_start=proc_start_time(pid),
        created_at=now - 60,
        started_at=now - 50,
        heartbeat=now,
        epoch=done,
        epochs=epochs,
        steps_per_epoch=10,
        step=3 if state == "running" else 0,
        images_per_s=900.0,
        eta_s=20.0 if state == "running" else None,
        phase="train",
        error=error,
        finished_at=None if state in ("queued", "running") else now - 5,
        device="cpu",
    )
    run.write_status(status)
    (run.log_path).write_text("=== start\nepoch 1 train loss 1.5\n" + (f"RuntimeError: {error}\n" if error else ""))
    return run
