"""Checkpoint format (a plain dict, loadable with `torch.load(..., weights_only=True)`):

    {"format": "histo-explorer", "format_version": 1,
     "arch": "resnet18", "num_classes": 9, "in_channels": 3, "input_size": 28, "mlp_head": False,
     "classes": [...], "mean": [r, g, b], "std": [r, g, b],          # normalisation of uint8/255 inputs
     "members": 2,                                                     # optional: a models.MeanEnsemble (codivide)
     "dataset": {"name": ..., "title": ..., "synthetic": bool, "source": ...},
     "state_dict": {...},                                              # model weights (CPU tensors)
     "epoch": int, "metrics": {...},                                   # optional
     "train_state": {...}}                                             # last.pt only: optimizer, scheduler, rng, ...

Exported models in weights/ use the same format without `train_state`, next to a model card <name>.json.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histo_core.errors import ModelFileError
from histo_core.fsutil import torch_save_atomic

FORMAT = "histo-explorer"
FORMAT_VERSION = 1
META_KEYS = ("arch", "num_classes", "in_channels", "input_size", "classes", "mean", "std")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any], **extra: Any) -> None:
    """Write atomically. `meta` must hold META_KEYS; `extra` (epoch, metrics, train_state...) is stored as is."""
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    model = getattr(model, "module", model)  # DDP / compiled wrappers
    model = getattr(model, "_orig_mod", model)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "state_dict": state, **extra}
    torch_save_atomic(Path(path), payload)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; never unpickles arbitrary objects. Raises ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: empty file, not a model checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's text starts by suggesting weights_only=False, which would run the file's code: never quote
        # it; name only the object the file refers to.
        text = str(exc)
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        if found or "GLOBAL" in text:  # other weights-only failures (bad opcode) are just junk files
            what = f" (it refers to {found.group(1)})" if found else ""
            raise ModelFileError(
                f"{path}: refused: loading it would run code stored in the file{what}. Only weights-only "
                "checkpoints made by Histo Explorer can be loaded."
            ) from None
        with open(path, "rb") as fh:
            plain_pickle = fh.read(1) == b"\x80"
        if plain_pickle:  # pickle.dump's own format (PROTO opcode): no torch.save zip around it
            raise ModelFileError(
                f"{path}: a plain Python pickle, not a PyTorch checkpoint (torch.save); only weights-only "
                "checkpoints made by Histo Explorer can be loaded (`python -m histo_core runs export`)"
            ) from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
        detail = f" ({lines[0][:200]})" if lines else ""
        raise ModelFileError(f"{path}: not a PyTorch checkpoint{detail}") from None
    except Exception as exc:  # torch.load raises KeyError, EOFError, RuntimeError... on arbitrary bytes
        raise ModelFileError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelFileError(
            f"{path}: a PyTorch file but not a Histo Explorer checkpoint (no 'format': '{FORMAT}' entry); "
            "export models with `python -m histo_core runs export`"
        )
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: checkpoint format version {version!r}, this Histo Explorer reads version {FORMAT_VERSION}; "
            "retrain the model or export it again with a matching version"
        )
    missing = [k for k in (*META_KEYS, "state_dict") if k not in ckpt]
    if missing:
        raise ModelFileError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> nn.Module:
    """Build the architecture the checkpoint names and load its weights (eval mode, CPU)."""
    from histo_core.models import build_model

    try:
        model = build_model(
            ckpt["arch"],
            int(ckpt["num_classes"]),
            int(ckpt["in_channels"]),
            int(ckpt["input_size"]),
            mlp_head=bool(ckpt.get("mlp_head", False)),
            members=int(ckpt.get("members", 1)),
        )
    except Exception as exc:
        raise ModelFileError(f"{path}: cannot build {ckpt.get('arch')!r} from this checkpoint ({exc})") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ModelFileError(
            f"{path}: weights do not fit {ckpt['arch']} with {ckpt['num_classes']} classes and "
            f"{ckpt['in_channels']} channels ({str(exc).splitlines()[0][:160]})"
        ) from None
    return model.eval()


def checkpoint_meta(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Everything but the tensors: for model cards and pickers."""
    return {k: v for k, v in ckpt.items() if k not in ("state_dict", "train_state")}
