"""A slide analysis: tissue, grid, a bounded streaming pipeline through the model, and the outputs, in a folder
under the runs directory (<runs>/.slides/<slide>-<key>/) that records the slide's identity and the model.

    result = analyse_slide(loaded, slide, tissue_threshold=0.5, progress=print_progress)

Streaming: a reader thread reads the tissue tiles (a strip of neighbouring tiles per OpenSlide call, from the
level chosen by `grid.plan_slide_grid`), makes each into the model's input through the one image path
(`model_input.preprocess`) and puts batches on a queue of QUEUE_BATCHES; the caller's thread runs the model on
them (`model_input.model_view` + `predict.predict`, the one forward path) and the "unlike the training tiles"
check (`ood.check_tiles`, its feature check fed by the same forward pass through `ood_features.StageCapture`; a
stain-normalised model's input-feature check by a pass of its own over the tiles as given): a flag and a score per
tile. Memory holds a few batches and the per-tile results, whatever the slide's size.

Resume: results so far are saved to partial.npz every CHECKPOINT_S seconds and when stopped (cancelled,
killed by an error); the next analysis of the same slide with the same model and options continues from it.
A finished analysis is not redone unless `force`.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histo_core import paths
from histo_core.errors import HistoError
from histo_core.fsutil import read_json, savez_atomic, write_json_atomic
from histo_core.image_decode import safe_filename
from histo_core.model_input import model_view, preprocess
from histo_core.model_lock import model_lock
from histo_core.model_meta import LoadedModel
from histo_core.ood import check_tiles, ood_features
from histo_core.ood_features import StageCapture
from histo_core.predict import predict
from histo_core.slides import outputs
from histo_core.slides.grid import SlideGrid, plan_slide_grid
from histo_core.slides.reader import Slide, SlideError
from histo_core.slides.tissue import DEFAULT_TISSUE_THRESHOLD, tile_fractions, tissue_mask

SLIDES_FOLDER = ".slides"
QUEUE_BATCHES = 3  # batches read ahead of the model: bounds memory
STRIP_TILES = 16  # neighbouring tiles read by one OpenSlide call
CHECKPOINT_S = 5.0  # partial.npz: what a resume starts from, and the live map
RECORD_S = 2.0  # progress in analysis.json at most this often
DEFAULT_BATCH = 256

Progress = Callable[[dict[str, Any]], None]


class _Stop(Exception):
    pass


@dataclass
class SlideAnalysis:
    """An analysis folder: analysis.json (slide, model, options, state, summary), thumbnail.png, tissue.png,
    grid.npz, tiles.csv, tiles.geojson, classmap.png; partial.npz while unfinished."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def record(self) -> dict[str, Any]:
        return read_json(self.file("analysis.json"), {}) or {}

    def state(self) -> str:
        return str(self.record().get("state", "new"))

    def grid_arrays(self) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self.file("grid.npz"), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (FileNotFoundError, OSError, ValueError):
            return None


def slides_root(runs_root: str | os.PathLike | None = None) -> Path:
    return paths.runs_dir(runs_root) / SLIDES_FOLDER


def model_identity(loaded: LoadedModel) -> str:
    """sha256 of the checkpoint file (cached by path, mtime and size)."""
    st = os.stat(loaded.source)
    key = (loaded.source, st.st_mtime_ns, st.st_size)
    if key not in _model_hashes:
        h = hashlib.sha256()
        with open(loaded.source, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _model_hashes[key] = h.hexdigest()
    return _model_hashes[key]


_model_hashes: dict[tuple, str] = {}


def analysis_dir(slide: Slide, loaded: LoadedModel, runs_root: str | os.PathLike | None = None) -> SlideAnalysis:
    """The folder of this slide with this model: the same slide (by content) and model always map to it."""

    key = hashlib.sha256(f"{slide.identity}|{model_identity(loaded)}".encode()).hexdigest()[:12]
    stem = safe_filename(Path(slide.name).stem)[:40] or "slide"
    return SlideAnalysis(slides_root(runs_root) / f"{stem}-{key}")


def list_analyses(runs_root: str | os.PathLike | None = None) -> list[SlideAnalysis]:
    root = slides_root(runs_root)
    if not root.is_dir():
        return []
    found = [SlideAnalysis(p) for p in root.iterdir() if (p / "analysis.json").is_file()]
    return sorted(found, key=lambda a: a.record().get("updated_at", 0), reverse=True)


def delete_analysis(analysis: SlideAnalysis) -> None:
    if analysis.state() == "running" and _owner_alive(analysis):
        raise HistoError(f"{analysis.id}: the analysis is running; cancel it first")
    shutil.rmtree(analysis.path, ignore_errors=True)


def _owner_alive(analysis: SlideAnalysis) -> bool:
    pid = analysis.record().get("pid")
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return True


def analyse_slide(
    loaded: LoadedModel,
    slide: Slide,
    *,
    runs_root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    tissue_threshold: float = DEFAULT_TISSUE_THRESHOLD,
    batch_size: int = DEFAULT_BATCH,
    tta: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    level: int | None = None,
    amp: bool = True,
) -> dict[str, Any]:
    """Analyse `slide` with `loaded` into its analysis folder (`out_dir`, else the one under the runs
    directory); returns the summary (also in analysis.json). A finished analysis with the same options is
    returned as is (`skipped`: true) unless `force`. `level` forces the pyramid level read (comparisons).
    `amp`: the model runs channels-last under autocast where the device computes a smaller float natively
    (`training.device.native_amp_dtype`: bf16 on CPUs with AMX/AVX-512 BF16, CUDA); False: full fp32."""
    if not 0.0 < tissue_threshold <= 1.0:
        raise HistoError(f"--tissue-threshold must be in (0, 1], got {tissue_threshold}")
    if batch_size < 1:
        raise HistoError(f"--batch-size must be a positive integer, got {batch_size}")
    folder = SlideAnalysis(Path(out_dir).expanduser()) if out_dir else analysis_dir(slide, loaded, runs_root)
    from histo_core.predict import model_device
    from histo_core.training.device import native_amp_dtype

    amp_dtype = native_amp_dtype(model_device(loaded.model)) if amp else None
    options: dict[str, Any] = {"tissue_threshold": float(tissue_threshold), "tta": bool(tta), "mpp": slide.mpp}
    options["level"] = level
    options["amp"] = str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else None
    record = folder.record()
    if record.get("state") == "completed" and record.get("options") == options and not force:
        return dict(record.get("summary") or {}, skipped=True)
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoError(f"cannot create the analysis folder {folder.path}: {exc.strerror or exc}") from None
    meta = loaded.meta
    grid = plan_slide_grid(slide, meta, level)
    thumb = slide.thumbnail()
    scale = thumb.shape[1] / slide.dimensions[0]  # thumbnail px per level-0 px
    mask = tissue_mask(thumb, um_per_px=slide.mpp / scale)
    fractions = tile_fractions(mask, grid.rows, grid.cols, grid.x0, grid.y0, grid.tile_l0, scale)
    cells = np.argwhere(fractions >= tissue_threshold)  # row-major: rows of tiles, left to right
    base = {
        "slide": slide.info(),
        "model": {"source": loaded.source, "label": loaded.label, "sha256": model_identity(loaded)},
        "options": options,
        "grid": grid.to_dict(),
        "folder": str(folder.path),
        "pid": os.getpid(),
    }
    outputs.write_png(folder.file("thumbnail.png"), thumb)
    outputs.write_png(folder.file("tissue.png"), (mask * 255).astype(np.uint8))
    if not len(cells):
        _write_record(folder, base, "failed", error="no tissue")
        raise SlideError(
            f"{slide.name}: no tissue found: no tile is at least {tissue_threshold:.0%} tissue (the tissue "
            f"threshold); lower it with --tissue-threshold, or check the slide (tissue.png shows what was found)"
        )
    k = meta.num_classes
    probs = np.zeros((len(cells), k), np.float32)
    done = np.zeros(len(cells), bool)
    ood = np.zeros(len(cells), bool)
    ood_score = np.full(len(cells), np.nan, np.float32)
    has_ood = bool(meta.ood)
    partial = _load_partial(folder, cells, options, k) if not force else None
    if partial is not None:
        probs, done, ood, ood_score = partial
    _write_record(folder, base, "running", progress={"done": int(done.sum()), "total": len(cells)})
    timing = {"read_s": 0.0, "model_s": 0.0}
    feature_check = isinstance((meta.ood or {}).get("feature"), dict)
    if amp_dtype is not None:
        import torch

        with model_lock(loaded.model):  # channels-last weights, as the batches are (same results, faster)
            loaded.model.to(memory_format=torch.channels_last)
    t_start = time.perf_counter()
    done_before = int(done.sum())
    last_save = last_record = time.monotonic()

    def save_partial() -> None:
        savez_atomic(
            folder.file("partial.npz"),
            cells=cells,
            probs=probs,
            done=done,
            ood=ood,
            ood_score=ood_score,
            options=repr(options),
        )

    stop = threading.Event()
    todo = np.flatnonzero(~done)
    batches: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
    reader = threading.Thread(
        target=_read_tiles,
        args=(slide, grid, meta, cells, todo, batch_size, batches, stop, timing),
        name="slide-reader",
        daemon=True,
    )
    reader.start()
    try:
        while True:
            item = batches.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            idx, tiles = item
            t0 = time.perf_counter()
            view, given = model_view(tiles, meta)
            p, feats = _predict(loaded, view, tta, batch_size, feature_check, amp_dtype)
            if has_ood:
                found = check_tiles(
                    meta.ood,
                    p,
                    view,
                    given,
                    features=feats,
                    input_features=ood_features(loaded.model, meta, given, "input_feature"),
                )
                if found is not None:
                    ood[idx], ood_score[idx] = found.flags, found.scores
            probs[idx], done[idx] = p, True
            timing["model_s"] += time.perf_counter() - t0
            n_done = int(done.sum())
            elapsed = time.perf_counter() - t_start
            rate = (n_done - done_before) / elapsed if elapsed > 0 else 0.0
            if time.monotonic() - last_save > CHECKPOINT_S:
                save_partial()
                last_save = time.monotonic()
            if time.monotonic() - last_record > RECORD_S:  # the page's live view reads this
                live = {"done": n_done, "total": len(cells), "tiles_per_s": round(rate, 1)}
                _write_record(folder, base, "running", progress=live)
                last_record = time.monotonic()
            if progress is not None:
                progress(
                    {
                        "done": n_done,
                        "total": len(cells),
                        "tiles_per_s": rate,
                        "eta_s": (len(cells) - n_done) / rate if rate > 0 else None,
                    }
                )
    except BaseException:
        stop.set()
        _drain(batches)
        reader.join(timeout=10)
        save_partial()
        _write_record(folder, base, "stopped", progress={"done": int(done.sum()), "total": len(cells)})
        raise
    reader.join()
    elapsed = time.perf_counter() - t_start
    summary = _finish(
        folder, slide, loaded, grid, cells, probs, fractions, (ood, ood_score) if has_ood else None, thumb, scale
    )
    summary.update(
        seconds=round(elapsed, 3),
        tiles_per_s=round((len(cells) - done_before) / elapsed, 1) if elapsed > 0 else None,
        read_s=round(timing["read_s"], 3),
        model_s=round(timing["model_s"], 3),
        resumed_from=done_before,
        tta=bool(tta),
        amp=options["amp"],
        skipped=False,
    )
    _write_record(folder, base, "completed", summary=summary)
    folder.file("partial.npz").unlink(missing_ok=True)
    return summary


def _predict(
    loaded: LoadedModel, view: Any, tta: bool, batch_size: int, feature_check: bool, amp_dtype: Any = None
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """The probabilities of a batch and, for a calibration with a feature check, the stage features of the
    tiles from the same forward pass (with `tta`, from a pass of their own: the check is calibrated on the
    single view)."""
    if not feature_check:
        return predict(loaded, view, tta=tta, batch_size=batch_size, amp_dtype=amp_dtype), None
    if tta:
        p = predict(loaded, view, tta=True, batch_size=batch_size, amp_dtype=amp_dtype)
        return p, ood_features(loaded.model, loaded.meta, view)
    with model_lock(loaded.model), StageCapture(loaded.model) as capture:
        p = predict(loaded, view, batch_size=batch_size, amp_dtype=amp_dtype)
    return p, capture.take()


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


def _read_tiles(
    slide: Slide,
    grid: SlideGrid,
    meta: Any,
    cells: np.ndarray,
    todo: np.ndarray,
    batch_size: int,
    out: queue.Queue,
    stop: threading.Event,
    timing: dict[str, float],
) -> None:
    """The reader thread: strips of up to STRIP_TILES neighbouring tiles of one row per read, each tile made
    into the model's input by `model_input.preprocess`; batches of `batch_size` onto `out`, then None."""

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stop

    window_mpp = grid.field_um / grid.read_px  # each read tile is one field of view
    notes: list[str] = []
    try:
        idx_batch: list[int] = []
        tile_batch: list[np.ndarray] = []
        i = 0
        while i < len(todo):
            t0 = time.perf_counter()
            start = todo[i]
            r, c = cells[start]
            j = i + 1
            while (
                j < len(todo)
                and j - i < STRIP_TILES
                and cells[todo[j]][0] == r
                and cells[todo[j]][1] == cells[todo[j - 1]][1] + 1
            ):
                j += 1
            n = j - i
            x, y, _, _ = grid.box(int(r), int(c))
            strip = slide.read(x, y, grid.level, grid.read_px * n, grid.read_px)
            for m in range(n):
                tile = strip[:, m * grid.read_px : (m + 1) * grid.read_px]
                tile_batch.append(model_tile(tile, meta, notes, window_mpp))
                idx_batch.append(int(todo[i + m]))
            timing["read_s"] += time.perf_counter() - t0
            i = j
            if len(tile_batch) >= batch_size or i >= len(todo):
                put((np.array(idx_batch), np.stack(tile_batch)))
                idx_batch, tile_batch = [], []
            if stop.is_set():
                return
        put(None)
    except _Stop:
        return
    except BaseException as exc:  # handed to the model thread, which raises it
        try:
            put(exc)
        except _Stop:
            pass


def model_tile(tile: np.ndarray, meta: Any, notes: list[str], mpp: float) -> np.ndarray:
    """A tile read from the slide made into the model's input: first box-averaged by the largest whole factor
    that keeps it at least the model's input size (as scanners and libvips make pyramid levels: a 224 px level-0
    read becomes 28 px by 8x8 averages, a 56 px read from a 4x level by 2x2 ones, so both give the same input),
    then the one image path (`model_input.preprocess`: channels, and the rest of the resize when the factor was not
    whole). Without the first step a level-0 read is shrunk 8x by the image path's bilinear filter and a 4x
    level's read 2x, and the shipped model's classes agreed on 86% of the CMU slide's tissue tiles across two
    levels (tests/test_slides.py::test_two_levels_give_the_same_classes holds it to 95%)."""
    side = min(tile.shape[:2])
    factor = side // meta.input_size
    if factor >= 2:
        h, w = (tile.shape[0] // factor) * factor, (tile.shape[1] // factor) * factor
        tile = tile[:h, :w].reshape(h // factor, factor, w // factor, factor, -1).mean((1, 3))
        tile = np.rint(tile).astype(np.uint8)
        mpp *= factor
    return preprocess(tile, meta, notes, mpp=mpp)


def _load_partial(
    folder: SlideAnalysis, cells: np.ndarray, options: dict, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        with np.load(folder.file("partial.npz"), allow_pickle=False) as z:
            if str(z["options"]) != repr(options) or not np.array_equal(z["cells"], cells) or z["probs"].shape[1] != k:
                return None
            return z["probs"].copy(), z["done"].copy(), z["ood"].copy(), z["ood_score"].copy()
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None


def _write_record(folder: SlideAnalysis, base: dict, state: str, **extra: Any) -> None:
    write_json_atomic(folder.file("analysis.json"), {**base, "state": state, "updated_at": time.time(), **extra})


def _finish(
    folder: SlideAnalysis,
    slide: Slide,
    loaded: LoadedModel,
    grid: SlideGrid,
    cells: np.ndarray,
    probs: np.ndarray,
    fractions: np.ndarray,
    ood_found: tuple[np.ndarray, np.ndarray] | None,
    thumb: np.ndarray,
    scale: float,
) -> dict[str, Any]:
    """`ood_found`: per tile, the "unlike the training tiles" flag and score (None: no calibration)."""
    classes = loaded.meta.classes
    frac = fractions[cells[:, 0], cells[:, 1]]
    ood, ood_score = ood_found if ood_found is not None else (None, None)
    rows = outputs.tile_rows(grid, cells, probs, frac, ood, classes, ood_score)
    outputs.write_csv(folder.file("tiles.csv"), rows)
    outputs.write_geojson(folder.file("tiles.geojson"), rows, classes)
    grids = outputs.tile_grids(grid, cells, probs, ood, ood_score)
    savez_atomic(folder.file("grid.npz"), **grids, fractions=fractions)
    overlay = outputs.render_overlay(
        thumb, grid, scale, grids["pred"], alpha=0.5, ood=grids["ood"], grey_ood=False, num_classes=len(classes)
    )
    outputs.write_png(folder.file("classmap.png"), overlay)
    preds = probs.argmax(1)
    return {
        "slide": slide.name,
        "folder": str(folder.path),
        "tiles": {"grid": grid.rows * grid.cols, "tissue": len(cells)},
        "tile_um": grid.field_um,
        "level": grid.level,
        "read_px": grid.read_px,
        "tissue_mm2": round(len(cells) * grid.tile_mm2, 4),
        "classes": outputs.legend(classes, preds, grid.tile_mm2),
        "ood_share": round(float(ood.mean()), 4) if ood is not None else None,
        "outputs": {
            name: str(folder.file(name))
            for name in ("tiles.csv", "tiles.geojson", "classmap.png", "tissue.png", "thumbnail.png", "grid.npz")
        },
    }
