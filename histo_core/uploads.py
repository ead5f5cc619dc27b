"""Uploaded files, classified: each file decoded, made into the model's tile, with a preview for display and the
"unlike the training tiles" check (the Classify page, `predict`, `inspect`).

    results = classify_uploads(load_model(ref), [(name, data), ...], tta=True, mpp=0.5)
    for r in results: r.error or (r.pred, r.confidence, r.notes, r.preview, r.unlike_training)

A bad file gives a `TileResult` with `error` set, never an exception; the good ones are classified in one
batched pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from histo_core.errors import ImageError
from histo_core.image_decode import centre_box, decode_image, display_name, shrink_for_display
from histo_core.model_input import field_region, model_view, preprocess
from histo_core.model_meta import LoadedModel, ModelMeta
from histo_core.ood import check_tiles, ood_features
from histo_core.predict import predict

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
            loaded.meta.ood,
            probs,
            view,
            given,
            features=ood_features(loaded.model, loaded.meta, view),
            input_features=ood_features(loaded.model, loaded.meta, given, "input_feature"),
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
