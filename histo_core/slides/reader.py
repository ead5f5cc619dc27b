"""Open a whole slide with OpenSlide (Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, Leica .scn, Philips TIFF,
Ventana .bif, generic tiled TIFF, DICOM) and check it before any pixel is read.

Refused, each with one line naming the file and the fix: a file OpenSlide does not recognise as a slide, a
truncated or unreadable slide, a level 0 larger than MAX_SIDE_PX on a side, and a slide without a plausible
µm/px (give one with `--mpp`)."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histo_core.errors import HistoError

MAX_SIDE_PX = 250_000  # level 0, per side: the largest scanners write about 150,000 px
MPP_RANGE = (0.05, 20.0)  # µm per pixel a slide's level 0 may plausibly have (100x oil .. a 0.5x overview)
THUMBNAIL_PX = 1024  # the longer side of the thumbnail the tissue is found on
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm")
UPLOAD_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi")  # single-file formats a browser upload can carry


class SlideError(HistoError):
    """A slide that cannot be analysed."""


def _openslide() -> Any:
    try:
        import openslide
    except ImportError as exc:  # openslide-bin missing or its library failed to load
        raise SlideError(
            f"OpenSlide is not available ({exc}); install it with `pip install openslide-python openslide-bin`"
        ) from None
    return openslide


@dataclass
class Slide:
    """An open slide: OpenSlide's handle plus what the analysis needs, all checked."""

    path: Path
    handle: Any  # openslide.OpenSlide
    mpp: float  # µm per level-0 pixel
    mpp_source: str  # "metadata" or "given"
    vendor: str
    objective: float | None
    identity: str  # OpenSlide's quickhash-1, else a hash of the file's size, head and tail

    @property
    def name(self) -> str:
        from histo_core.image_decode import display_name

        return display_name(self.path.name)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        w, h = self.handle.dimensions
        return int(w), int(h)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [(int(w), int(h)) for w, h in self.handle.level_dimensions]

    @property
    def level_downsamples(self) -> list[float]:
        return [float(d) for d in self.handle.level_downsamples]

    def read(self, x0: int, y0: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of `level`, its top-left corner at level-0 (x0, y0); transparent
        (unscanned) areas come out white. Raises SlideError on a damaged tile.

        The corner is moved (by less than one pixel of the level) onto the level's pixel grid: OpenSlide
        resamples a region that starts between two of a level's pixels, which blurs it."""
        if level:
            d = self.level_downsamples[level]
            x0, y0 = (math.ceil(round(v / d) * d - 1e-6) for v in (x0, y0))
        try:
            rgba = np.asarray(self.handle.read_region((int(x0), int(y0)), int(level), (int(width), int(height))))
        except Exception as exc:  # openslide.OpenSlideError: a corrupt or truncated tile
            raise SlideError(
                f"{self.name}: cannot read the slide's pixels ({exc}); the file may be truncated"
            ) from None
        return _rgba_to_rgb(rgba)

    def thumbnail(self, max_px: int = THUMBNAIL_PX) -> np.ndarray:
        """RGB uint8 thumbnail, longer side at most `max_px`, from the smallest sufficient level."""
        w, h = self.dimensions
        scale = max(w, h) / max_px
        try:
            im = self.handle.get_thumbnail((max(1, round(w / max(scale, 1))), max(1, round(h / max(scale, 1)))))
        except Exception as exc:
            raise SlideError(
                f"{self.name}: cannot read the slide's pixels ({exc}); the file may be truncated"
            ) from None
        return _rgba_to_rgb(np.asarray(im.convert("RGBA")))

    def info(self) -> dict[str, Any]:
        w, h = self.dimensions
        return {
            "name": self.name,
            "path": str(self.path),
            "width": w,
            "height": h,
            "levels": [
                {"width": lw, "height": lh, "downsample": round(d, 4)}
                for (lw, lh), d in zip(self.level_dimensions, self.level_downsamples)
            ],
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "objective": self.objective,
            "vendor": self.vendor,
            "identity": self.identity,
            "size_mm": [round(w * self.mpp / 1000, 3), round(h * self.mpp / 1000, 3)],
        }

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    if rgba.ndim == 3 and rgba.shape[2] == 4:
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)) // 255
        return rgb.astype(np.uint8)
    return np.ascontiguousarray(rgba[..., :3])


def open_slide(path: str | os.PathLike, mpp: float | None = None, *, max_side_px: int | None = None) -> Slide:
    """Open and check a slide. `mpp` (µm per level-0 pixel) overrides the metadata, and is required where the
    slide records none; `max_side_px`: the level-0 limit (default MAX_SIDE_PX). Raises SlideError with one line
    naming the file and the fix."""
    openslide = _openslide()
    p = Path(path).expanduser()
    from histo_core.image_decode import display_name

    shown = display_name(str(path))
    if not p.exists():
        raise SlideError(f"{shown}: no such file")
    if p.is_dir():
        raise SlideError(f"{shown}: is a folder; give the slide file (for MIRAX, the .mrxs file beside its folder)")
    if mpp is not None and not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
        raise SlideError(f"--mpp must be between {MPP_RANGE[0]} and {MPP_RANGE[1]} µm per pixel, got {mpp}")
    try:
        fmt = openslide.OpenSlide.detect_format(str(p))
    except Exception:  # unreadable header
        fmt = None
    if fmt is None and _tiff_magic(p):
        raise SlideError(
            f"{shown}: a TIFF file OpenSlide cannot read: it may be truncated or damaged (copy it again), or a "
            "plain TIFF image that is not tiled (use the Classify page or `predict` for those)"
        )
    if fmt is None:
        raise SlideError(
            f"{shown}: not a slide OpenSlide can read (it reads Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, Leica "
            ".scn, Philips and generic tiled TIFF, Ventana .bif, DICOM); for an ordinary image use the Classify "
            "page or `predict`"
        )
    try:
        handle = openslide.OpenSlide(str(p))
    except Exception as exc:
        raise SlideError(f"{shown}: cannot open the slide ({exc}); the file may be truncated or damaged") from None
    try:
        return _checked(p, handle, fmt, mpp, max_side_px or MAX_SIDE_PX, shown)
    except BaseException:
        handle.close()
        raise


def _checked(p: Path, handle: Any, fmt: str, mpp: float | None, max_side_px: int, shown: str) -> Slide:
    props = dict(handle.properties)
    w, h = (int(v) for v in handle.dimensions)
    if w > max_side_px or h > max_side_px:
        raise SlideError(
            f"{shown}: level 0 is {w:,} x {h:,} px, larger than the {max_side_px:,} px per side this app analyses"
        )
    if w < 1 or h < 1:
        raise SlideError(f"{shown}: the slide has no pixels")
    source = "given"
    if mpp is None:
        mpp = _metadata_mpp(props)
        source = "metadata"
        if mpp is None:
            raise SlideError(
                f"{shown}: the slide records no µm per pixel; give it with --mpp (the CLI) or the µm/px box (the "
                "page): about 0.25 at 40x, 0.5 at 20x"
            )
        if not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
            raise SlideError(
                f"{shown}: the slide records {mpp:g} µm per pixel, outside {MPP_RANGE[0]}..{MPP_RANGE[1]}; give "
                "the right value with --mpp (about 0.25 at 40x, 0.5 at 20x)"
            )
    slide = Slide(
        path=p,
        handle=handle,
        mpp=float(mpp),
        mpp_source=source,
        vendor=str(props.get("openslide.vendor") or fmt),
        objective=_float(props.get("openslide.objective-power")),
        identity=slide_identity(p, props),
    )
    # a truncated file opens (its header is intact) but its last tiles are gone: read a corner of each level
    for level, (lw, lh) in enumerate(slide.level_dimensions):
        d = slide.level_downsamples[level]
        side = min(64, lw, lh)
        slide.read(int((lw - side) * d), int((lh - side) * d), level, side, side)
    return slide


def _tiff_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def _metadata_mpp(props: dict[str, str]) -> float | None:
    x, y = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
    if x and y:
        return (x + y) / 2
    return x or y


def slide_identity(path: Path, props: dict[str, str] | None = None) -> str:
    """OpenSlide's quickhash-1 where the format has one, else sha256 of the file's size and first and last MiB
    (a slide is rewritten whole, so this changes whenever the slide does, at the cost of two reads)."""
    q = (props or {}).get("openslide.quickhash-1")
    if q:
        return f"quickhash-1:{q}"
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(size - (1 << 20))
            h.update(fh.read(1 << 20))
    return f"sha256-ends:{h.hexdigest()}"
