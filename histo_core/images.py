"""Safe decoding of user images (uploads, CLI arguments) into uint8 arrays.

    decoded = decode_image(data, "tile.png")      # DecodedImage(array HxWxC uint8, mode_note, notes, name)

The content decides the format, never the extension. Every file that cannot be used raises `ImageError`
with a message that names the (sanitised) file and says what is wrong: empty, not an image (a text file
renamed .png), truncated, or declaring more pixels than $HISTO_MAX_IMAGE_PIXELS (checked from the header
before any pixel is decoded, so a 50000x50000 "decompression bomb" costs nothing). Unusual colour modes
(16-bit, float, RGBA, palette, CMYK, LA...) are converted to 8-bit RGB or grayscale with a note saying how.
"""

from __future__ import annotations

import io
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from histo_core.errors import ImageError

DEFAULT_MAX_PIXELS = 100_000_000
MAX_NAME_CHARS = 120
UPLOAD_TYPES = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif")  # what the Classify page accepts
_FORMAT_EXTENSIONS = {"PNG": {".png"}, "JPEG": {".jpg", ".jpeg", ".jpe"}, "TIFF": {".tif", ".tiff"},
                      "BMP": {".bmp"}, "GIF": {".gif"}, "WEBP": {".webp"}}
# Errors Pillow raises on damaged data, at open or at load.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, MemoryError)


@dataclass
class DecodedImage:
    array: np.ndarray  # uint8 (H, W, 1) grayscale or (H, W, 3) RGB
    mode_note: str  # the file's format and colour mode, e.g. "PNG, RGBA"
    notes: list[str] = field(default_factory=list)  # conversions that changed the pixels
    name: str = ""  # sanitised display name

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def channels(self) -> int:
        return int(self.array.shape[2])


def max_image_pixels() -> int:
    """The largest image (width x height) accepted: $HISTO_MAX_IMAGE_PIXELS, default 100 million."""
    raw = os.environ.get("HISTO_MAX_IMAGE_PIXELS", "")
    try:
        value = int(raw) if raw.strip() else DEFAULT_MAX_PIXELS
    except ValueError:
        return DEFAULT_MAX_PIXELS
    return value if value > 0 else DEFAULT_MAX_PIXELS


def display_name(name: str | None) -> str:
    """A file name safe to show: the last path component, control and format characters removed, trimmed."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in base)
    base = re.sub(r"\s+", " ", base).strip().lstrip(".") or "unnamed"
    if len(base) > MAX_NAME_CHARS:
        stem, ext = os.path.splitext(base)
        ext = ext[:10]
        base = stem[: MAX_NAME_CHARS - len(ext) - 1] + "…" + ext
    return base


def safe_filename(name: str | None, suffix: str = "") -> str:
    """A file name safe to write anywhere: ASCII letters, digits, '-', '_' and '.', no leading dot."""
    stem = os.path.splitext(display_name(name))[0]
    stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:80] or "image"
    return stem + suffix


def decode_image(data: bytes, name: str = "image") -> DecodedImage:
    """Decode `data` (the bytes of an image file called `name`) into an 8-bit array. Raises ImageError."""
    shown = display_name(name)
    if not data:
        raise ImageError(f"{shown}: empty file (0 bytes), not an image")
    im = _open(data, shown)
    notes: list[str] = []
    fmt = im.format or "unknown format"
    mode_note = f"{fmt}, {im.mode}"
    _note_extension_mismatch(shown, fmt, notes)
    frames = getattr(im, "n_frames", 1) or 1
    if frames > 1:
        notes.append(f"{'pages' if fmt == 'TIFF' else 'frames'}: the file holds {frames}; the first one is used")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
            oriented = ImageOps.exif_transpose(im)
    except Image.DecompressionBombError:
        raise _bomb_error(shown, im.size) from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{shown}: damaged or truncated {fmt} file, cannot decode its pixels ({_short(exc)})") from None
    if _exif_rotated(im):
        notes.append("rotated upright following the file's EXIF orientation tag")
    array = _to_uint8(oriented, shown, notes)
    if fmt == "TIFF" and im.mode == "RGB" and _tiff_bits(im) > 8:
        notes.append(f"{_tiff_bits(im)}-bit-per-channel RGB TIFF reduced to 8 bits per channel")
    return DecodedImage(array=array, mode_note=mode_note, notes=notes, name=shown)


def _open(data: bytes, shown: str) -> Image.Image:
    limit = max_image_pixels()
    # Pillow refuses images over twice its limit while reading the header; tie that limit to ours.
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found.group(1)):,}" if found else "too many"
        raise ImageError(
            f"{shown}: refused, the image declares {declared} pixels, "
            f"more than the limit of {limit:,} (a possible decompression bomb); cut it into smaller regions or "
            "raise HISTO_MAX_IMAGE_PIXELS") from None
    except UnidentifiedImageError:
        raise ImageError(f"{shown}: not an image ({_what_is_it(data)})") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{shown}: damaged or truncated image file, cannot read its header ({_short(exc)})") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{shown}: the image declares a size of {w}x{h} pixels; nothing to classify")
    if w * h > limit:
        raise _bomb_error(shown, im.size)
    return im


def _bomb_error(shown: str, size: tuple[int, int]) -> ImageError:
    w, h = size
    return ImageError(
        f"{shown}: refused, the image declares {w}x{h} = {w * h:,} pixels, more than the limit of "
        f"{max_image_pixels():,} (a possible decompression bomb); cut it into smaller regions or raise "
        "HISTO_MAX_IMAGE_PIXELS"
    )


def _what_is_it(data: bytes) -> str:
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "it is a text file; cannot identify image file"
    return "cannot identify image file; use PNG, JPEG, TIFF, BMP or GIF"


def _note_extension_mismatch(shown: str, fmt: str, notes: list[str]) -> None:
    ext = os.path.splitext(shown)[1].lower()
    expected = _FORMAT_EXTENSIONS.get(fmt)
    if ext and expected and ext not in expected:
        notes.append(f"the file is a {fmt} image although its name ends in {ext}")


def _tiff_bits(im: Image.Image) -> int:
    bits = getattr(im, "tag_v2", {}).get(258, 8)  # BitsPerSample
    return int(max(bits) if isinstance(bits, (tuple, list)) else bits)


def _exif_rotated(im: Image.Image) -> bool:
    try:
        return im.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # damaged EXIF blocks are common and harmless here
        return False


def _to_uint8(im: Image.Image, shown: str, notes: list[str]) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W, 1) or (H, W, 3)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode == "L":
        return np.asarray(im, dtype=np.uint8)[..., None].copy()
    if mode == "1":
        notes.append("1-bit black-and-white image converted to 8-bit grayscale")
        return np.asarray(im.convert("L"), dtype=np.uint8)[..., None].copy()
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info):
        return _composite_on_white(im, notes)
    if mode == "P":
        notes.append("palette image converted to RGB")
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB (no colour profile applied; colours may differ from print)")
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    if mode.startswith("I") or mode == "F":
        return _scale_high_depth(im, shown, notes)
    try:
        rgb = im.convert("RGB")
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{shown}: colour mode {mode} is not supported ({_short(exc)}); save it as 8-bit RGB") from None
    notes.append(f"{mode} image converted to RGB")
    return np.asarray(rgb, dtype=np.uint8).copy()


def _composite_on_white(im: Image.Image, notes: list[str]) -> np.ndarray:
    gray = im.mode in ("LA", "La")
    rgba = im.convert("LA" if gray else "RGBA")
    arr = np.asarray(rgba, dtype=np.float32)
    alpha = arr[..., -1:] / 255.0
    out = arr[..., :-1] * alpha + 255.0 * (1.0 - alpha)
    if alpha.min() < 1.0:
        notes.append("transparent pixels composited on white")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _scale_high_depth(im: Image.Image, shown: str, notes: list[str]) -> np.ndarray:
    """16/32-bit integer and float grayscale to 8 bits, keeping relative intensities.

    Integers: values that fit in 8 bits are kept; otherwise divided by the smallest full scale (2^bits - 1
    for 10, 12, 14, 16 or 32 bits) that holds the maximum, so a 12-bit camera image is not left dark.
    Floats: [0, 1] -> x 255, [0, 255] kept, anything else stretched from its min to its max."""
    arr = np.asarray(im).astype(np.float64)
    if arr.ndim == 3:  # multi-channel high-depth images arrive as (H, W, C)
        arr = arr[..., :3]
    finite = np.isfinite(arr)
    if not finite.any():
        raise ImageError(f"{shown}: every pixel is NaN or infinite; nothing to classify")
    if not finite.all():
        notes.append(f"{int((~finite).sum())} NaN/infinite pixels set to the minimum")
        arr = np.where(finite, arr, np.nanmin(np.where(finite, arr, np.nan)))
    lo, hi = float(arr.min()), float(arr.max())
    if im.mode == "F":
        if lo >= 0.0 and hi <= 1.0:
            scaled, how = arr * 255.0, "values in [0, 1] multiplied by 255"
        elif lo >= 0.0 and hi <= 255.0:
            scaled, how = arr, "values in [0, 255] kept"
        else:
            scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            how = f"values stretched from [{lo:.4g}, {hi:.4g}] to [0, 255]"
        notes.append(f"32-bit float image converted to 8 bits: {how}")
    else:
        if lo < 0:
            scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            notes.append(f"signed {im.mode} image stretched from [{lo:.0f}, {hi:.0f}] to 8 bits")
        elif hi <= 255:
            scaled = arr
            notes.append(f"{im.mode} image whose values fit in 8 bits (max {hi:.0f}); kept as is")
        else:
            bits = next(b for b in (10, 12, 14, 16, 32) if hi <= 2 ** b - 1)
            scaled = arr / (2 ** bits - 1) * 255.0
            notes.append(f"{bits}-bit image (max value {hi:.0f}) scaled to 8 bits")
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out if out.ndim == 3 else out[..., None]


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def to_png_bytes(array: np.ndarray) -> bytes:
    """uint8 (H, W[, 1 or 3]) -> PNG bytes (for downloads and tests)."""
    arr = np.asarray(array, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
