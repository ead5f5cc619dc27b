"""The one image path: any image file -> the uint8 tile a model sees.

    decoded = decode_image(data, "tile.png")      # DecodedImage(array HxWxC uint8, mode_note, notes, name)
    tile = make_tile(decoded.array, 28, 3)        # centre square, resized (LANCZOS), channels matched

Every road uses these two functions: dataset folders and CSV manifests (`datasets.decoded_tiles`), uploads
and `predict` (`uploads.prepare_upload`), and the windows of a large image (`tiling`), so one file gives
the same tile whichever road it takes.

Bit depth: 8-bit images are kept; deeper integer images are scaled by their declared significant bits (a
PNG's sBIT chunk) when present, else by the container's full range (65535 for 16-bit), the same for every
image, never stretched per image; floats in [0, 1] are multiplied by 255, in [0, 255] kept, else stretched.

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
import stat
import unicodedata
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from histo_core.errors import ImageError
from histo_core.limits import env_int

DEFAULT_MAX_PIXELS = 100_000_000
MAX_NAME_CHARS = 120
UPLOAD_TYPES = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif")  # what the Classify page accepts
_FORMAT_EXTENSIONS = {
    "PNG": {".png"},
    "JPEG": {".jpg", ".jpeg", ".jpe"},
    "TIFF": {".tif", ".tiff"},
    "BMP": {".bmp"},
    "GIF": {".gif"},
    "WEBP": {".webp"},
}
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
    return env_int("HISTO_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS)  # "huge" or 0: refused by name (ConfigError)


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
        raise ImageError(
            f"{shown}: damaged or truncated {fmt} file, cannot decode its pixels ({_short(exc)})"
        ) from None
    if _exif_rotated(im):
        notes.append("rotated upright following the file's EXIF orientation tag")
    array = _to_uint8(oriented, shown, notes, _png_significant_bits(data) if fmt == "PNG" else None)
    if fmt == "TIFF" and im.mode == "RGB" and _tiff_bits(im) > 8:
        notes.append(f"{_tiff_bits(im)}-bit-per-channel RGB TIFF reduced to 8 bits per channel")
    return DecodedImage(array=array, mode_note=mode_note, notes=notes, name=shown)


def _open(data: bytes, shown: str) -> Image.Image:
    limit = max_image_pixels()
    # Our limit is checked below from the header; Pillow's own process-wide guard is left as it is.
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
            "raise HISTO_MAX_IMAGE_PIXELS"
        ) from None
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


def _png_significant_bits(data: bytes) -> int | None:
    """The largest significant-bits value of a PNG's sBIT chunk (before the image data), if it has one."""
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"sBIT":
            values = data[pos + 8 : pos + 8 + length]
            return max(values) if values else None
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


def _to_uint8(im: Image.Image, shown: str, notes: list[str], significant_bits: int | None = None) -> np.ndarray:
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
        return _scale_high_depth(im, shown, notes, significant_bits)
    try:
        rgb = im.convert("RGB")
    except _DECODE_ERRORS as exc:
        raise ImageError(
            f"{shown}: colour mode {mode} is not supported ({_short(exc)}); save it as 8-bit RGB"
        ) from None
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


def _scale_high_depth(im: Image.Image, shown: str, notes: list[str], significant_bits: int | None) -> np.ndarray:
    """16/32-bit integer and float grayscale to 8 bits, the same scale for every image of a kind.

    Integers: divided by 2^bits - 1, where bits are the declared significant bits (PNG sBIT) when given,
    else the container's (16 for I;16 and for 'I' images whose values fit in 16 bits, else 32).
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
    elif lo < 0:
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        notes.append(f"signed {im.mode} image stretched from [{lo:.0f}, {hi:.0f}] to 8 bits")
    else:
        container = 16 if (im.mode.startswith("I;16") or hi <= 65535) else 32
        bits = significant_bits if significant_bits and 8 < significant_bits <= container else container
        declared = " (declared significant bits)" if bits != container else ""
        scaled = arr / (2**bits - 1) * 255.0
        notes.append(f"{bits}-bit image{declared} scaled to 8 bits (max value {hi:.0f})")
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out if out.ndim == 3 else out[..., None]


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def to_png_bytes(array: np.ndarray) -> bytes:
    """uint8 (H, W[, 1 or 3]) -> PNG bytes (for downloads and tests)."""
    buf = io.BytesIO()
    pil_image(array).save(buf, format="PNG")
    return buf.getvalue()


MIN_TILE_SIDE = 8  # px: a centre square smaller than this holds nothing to classify
# The one resampling filter of the image path. LANCZOS: it composes across scales (a slide level made by 4x and
# read at 2x gives the classes of level 0 read at 8x; bilinear does not, tests/test_slides.py), though a 224 px
# NCT-CRC-HE tile shrunk to 28 px with it is sharper than PathMNIST's own tiles (benchmarks/resample_match.py).
RESAMPLE = Image.Resampling.LANCZOS


# -- uint8 arrays: the one gray -> RGB expansion and the one shrink for display -------------------------------
def gray_to_rgb(arr: np.ndarray) -> np.ndarray:
    """uint8 image(s) with the channel last, (..., 1) or (..., 3), or one (H, W) image -> three channels:
    grayscale repeated, colour unchanged (the same array)."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def pil_image(arr: np.ndarray) -> Image.Image:
    """One uint8 (H, W), (H, W, 1) or (H, W, 3) image as a PIL image ("L" or "RGB")."""
    arr = np.asarray(arr, dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def shrink_for_display(arr: np.ndarray, max_side: int) -> np.ndarray:
    """One uint8 (H, W, C) image with its longer side at most `max_side` (RESAMPLE, aspect kept, channels kept);
    the same array when it is small enough."""
    h, w = arr.shape[:2]
    if max(h, w) <= max_side:
        return arr
    scale = max_side / max(h, w)
    out = np.asarray(pil_image(arr).resize((max(1, round(w * scale)), max(1, round(h * scale))), RESAMPLE))
    return out[..., None] if out.ndim == 2 else out


def read_image_bytes(path: str | os.PathLike, max_bytes: int = 1 << 30) -> bytes:
    """The bytes of an image file on disk, read only from a regular file and within `max_bytes` (a pipe would
    hang the read, /dev/zero would never end). Raises ImageError with one line naming the file."""
    shown = display_name(os.fspath(path))
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"{shown}: is a folder, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{shown}: not an image file (a device, pipe or socket); give a regular image file")
        if info.st_size > max_bytes:
            raise ImageError(
                f"{shown}: {info.st_size / 2**20:,.0f} MiB, more than the {max_bytes >> 20:,} MiB accepted for one image"
            )
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # the limit holds even if the file grows meanwhile
    except FileNotFoundError:
        raise ImageError(f"{shown}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{shown}: cannot read the file ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise ImageError(f"{shown}: more than the {max_bytes >> 20:,} MiB accepted for one image")
    return data


def read_image_file(path: str | os.PathLike, max_bytes: int = 1 << 30) -> DecodedImage:
    """Decode an image file from disk (dataset folders, `predict` arguments). Raises ImageError."""
    return decode_image(read_image_bytes(path, max_bytes), os.fspath(path))


def square_side(height: int, width: int, name: str = "image") -> int:
    """The side of the centre square of an image; refuses images too thin to hold a tile."""
    side = min(height, width)
    if side < MIN_TILE_SIDE:
        raise ImageError(
            f"{display_name(name)}: {width}x{height} px, too small to classify (a tile needs at least "
            f"{MIN_TILE_SIDE} px on the shorter side)"
        )
    return side


def centre_box(height: int, width: int, region_px: int | None = None, name: str = "image") -> tuple[int, int, int]:
    """(top, left, side) of the square a tile is made from: the centred square of side min(H, W), or of side
    `region_px` (a field of view) when the image is larger than that."""
    side = square_side(height, width, name)
    if region_px is not None and MIN_TILE_SIDE <= region_px < side:
        side = int(region_px)
    return (height - side) // 2, (width - side) // 2, side


def make_tile(
    array: np.ndarray,
    size: int,
    channels: int,
    *,
    region_px: int | None = None,
    notes: list[str] | None = None,
    name: str = "image",
) -> np.ndarray:
    """A decoded uint8 image (H, W, 1 or 3) -> the model's uint8 tile (size, size, channels).

    The centre square of side min(H, W) is taken (or of side `region_px`, the model's field of view in this
    image's pixels, when the image is larger than that), resized with one filter (RESAMPLE, LANCZOS), and its channels
    matched: colour -> grayscale by ITU-R 601 luma (Pillow's "L"), grayscale -> colour by repetition."""
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"expected a uint8 (H, W, 1 or 3) image, got {arr.dtype} {arr.shape}")
    top, left, side = centre_box(arr.shape[0], arr.shape[1], region_px, name)
    arr = arr[top : top + side, left : left + side]
    if arr.shape[2] != channels:
        if channels == 1:
            arr = np.asarray(Image.fromarray(arr).convert("L"), np.uint8)[..., None]
            if notes is not None:
                notes.append("colour image converted to grayscale for a grayscale model")
        else:
            arr = gray_to_rgb(arr)
            if notes is not None:
                notes.append("grayscale image repeated to 3 channels; the model was trained on colour tiles")
    if side != size:
        im = pil_image(arr).resize((size, size), RESAMPLE)
        arr = np.asarray(im, np.uint8)
        arr = arr[..., None] if arr.ndim == 2 else arr
    return np.ascontiguousarray(arr)
