"""Load a trained model and classify tiles.

    loaded = load_model("runs/20250101-120000-simplecnn-ab12")   # or a run id, a weights/*.pt file, an export name
    tile = preprocess(decode_image(data, "tile.png"), loaded.meta, notes)   # uint8 at the model's size/channels
    probs = predict(loaded, np.stack([tile]), tta=True)                      # (N, K) float32

Checkpoints are read weights-only (histo_core.checkpoint). Loaded models are cached in-process by
(resolved path, mtime, size), so every page session and CLI call in one process shares one copy per file
and a retrained or re-exported file is picked up. Forward passes on one model are serialised by a lock
(`model_lock`): Grad-CAM attaches hooks to the model, and a concurrent prediction must not trigger them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histo_core import paths, runtime, stain
from histo_core.checkpoint import load_checkpoint, model_from_checkpoint
from histo_core.datasets.sources import source_scale
from histo_core.errors import HistoError, ImageError, ModelFileError
from histo_core.fsutil import read_json
from histo_core.image_decode import (
    DecodedImage,
    centre_box,
    decode_image,
    display_name,
    make_tile,
    shrink_for_display,
)
from histo_core.model_lock import model_lock
from histo_core.ood import check_tiles, layer_features
from histo_core.pipeline import to_float01, to_model_input
from histo_core.predict import InputSpec, predict_tiles
from histo_core.runs import RunDir, resolve_run

CACHE_SIZE = 4  # models kept loaded at once
SCALE_NOTE_FACTOR = 4.0  # without a known field of view: a tile this many times larger/smaller gets a note
FIELD_TOLERANCE = 1.25  # with one: an image covering this much less than the model's field gets a note


@dataclass(frozen=True)
class ModelMeta:
    """What a caller needs to feed a model: classes, input geometry, normalisation, provenance."""

    arch: str
    classes: tuple[str, ...]
    input_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: dict = field(default_factory=dict, hash=False, compare=False)  # name, title, source, synthetic
    native_tile_px: int | None = None  # source pixels one training tile covered, when known
    source_mpp: float | None = None  # µm per pixel of those source pixels, when known
    stain: dict | None = field(default=None, hash=False, compare=False)  # stain reference (histo_core.stain)
    tta: bool = False  # the run evaluated with flip/rotation TTA
    ood: dict | None = field(default=None, hash=False, compare=False)  # "unlike the training tiles" calibration

    @property
    def field_um(self) -> float | None:
        """The width of tissue one model tile covers, in µm, when the training data's scale is known."""
        if self.native_tile_px and self.source_mpp:
            return float(self.native_tile_px * self.source_mpp)
        return None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def synthetic(self) -> bool:
        return bool(self.dataset.get("synthetic"))

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], dataset: dict | None = None, ood: dict | None = None) -> ModelMeta:
        ds = dict(ckpt.get("dataset") or {})
        ds.update(
            {k: v for k, v in (dataset or {}).items() if k in ("name", "title", "source", "synthetic", "extra", "size")}
        )
        native_px, mpp = source_scale(ds)
        return cls(
            arch=str(ckpt["arch"]),
            classes=tuple(str(c) for c in ckpt["classes"]),
            input_size=int(ckpt["input_size"]),
            in_channels=int(ckpt["in_channels"]),
            mean=tuple(float(v) for v in np.asarray(ckpt["mean"]).reshape(-1)),
            std=tuple(float(v) for v in np.asarray(ckpt["std"]).reshape(-1)),
            dataset=ds,
            native_tile_px=native_px,
            source_mpp=mpp,
            stain=ckpt.get("stain") or None,
            tta=bool(ckpt.get("tta", False)),
            ood=ood or ckpt.get("ood") or None,
        )


@dataclass
class LoadedModel:
    model: nn.Module  # eval mode, on `device`
    meta: ModelMeta
    source: str  # the checkpoint file
    label: str = ""  # for display: run id or export name
    device: str = "cpu"


# -- finding and loading ---------------------------------------------------------------------------
def resolve_model_path(spec: str | os.PathLike) -> tuple[Path, str, dict]:
    """(checkpoint file, display label, dataset dict) for a run directory, a run id, a .pt file or an export name."""

    text = str(spec).strip()
    if not text:
        raise ModelFileError("no model given: name a run directory, a run id, a weights .pt file or an export name")
    p = Path(text).expanduser()
    if p.is_file():
        run = RunDir(p.parent)
        return p, (run.id if run.exists() else p.stem), (run.dataset() if run.exists() else {})
    found: RunDir | None
    try:
        found = resolve_run(text)
    except HistoError:
        found = None
    if found is not None:
        for ckpt in (found.best_ckpt, found.last_ckpt):
            if ckpt.is_file():
                return ckpt, found.id, found.dataset()
        raise ModelFileError(
            f"{text}: the run has no best.pt or last.pt yet (state: {found.status().state}); "
            "wait until it has finished an epoch"
        )
    if p.suffix == "" and "/" not in text:
        # shipped models first: their names are reserved (an export cannot take one, nor shadow an older one)
        for folder in (paths.shipped_weights_dir(), paths.weights_dir()):
            exported = folder / f"{text}.pt"
            if exported.is_file():
                return exported, text, {}
    if p.suffix == ".pt":
        raise ModelFileError(f"{text}: no such model file")
    raise ModelFileError(
        f"{text}: not a run directory, run id, model file or export name (runs live in {paths.runs_dir()}, "
        f"exports in {paths.weights_dir()})"
    )


# The one model cache of the app and the CLI (pages call load_model directly, with no Streamlit cache on top):
# it lives here so the CLI, background tasks and every page session share it, and its key holds the file's
# mtime and size, so a retrained or re-exported model is reloaded. Least recently used beyond CACHE_SIZE go.
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


# -- preprocessing ---------------------------------------------------------------------------------
def preprocess(
    decoded: DecodedImage | np.ndarray,
    meta: ModelMeta,
    notes: list[str] | None = None,
    *,
    mpp: float | None = None,
    name: str = "image",
) -> np.ndarray:
    """A decoded image -> uint8 (S, S, C) at the model's input size S and channel count C, through the one
    image path (`image_decode.make_tile`: centre square, LANCZOS resize, channels matched).

    Physical scale: when the model's field of view is known (`meta.field_um`), the image is taken to be at
    `mpp` µm per pixel (default: the training images' own resolution) and its centre field of view is what the
    model sees; an image covering clearly less than that is enlarged to fill the tile, with a note. Lines
    describing what was done are appended to `notes`."""

    notes = notes if notes is not None else []
    arr = decoded.array if isinstance(decoded, DecodedImage) else np.asarray(decoded)
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w = arr.shape[:2]
    region = field_region(meta, mpp)
    return make_tile(
        arr,
        meta.input_size,
        meta.in_channels,
        region_px=region,
        notes=_scale_notes(h, w, meta, mpp, region, notes),
        name=decoded.name if isinstance(decoded, DecodedImage) else name,
    )


def field_region(meta: ModelMeta, mpp: float | None = None) -> int | None:
    """The model's field of view in pixels of an image at `mpp` µm/px (default: the training images'
    resolution); None when the model's field of view is unknown."""
    image_mpp = mpp or meta.source_mpp
    if not meta.field_um or not image_mpp:
        return None
    return max(1, round(meta.field_um / float(image_mpp)))


def _scale_notes(h: int, w: int, meta: ModelMeta, mpp: float | None, region: int | None, notes: list[str]) -> list[str]:
    side = min(h, w)
    field_um = meta.field_um
    if field_um and region and (mpp or meta.source_mpp):
        image_mpp = float(mpp or meta.source_mpp or 0.0)
        assumed = "" if mpp else " (assuming the training images' resolution; give the µm per pixel if it differs)"
        if side > region * 1.1:
            notes.append(
                f"the centre {region}x{region} px ({field_um:.0f} µm, the model's field of view) of the "
                f"{w}x{h} image is classified{assumed}; the large-image mode classifies all of it"
            )
        elif side * FIELD_TOLERANCE < region:
            notes.append(
                f"the image covers {side * image_mpp:.0f} µm, less than the {field_um:.0f} µm of the "
                f"model's tiles: it is enlarged to fill a tile, so tissue looks larger than in training"
                f"{assumed}"
            )
        elif max(h, w) / min(h, w) > 1.1:
            notes.append(f"{w}x{h} image centre-cropped to {side}x{side}")
    else:
        if max(h, w) / min(h, w) > 1.1:
            notes.append(
                f"{w}x{h} image centre-cropped to {side}x{side} (use the large-image mode to classify all of it)"
            )
        reference = meta.native_tile_px or meta.input_size
        ratio = side / reference
        if ratio > SCALE_NOTE_FACTOR or ratio < 1 / SCALE_NOTE_FACTOR:
            what = "source tiles" if meta.native_tile_px else "training tiles"
            notes.append(
                f"the image is {side} px across, {max(ratio, 1 / ratio):.0f}x {'larger' if ratio > 1 else 'smaller'} "
                f"than the {what} ({reference} px): tissue may appear at a scale the model was not trained on"
                + (" (try the large-image mode)" if ratio > 1 else "")
            )
    return notes


# -- prediction ------------------------------------------------------------------------------------
def model_input(tiles_uint8: np.ndarray | torch.Tensor, meta: ModelMeta, device: str | torch.device) -> torch.Tensor:
    """uint8 NHWC tiles at the model's size -> the normalised NCHW float tensor the model was trained on."""

    return to_model_input(tiles_uint8, meta.mean, meta.std, device, stain_ref=meta.stain)


def model_view(tiles_uint8: np.ndarray, meta: ModelMeta) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tiles as the model sees them before mean/std normalisation, float (N, C, S, S) in [0, 1] and
    stain-normalised; and, when the model normalises stain, the same tiles as given (for the flag's input-colour
    check; else None). One float conversion serves both."""

    given = to_float01(np.asarray(tiles_uint8), "cpu")
    return stain.normalize_batch(given, meta.stain), given if meta.stain else None


def ood_flags(
    meta: ModelMeta, probs: np.ndarray, tiles_uint8: np.ndarray | None = None, model: nn.Module | None = None
) -> np.ndarray | None:
    """Per tile: True where it looks unlike the training tiles (histo_core.ood); None without a calibration.
    With the `model` (and the tiles), the feature check runs too."""
    found = ood_check(meta, probs, tiles_uint8, model)
    return None if found is None else found.flags


def ood_check(
    meta: ModelMeta, probs: np.ndarray, tiles_uint8: np.ndarray | None = None, model: nn.Module | None = None
):
    """histo_core.ood.check_tiles for uint8 tiles at the model's size: flags, reasons and scores (None
    without a calibration). The feature check needs the `model` and the tiles."""

    if tiles_uint8 is None:
        return check_tiles(meta.ood, probs, None)
    view, given = model_view(tiles_uint8, meta)
    return check_tiles(meta.ood, probs, view, given, features=ood_features(model, meta, view))


def ood_features(model: nn.Module | None, meta: ModelMeta, view: torch.Tensor) -> list[np.ndarray] | None:
    """The tiles' stage features for the "unlike the training tiles" feature check, when the model's
    calibration has one (else None: nothing computed)."""

    if model is None or not isinstance((meta.ood or {}).get("feature"), dict) or not len(view):
        return None
    return layer_features(model, view, InputSpec.of(meta))


def predict(
    loaded: LoadedModel,
    tiles_uint8: np.ndarray | torch.Tensor,
    tta: bool = False,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Class probabilities (N, K) float32 for uint8 tiles (N, S, S, C) already at the model's input size, or for
    the model's view of them (`model_view`: stain-normalised already). Runs `histo_core.predict`, the one loop.

    With `tta`, the probabilities are averaged over the 8 dihedral views (flips and 90-degree rotations),
    all label-preserving for tissue. `amp_dtype`: autocast to it, with channels-last batches (the slide
    analysis: `training.device.native_amp_dtype`); None: full fp32."""

    tiles = tiles_uint8 if isinstance(tiles_uint8, torch.Tensor) else np.asarray(tiles_uint8)
    if not isinstance(tiles, torch.Tensor):
        _check_tiles(tiles, loaded.meta)
    spec, k = (
        InputSpec.of(loaded.meta, amp_dtype=amp_dtype, channels_last=amp_dtype is not None),
        loaded.meta.num_classes,
    )
    with model_lock(loaded.model):
        return predict_tiles(loaded.model, tiles, spec, tta=tta, batch_size=batch_size, num_classes=k)


def _check_tiles(tiles: np.ndarray, meta: ModelMeta) -> None:
    expected = (meta.input_size, meta.input_size, meta.in_channels)
    if tiles.ndim != 4 or tiles.dtype != np.uint8 or tuple(tiles.shape[1:]) != expected:
        raise ValueError(
            f"expected uint8 tiles (N, {expected[0]}, {expected[1]}, {expected[2]}), "
            f"got {tiles.dtype} {tiles.shape}; run preprocess() first"
        )


def top_k(probs: np.ndarray, classes: Sequence[str], k: int = 3) -> list[list[tuple[str, float]]]:
    """Per row, the k most probable (class, probability) pairs, most probable first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(str(classes[j]), float(p[j])) for j in row] for p, row in zip(probs, order)]


# -- a batch of uploaded files -----------------------------------------------------------------------
PREVIEW_PX = 256  # cards show 224 px; a session may hold a hundred of these


@dataclass
class TileResult:
    """One uploaded file: either `error` (why it could not be used) or the tile, its probabilities and notes."""

    name: str  # sanitised display name
    error: str | None = None
    tile: np.ndarray | None = None  # uint8 model input (S, S, C)
    preview: np.ndarray | None = None  # the decoded image, longer side at most PREVIEW_PX, for display
    field_view: np.ndarray | None = None  # the part of it the model saw (its field of view), at most PREVIEW_PX
    width: int = 0
    height: int = 0
    mode_note: str = ""
    notes: list[str] = field(default_factory=list)
    probs: np.ndarray | None = None  # (K,)
    model_view: np.ndarray | None = None  # the tile after stain normalisation, when the model normalises
    unlike_training: str | None = None  # why the tile looks unlike the training tiles, when it does
    ood_score: float | None = None  # how unlike (histo_core.ood: 1.0 or more is flagged); None: no calibration

    @property
    def ok(self) -> bool:
        return self.error is None

    def _scored(self) -> np.ndarray:
        if self.probs is None:
            raise ValueError(f"{self.name}: not classified" + (f" ({self.error})" if self.error else ""))
        return self.probs

    @property
    def pred(self) -> int:
        return int(np.argmax(self._scored()))

    @property
    def confidence(self) -> float:
        return float(np.max(self._scored()))


def prepare_upload(data: bytes, name: str, meta: ModelMeta, mpp: float | None = None) -> TileResult:
    """Decode and preprocess one file (at `mpp` µm per pixel when known); a bad file gives a TileResult with
    `error` set, never an exception."""

    try:
        decoded = decode_image(data, name)
        notes = list(decoded.notes)
        tile = preprocess(decoded, meta, notes, mpp=mpp)
    except ImageError as exc:
        return TileResult(name=display_name(name), error=str(exc))
    top, left, side = centre_box(decoded.height, decoded.width, field_region(meta, mpp))
    field_view = shrink_for_display(decoded.array[top : top + side, left : left + side], PREVIEW_PX)
    return TileResult(
        name=decoded.name,
        tile=tile,
        preview=shrink_for_display(decoded.array, PREVIEW_PX),
        field_view=field_view,
        width=decoded.width,
        height=decoded.height,
        mode_note=decoded.mode_note,
        notes=notes,
    )


def classify_uploads(
    loaded: LoadedModel,
    files: Sequence[tuple[str, bytes]],
    tta: bool = False,
    batch_size: int = 256,
    mpp: float | None = None,
) -> list[TileResult]:
    """Decode, preprocess and classify (name, bytes) pairs in one batched pass, in the order given; each tile
    also gets the model's view of it (when stain-normalised) and the "unlike the training tiles" check."""

    results = [prepare_upload(data, name, loaded.meta, mpp=mpp) for name, data in files]
    good = [r for r in results if r.ok and r.tile is not None]
    if good:
        tiles = np.stack([r.tile for r in good if r.tile is not None])
        view, given = model_view(tiles, loaded.meta)  # stain-normalised once: shown, checked and classified
        probs = predict(loaded, view, tta=tta, batch_size=batch_size)
        flagged = check_tiles(
            loaded.meta.ood, probs, view, given, features=ood_features(loaded.model, loaded.meta, view)
        )
        seen = (view * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i, (r, p) in enumerate(zip(good, probs)):
            r.probs = p
            if loaded.meta.stain:
                r.model_view = seen[i]
            if flagged is not None:
                r.unlike_training = flagged.reasons[i] if flagged.flags[i] else None
                score = float(flagged.scores[i])
                r.ood_score = None if np.isnan(score) else score
    return results
