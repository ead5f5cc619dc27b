"""The one model cache of the app and the CLI: load a model by name, once per process and device.

    loaded = load_model("runs/20250101-120000-simplecnn-ab12")   # or a run id, a weights/*.pt file, an export name

Checkpoints are read weights-only (histo_core.checkpoint); the name is resolved by
`model_catalog.resolve_model_path`. Loaded models are cached in-process by (resolved path, mtime, size, device),
so every page session and CLI call in one process shares one copy per file and a retrained or re-exported file
is picked up. Forward passes on one model are serialised by its lock (`model_lock`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from histo_core import runtime
from histo_core.checkpoint import load_checkpoint, model_from_checkpoint
from histo_core.fsutil import read_json
from histo_core.model_catalog import resolve_model_path
from histo_core.model_meta import LoadedModel, ModelMeta
from histo_core.runs import RunDir

CACHE_SIZE = 4  # models kept loaded at once

# Pages call load_model directly, with no Streamlit cache on top: the cache lives here so the CLI, background
# tasks and every page session share it, and its key holds the file's mtime and size, so a retrained or
# re-exported model is reloaded. Least recently used beyond CACHE_SIZE go.
_cache: OrderedDict[tuple, LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()


def load_model(spec: str | os.PathLike, device: str = "auto") -> LoadedModel:
    """Load (or fetch from the in-process cache) the model named by `spec` on `device` ("auto": the GPU when
    there is one, the process's current CUDA device; every caller that does not choose runs there: Classify,
    Grad-CAM, evaluate, embeddings, faithfulness, inspect, predict). The cache keeps one copy per device.
    Raises ModelFileError."""
    path, label, dataset = resolve_model_path(spec)
    resolved = path.resolve()
    st = resolved.stat()
    device = _pick_device(device)
    key = (str(resolved), st.st_mtime_ns, st.st_size, device)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    ckpt = load_checkpoint(resolved)
    model = model_from_checkpoint(ckpt, path).to(device)
    loaded = LoadedModel(
        model=model,
        meta=ModelMeta.from_checkpoint(ckpt, dataset, _run_ood(path)),
        source=str(resolved),
        label=label,
        device=device,
    )
    with _cache_lock:
        _cache[key] = loaded
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded


def _run_ood(checkpoint: Path) -> dict | None:
    """The out-of-distribution calibration a finished run wrote next to its checkpoints (results.json)."""
    results = read_json(RunDir(checkpoint.parent).results_path)
    return results.get("ood") if isinstance(results, dict) else None


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _pick_device(device: str) -> str:
    """`runtime.resolve_device`, the one device resolver ('auto' -> cuda or cpu; 'cuda' without a GPU: an error)."""

    return runtime.resolve_device(device)  # through the module: tests stand in for it
