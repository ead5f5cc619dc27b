"""Warm the app's server process in the background, once, when it starts: the heavy imports the pages need
(torch, torchvision, plotly, pandas, scikit-learn, the Grad-CAM package, histo_core's inference path; the app adds
its pages' own modules, pages/ui/navigation.start_warmup), the Datasets and Train pages' default dataset when it
is the synthetic demo; then it freezes the heap out of the garbage collector's full collections (`freeze_heap`)
and loads the default model of the Classify page (the first of `model_catalog.list_models`) into the one model
cache (`model_cache`) with one forward pass and the "unlike the training tiles" feature pass. A user opening a
page or dropping files after that does not wait for them.

    warmup.start(modules)  # the thread, or None when already started (or HISTO_NO_WARMUP=1)

Nothing here may fail the app: every step is best-effort and a failure is only recorded in `state()`.
"""

from __future__ import annotations

import gc
import importlib
import os
import threading
import time
from typing import Any

MODULES = (
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "plotly.graph_objects",
    "sklearn.covariance",
    "PIL.Image",
    "histo_core.model_cache",
    "histo_core.uploads",
    "histo_core.ood",
    "histo_core.explain",
    "histo_core.model_catalog",
    "histo_core.tables",
    "pytorch_grad_cam",
)

_lock = threading.Lock()
_thread: threading.Thread | None = None
_state: dict[str, Any] = {
    "started": None,
    "imports_s": None,
    "dataset": None,
    "dataset_s": None,
    "frozen": None,
    "model": None,
    "model_s": None,
    "errors": [],
}


def state() -> dict[str, Any]:
    """What the warm-up did so far: start time, seconds for the imports, the default dataset and the model, the
    dataset's spec and the model's ref, errors."""
    with _lock:
        return {**_state, "errors": list(_state["errors"])}


def start(modules: tuple[str, ...] = MODULES, model: bool = True, dataset: bool = True) -> threading.Thread | None:
    """Start the warm-up thread once per process; None when it has started already or HISTO_NO_WARMUP=1.
    `modules` in order, then the default dataset (`dataset`), `freeze_heap`, then the default model (`model`)."""
    global _thread
    if os.environ.get("HISTO_NO_WARMUP") == "1":
        return None
    with _lock:
        if _thread is not None:
            return None
        _state["started"] = time.time()
        _thread = threading.Thread(target=_warm, args=(modules, model, dataset), name="histo-warmup", daemon=True)
    _thread.start()
    return _thread


def _error(what: str, exc: BaseException) -> None:
    with _lock:
        _state["errors"].append(f"{what}: {type(exc).__name__}: {exc}")


def _warm(modules: tuple[str, ...], model: bool, dataset: bool) -> None:
    t0 = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional package missing must not stop the rest
            _error(f"import {name}", exc)
    with _lock:
        _state["imports_s"] = round(time.perf_counter() - t0, 2)
    if dataset:
        t1 = time.perf_counter()
        try:
            spec = _warm_default_dataset()
        except Exception as exc:
            _error("default dataset", exc)
        else:
            with _lock:
                _state["dataset"], _state["dataset_s"] = spec, round(time.perf_counter() - t1, 2)
    with _lock:
        _state["frozen"] = freeze_heap()
    if model:
        t1 = time.perf_counter()
        try:
            ref = _warm_default_model()
        except Exception as exc:
            _error("default model", exc)
            return
        with _lock:
            _state["model"], _state["model_s"] = ref, round(time.perf_counter() - t1, 2)


def freeze_heap() -> int:
    """Move every object that exists now out of the cyclic garbage collector's sight (gc.freeze, after one last
    collection), and return how many are frozen. Streamlit runs a full collection after every script run (a page
    load, a widget change, each 2 s poll of a live panel: `runner.postScriptGC`), and over the ~500,000 objects of
    torch, pandas, plotly & co. it took 0.4-0.6 s on a busy 2-core machine, holding the GIL while the page's
    messages waited to be sent; frozen, it takes milliseconds. What is frozen here (modules, their tables, the
    synthetic demo's tiles) lives as long as the process anyway; refcounting still frees it. The model is loaded
    after, so a model that leaves the cache later is collected as usual."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _warm_default_dataset() -> str | None:
    """The Datasets and Train pages' first choice when no real dataset is here: the synthetic demo, generated once
    per process (its tiles are kept by `synthetic._generate`'s cache). A real dataset opens from its files and is
    left alone. Returns the spec warmed, or None."""
    from histo_core.datasets.catalog import default_dataset_spec
    from histo_core.datasets.synthetic import open_synthetic

    if default_dataset_spec() != "synthetic":
        return None
    open_synthetic()
    return "synthetic"


def _warm_default_model() -> str | None:
    import numpy as np

    from histo_core.model_cache import load_model
    from histo_core.model_catalog import list_models
    from histo_core.ood import ood_check
    from histo_core.predict import predict

    entries = list_models([])
    if not entries:
        return None
    loaded = load_model(entries[0].ref)
    m = loaded.meta
    tiles = np.full((2, m.input_size, m.input_size, m.in_channels), 200, np.uint8)
    probs = predict(loaded, tiles, tta=bool(m.tta))
    ood_check(m, probs, tiles, loaded.model)
    return entries[0].ref
