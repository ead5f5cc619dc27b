"""Export a finished run's model to weights/: <name>.pt (checkpoint format, no training state) + <name>.json card.

    path = export_run(resolve_run("20250101-120000-simplecnn-ab12"), "crc-simplecnn-v1")
    cards = list_exports()

The card says what the model is for without loading it: dataset (and whether it is the SYNTHETIC demo),
classes, input size and channels, normalisation, architecture, test metrics, the training config and the
run it came from. The Classify page and `predict` pick models from these cards.
"""

from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path
from typing import Any

from histo_core import paths
from histo_core.checkpoint import checkpoint_meta, load_checkpoint, model_from_checkpoint
from histo_core.errors import HistoError, ModelFileError
from histo_core.fsutil import read_json, torch_save_atomic, write_json_atomic
from histo_core.runs import RunDir

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CARD_VERSION = 1


def check_export_name(name: str) -> str:
    name = (name or "").strip()
    if name.lower().endswith(".pt"):
        name = name[:-3]
    if not NAME_PATTERN.match(name) or name in (".", ".."):
        raise HistoError(
            f"export name {name!r}: use 1-100 letters, digits, '-', '_' or '.', starting with a letter or digit "
            "(e.g. crc-resnet18-v1)"
        )
    return name


def export_paths(name: str, weights_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(<weights>/<name>.pt, <weights>/<name>.json) for a valid name."""
    root = paths.weights_dir(weights_dir)
    name = check_export_name(name)
    return root / f"{name}.pt", root / f"{name}.json"


def export_run(
    run: RunDir, name: str, weights_dir: str | os.PathLike | None = None, *, overwrite: bool = False
) -> Path:
    """Write the run's best.pt as weights/<name>.pt plus a model card weights/<name>.json; returns the .pt path."""
    pt_path, card_path = export_paths(name, weights_dir)
    if pt_path.stem.lower() in {n.lower() for n in shipped_model_names()}:
        raise HistoError(
            f"export name {pt_path.stem!r} is the name of a model shipped with Histo Explorer (reserved, so that "
            "the name always means that model); choose another name"
        )
    status = run.status()
    if status.state != "completed":
        raise HistoError(f"{run.id}: the run is {status.state}; only a completed run can be exported")
    if not run.best_ckpt.exists():
        raise HistoError(f"{run.id}: no best.pt in {run.path}; the run did not save a model")
    if not overwrite and (pt_path.exists() or card_path.exists()):
        raise HistoError(f"{pt_path}: an export named {pt_path.stem!r} exists; choose another name or overwrite it")
    ckpt = load_checkpoint(run.best_ckpt)
    model_from_checkpoint(ckpt, run.best_ckpt)  # refuse to export weights that would not load
    payload = {k: v for k, v in ckpt.items() if k != "train_state"}
    ood = (run.results() or {}).get("ood")
    if ood:
        payload["ood"] = ood
    card = model_card(run, payload, pt_path.stem)
    payload["export"] = {"name": pt_path.stem, "run_id": run.id, "exported_at": card["exported_at"]}
    try:
        pt_path.parent.mkdir(parents=True, exist_ok=True)
        torch_save_atomic(pt_path, payload)
        write_json_atomic(card_path, card)
    except OSError as exc:
        why = (
            "disk full: free space and export again"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else (exc.strerror or str(exc))
        )
        raise HistoError(f"{pt_path.parent}: cannot write the export ({why})") from None
    return pt_path


def model_card(run: RunDir, ckpt: dict[str, Any], name: str) -> dict[str, Any]:
    meta = checkpoint_meta(ckpt)
    dataset = run.dataset() or meta.get("dataset") or {}
    results = run.results() or {}
    test = results.get("test") or {}
    return {
        "card_version": CARD_VERSION,
        "name": name,
        "file": f"{name}.pt",
        "arch": meta["arch"],
        "classes": list(meta["classes"]),
        "num_classes": int(meta["num_classes"]),
        "input_size": int(meta["input_size"]),
        "in_channels": int(meta["in_channels"]),
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
        "dataset": {
            "name": dataset.get("name", ""),
            "title": dataset.get("title", ""),
            "source": dataset.get("source", ""),
            "synthetic": bool(dataset.get("synthetic")),
        },
        "metrics": {
            "test_accuracy": test.get("accuracy"),
            "test_auc": test.get("auc"),
            "test_ece": test.get("ece"),
            "test_n": test.get("n"),
            "best_epoch": results.get("best_epoch", meta.get("epoch")),
        },
        "precision": meta.get("precision") or results.get("precision"),  # bf16/fp16/fp32 (runs since issue 26)
        "precision_fallback": meta.get("precision_fallback") or results.get("precision_fallback"),  # fp16 -> fp32
        "training_config": run.config(),
        "corrections": results.get("corrections"),  # the label corrections it trained with (histo_core.corrections)
        "run_id": run.id,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def list_exports(weights_dir: str | os.PathLike | None = None, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The model cards in weights/, sorted by name, each with "path" (the .pt) and "card_path" added.

    A card that cannot be read, or whose .pt is missing, is skipped; pass `notes` to receive a line about each."""
    root = paths.weights_dir(weights_dir)
    if not root.is_dir():
        return []
    cards = []
    for card_path in sorted(root.glob("*.json")):
        card = read_json(card_path)
        problem = _card_problem(card, card_path)
        if problem:
            if notes is not None:
                notes.append(problem)
            continue
        card = dict(card, path=str(card_path.with_suffix(".pt")), card_path=str(card_path))
        cards.append(card)
    return cards


def shipped_model_names() -> list[str]:
    """The names of the models shipped with the project (cards marked "shipped"): reserved for them."""
    return [
        str(c.get("name") or Path(c["path"]).stem)
        for c in list_exports(paths.shipped_weights_dir())
        if c.get("shipped")
    ]


def _card_problem(card: Any, card_path: Path) -> str | None:
    if not isinstance(card, dict):
        return f"{card_path.name}: not a readable model card (invalid JSON); skipped"
    missing = [k for k in ("arch", "classes", "input_size", "in_channels") if k not in card]
    if missing:
        return f"{card_path.name}: model card lacks {', '.join(missing)}; skipped"
    if not card_path.with_suffix(".pt").is_file():
        return f"{card_path.name}: its weights file {card_path.with_suffix('.pt').name} is missing; skipped"
    return None


def delete_export(name: str, weights_dir: str | os.PathLike | None = None) -> None:
    pt_path, card_path = export_paths(name, weights_dir)
    if not pt_path.exists() and not card_path.exists():
        raise ModelFileError(f"{name}: no such export in {pt_path.parent}")
    pt_path.unlink(missing_ok=True)
    card_path.unlink(missing_ok=True)
