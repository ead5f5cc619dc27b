"""How faithful is a class activation map to the model? ROAD scores from pytorch-grad-cam's metrics.

    scores = road_scores(loaded.model, loaded.meta, tiles, cams, targets)   # (N,) higher = more faithful
    verdicts = verdict(scores, uniform_maps(cams))                           # "faithful" / "unfaithful" / "flat"
    table = explain_quality(run, tiles=40)                                    # every CAM method on test tiles

ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods"), as
`pytorch_grad_cam.metrics.road.ROADCombined`: for each percentile p in PERCENTILES the p% least relevant
pixels (LeRF) or the p% most relevant pixels (MoRF) by the map are replaced by a noisy linear imputation of
their neighbours, and the change in the softmax probability of the explained class is measured. The score is
mean(LeRF change - MoRF change) / 2: positive when removing what the map highlights hurts the prediction more
than removing what it ignores. A map scoring at or below UNFAITHFUL_AT points at pixels the model does not
rely on more than at the rest: it is labelled unfaithful. A flat map (explain.uniform_maps) has no ranking
of pixels at all and gets no score.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from histo_core.errors import HistoError
from histo_core.fsutil import read_json, write_json_atomic
from histo_core.model_lock import model_lock

PERCENTILES = (20, 40, 60, 80)
UNFAITHFUL_AT = 0.0
DEFAULT_TILES = 40


def road_scores(
    model: nn.Module,
    meta,
    tiles_uint8: np.ndarray,
    cams: np.ndarray,
    targets: Sequence[int],
    percentiles: Sequence[int] = PERCENTILES,
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """ROAD combined score (N,) of maps (N, S, S) in [0, 1] for uint8 tiles (N, S, S, C), explaining class
    targets[i] of tile i. Seeded: the imputation noise does not change between calls."""
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from histo_core.model_input import model_input

    tiles = np.asarray(tiles_uint8)
    cams = np.asarray(cams, np.float32)
    if len(tiles) != len(cams) or len(tiles) != len(targets):
        raise ValueError(f"{len(tiles)} tiles, {len(cams)} maps and {len(targets)} targets")
    if len(tiles) == 0:
        return np.zeros(0, np.float32)
    device = next(model.parameters()).device
    metric = ROADCombined(percentiles=list(percentiles))
    out = np.empty(len(tiles), np.float32)
    with model_lock(model), torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model.eval()
        for s in range(0, len(tiles), batch_size):
            x = model_input(tiles[s : s + batch_size], meta, device)
            wanted = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets[s : s + batch_size]]
            once = OriginalOnce(model, x)
            out[s : s + len(x)] = np.asarray(metric(x, cams[s : s + batch_size], wanted, once), np.float32).reshape(-1)
    return out


class OriginalOnce(nn.Module):
    """`model` with its output on the unperturbed batch `original` computed once. pytorch-grad-cam's ROAD runs the
    model on that same tensor before each of its 2 x len(percentiles) perturbations: 16 forward passes of the
    batch at four percentiles, 8 of them alike; with this 9 (the same scores: the model is in eval mode, without
    gradients). Any other input (the perturbed batches) goes through the model."""

    def __init__(self, model: nn.Module, original: torch.Tensor):
        super().__init__()
        self.model = model
        self.original = original
        self.output: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x is not self.original:
            return self.model(x)
        if self.output is None:
            self.output = self.model(x)
        return self.output


def verdict(scores: np.ndarray, flat: np.ndarray) -> list[str]:
    """Per map: "flat" (nothing to rank), "unfaithful" (score <= UNFAITHFUL_AT) or "faithful"."""
    return [
        "flat" if f else ("unfaithful" if s <= UNFAITHFUL_AT else "faithful")
        for s, f in zip(np.asarray(scores), np.asarray(flat, bool))
    ]


def describe(score: float | None, flat: bool) -> str:
    """One line for under an overlay, in plain words (the ROAD score in brackets, never "-0.000")."""
    if flat:
        return "flat map: nothing to score"
    if score is None:
        return ""
    shown = f"{0.0 if abs(score) < 5e-4 else score:+.3f}".replace("+0.000", "0.000")
    if score <= UNFAITHFUL_AT:
        return (
            "this map may mislead: hiding the pixels it highlights lowers the model's confidence no more than "
            f"hiding the others (ROAD score {shown})"
        )
    return f"hiding the pixels this map highlights lowers the model's confidence more than hiding the others (ROAD score {shown})"


def misleading(score: float | None, flat: bool) -> bool:
    """Whether `describe` warns: a scored map at or below UNFAITHFUL_AT."""
    return not flat and score is not None and score <= UNFAITHFUL_AT


def method_table(
    model: nn.Module,
    meta,
    tiles: np.ndarray,
    methods: Sequence[str] | None = None,
    targets: Sequence[int] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per CAM method over `tiles` (explaining `targets`, default the predicted class): mean and
    median ROAD score over the maps that are not flat, shares of flat and unfaithful maps, seconds. Sorted
    most faithful first."""
    from histo_core.explain import CAM_METHODS, compute_cams, uniform_maps
    from histo_core.model_meta import LoadedModel
    from histo_core.predict import predict

    methods = list(methods or CAM_METHODS)
    for m in methods:
        if m not in CAM_METHODS:
            raise HistoError(f"--methods: unknown CAM method {m!r}; choose from {', '.join(CAM_METHODS)}")
    if targets is None:
        device = str(next(model.parameters()).device)
        targets = predict(LoadedModel(model=model, meta=meta, source="", device=device), tiles).argmax(1)
    targets = [int(t) for t in targets]
    rows: list[dict[str, Any]] = []
    for i, method in enumerate(methods):
        if progress:
            progress(i / len(methods), f"{method}: maps and ROAD scores of {len(tiles)} tiles")
        t0 = time.perf_counter()
        cams = compute_cams(model, meta, tiles, method, targets=targets)
        flat = uniform_maps(cams)
        scores = road_scores(model, meta, tiles, cams, targets)
        kept = scores[~flat]
        v = verdict(scores, flat)
        rows.append(
            {
                "method": method,
                "tiles": len(tiles),
                "road_mean": float(kept.mean()) if len(kept) else None,
                "road_median": float(np.median(kept)) if len(kept) else None,
                "flat_share": float(flat.mean()),
                "unfaithful_share": v.count("unfaithful") / len(v),
                "seconds_per_tile": round((time.perf_counter() - t0) / len(tiles), 4),
            }
        )
    if progress:
        progress(1.0, "done")
    rows.sort(key=lambda r: -np.inf if r["road_mean"] is None else -r["road_mean"])
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


def explain_quality(
    run,
    tiles: int = DEFAULT_TILES,
    methods: Sequence[str] | None = None,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """The method table over a seeded sample of `tiles` test tiles of a run (all of them when fewer), saved to
    faithfulness.json in the run directory."""
    from histo_core.model_cache import load_model
    from histo_core.review import RunTiles

    if tiles < 1:
        raise HistoError(f"--tiles must be a positive integer, got {tiles}")
    loaded = load_model(str(run.path))
    source = RunTiles(run)
    split = "test" if "test" in source.dataset.splits else "val"
    n = len(source.dataset.split(split))
    rows = np.arange(n) if n <= tiles else np.sort(np.random.default_rng([seed, 5]).choice(n, tiles, replace=False))
    from histo_core.model_input import preprocess

    images = source.get(split, rows)
    images = np.stack([preprocess(t, loaded.meta) for t in images]) if len(images) else images
    started = time.time()
    table = method_table(loaded.model, loaded.meta, images, methods, progress=progress)
    doc = {
        "run": run.id,
        "split": split,
        "tiles": int(len(rows)),
        "sampled": bool(n > tiles),
        "of": int(n),
        "metric": f"ROAD combined, percentiles {list(PERCENTILES)}, softmax of the predicted class",
        "methods": table,
        "best": table[0]["method"] if table and table[0]["road_mean"] is not None else None,
        "seconds": round(time.time() - started, 1),
        "computed_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json_atomic(run.faithfulness_path, doc)
    return doc


def load_quality(run) -> dict[str, Any] | None:

    return read_json(run.faithfulness_path)


def task_main(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    """The `explain-quality` process kind (histo_core.kinds): params run, tiles, methods."""
    from histo_core.runs import resolve_run

    tiles, methods = int(params.get("tiles", DEFAULT_TILES)), params.get("methods")
    return explain_quality(resolve_run(params["run"]), tiles=tiles, methods=methods, progress=progress)
