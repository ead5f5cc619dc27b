"""What to embed and where to keep it: a model (run dir, run id, weights .pt, export name) and a dataset (by
default the one it was trained on) resolved to an `EmbedTarget`: the checkpoint, how to open the dataset, and
the folder the embeddings go to (the run's `embeddings/`, or a cache folder for a frozen model on another set).
`histo_core.embeddings` computes and saves them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histo_core import paths
from histo_core.errors import HistoError
from histo_core.fsutil import read_json
from histo_core.model_catalog import resolve_model_path
from histo_core.runs import RunDir


class MissingTrainingData(HistoError):
    """The model's training tiles are not on this machine (or it does not say which they were); the message is
    plain words for a page. The CLI adds how to name a dataset (`--dataset SPEC`)."""


# -- where -----------------------------------------------------------------------------------------------
@dataclass
class EmbedTarget:
    """A model and a dataset to embed, and where the result lives."""

    model_ref: str  # what model_cache.load_model takes
    model_path: Path  # the checkpoint file
    label: str  # run id or export name
    dataset: str  # dataset spec
    open_kwargs: dict[str, Any]  # size, as_rgb, data_dir, seed for open_dataset
    out_dir: Path
    run_path: Path | None = None  # the run whose own dataset this is (None: a frozen model on some dataset)
    train_splits: str = "train"  # "train" or "train+val": the tiles the model learned from

    @property
    def reference_splits(self) -> list[str]:
        return ["train", "val"] if self.train_splits == "train+val" else ["train"]


def _training_config(model_path: Path) -> dict[str, Any]:
    """The training config of a run's checkpoint (config.json) or of an export or shipped model (its card's
    `training_config`, or `training.config`)."""
    run_cfg = RunDir(model_path.parent).config_path
    if run_cfg.exists():
        return read_json(run_cfg, {}) or {}
    card = _card(model_path)
    return card.get("training_config") or (card.get("training") or {}).get("config") or {}


def _card(model_path: Path) -> dict[str, Any]:
    card = read_json(model_path.with_suffix(".json"), {}) if model_path.with_suffix(".json").exists() else {}
    return card if isinstance(card, dict) else {}


def _own_dataset(model_path: Path, cfg: dict[str, Any]) -> str | None:
    """The dataset the model was trained on, as a spec that opens here: the file the model card names first
    (relative to the project root, where the shipped models' cards point into ../shared/data: the card is the
    portable record, while the config holds the absolute path of the machine it was trained on); else the
    config's, when it is a registered name or exists on this machine. None when neither is here."""
    file = (_card(model_path).get("dataset") or {}).get("file")
    if file:
        root = Path(__file__).resolve().parent.parent
        for candidate in (root / file, model_path.parent / file):
            if candidate.exists():
                return str(candidate.resolve())
    own = cfg.get("dataset")
    if own and not _looks_like_path(str(own)):
        return str(own)
    if own and Path(str(own)).expanduser().exists():
        return str(own)
    return None


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.endswith((".npz", ".h5", ".hdf5", ".csv"))


def missing_dataset_message(model_path: Path, label: str) -> str:
    """Plain words for a model whose training tiles are not on this machine: what it was trained on, if its
    card or config says, and that the repository ships no data."""
    card = _card(model_path)
    title = (card.get("dataset") or {}).get("title") or _training_config(model_path).get("dataset")
    if title:
        return (
            f"{label} was trained on {title}, which is not on this machine (Histo Explorer ships no data), "
            "so there are no training tiles to compare with."
        )
    return f"{label} does not say which tiles it was trained on, so there are no training tiles to compare with."


def target_for(model_spec: str | os.PathLike, dataset: str | None = None) -> EmbedTarget:
    """Resolve a model (run dir, run id, weights .pt, export name) and a dataset (default: the one it was
    trained on) to an EmbedTarget. Raises HistoError naming what is missing."""
    model_path, label, _ = resolve_model_path(model_spec)
    cfg = _training_config(model_path)
    own = _own_dataset(model_path, cfg)
    spec = str(dataset).strip() if dataset else own
    if not spec:
        raise MissingTrainingData(missing_dataset_message(model_path, label))
    same = bool(own) and spec == own
    run_path = model_path.parent if same and RunDir(model_path.parent).exists() else None
    kwargs = {
        "size": cfg.get("size") if same else None,
        "as_rgb": bool(cfg.get("as_rgb")) if same else None,
        "data_dir": cfg.get("data_dir") if same else None,
        "seed": int(cfg.get("seed", 0)) if same else 0,
    }
    if run_path is not None:
        out_dir = RunDir(run_path).embeddings_dir
    else:
        st = model_path.resolve().stat()
        key = hashlib.blake2b(
            f"{model_path.resolve()}|{st.st_mtime_ns}|{st.st_size}|{spec}".encode(), digest_size=8
        ).hexdigest()
        out_dir = paths.data_dir() / "cache" / "embeddings" / f"{label[:40]}-{key}"
    return EmbedTarget(
        model_ref=str(model_path),
        model_path=model_path,
        label=label,
        dataset=spec,
        open_kwargs=kwargs,
        out_dir=out_dir,
        run_path=run_path,
        train_splits=str(cfg.get("train_splits") or "train") if same else "train",
    )
