"""What a model gets from an image: the one preprocessing at the model's field of view, and the tensors it runs on.

    tile = preprocess(decode_image(data, "tile.png"), loaded.meta, notes)   # uint8 at the model's size/channels
    x = model_input(np.stack([tile]), loaded.meta, device)                  # normalised NCHW float tensor
    view, given = model_view(tiles, loaded.meta)                            # stain-normalised float view in [0, 1]

`preprocess` goes through the one image path (`image_decode.make_tile`) and, when the model's field of view is
known (`ModelMeta.field_um`), takes the part of the image that covers it; lines saying what was done (cropped,
enlarged, another scale) go to `notes`.
"""

from __future__ import annotations

import numpy as np
import torch

from histo_core import stain
from histo_core.image_decode import DecodedImage, make_tile
from histo_core.model_meta import ModelMeta
from histo_core.pipeline import to_float01, to_model_input

SCALE_NOTE_FACTOR = 4.0  # without a known field of view: a tile this many times larger/smaller gets a note
FIELD_TOLERANCE = 1.25  # with one: an image covering this much less than the model's field gets a note


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


def model_input(tiles_uint8: np.ndarray | torch.Tensor, meta: ModelMeta, device: str | torch.device) -> torch.Tensor:
    """uint8 NHWC tiles at the model's size -> the normalised NCHW float tensor the model was trained on."""

    return to_model_input(tiles_uint8, meta.mean, meta.std, device, stain_ref=meta.stain)


def model_view(tiles_uint8: np.ndarray, meta: ModelMeta) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tiles as the model sees them before mean/std normalisation, float (N, C, S, S) in [0, 1] and
    stain-normalised; and, when the model normalises stain, the same tiles as given (for the flag's input-colour
    check; else None). One float conversion serves both."""

    given = to_float01(np.asarray(tiles_uint8), "cpu")
    return stain.normalize_batch(given, meta.stain), given if meta.stain else None
