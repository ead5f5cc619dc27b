"""Write a tiled, pyramidal, zlib-compressed TIFF slide with µm/px from the real CMU slide's pixels, for tests
and benchmarks (never commit one: they are written where needed).

    python benchmarks/make_test_slide.py /tmp/slide-30k.tif --size 30000          # 30,000 x 30,000 px
    python benchmarks/make_test_slide.py /tmp/slide.tif --size 5000 --levels 1 4 16

OpenSlide opens the file as a generic tiled TIFF: each level a tiled page (levels after the first marked
"reduced resolution"), the µm/px in the TIFF resolution tags (pixels per centimetre), which OpenSlide reports
as openslide.mpp-x/y. Larger than the source, the image repeats the source mirrored (so it stays seamless);
each level is written tile by tile from a downsampled copy of that repeat, so memory stays small whatever the
size.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CMU_SLIDE = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
TILE = 256


def cmu_pixels(path: Path = CMU_SLIDE) -> np.ndarray:
    """The CMU slide region as RGB uint8 (2967, 2220, 3), read with OpenSlide."""
    import openslide

    with openslide.OpenSlide(str(path)) as s:
        return np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))


def mirrored_period(src: np.ndarray) -> np.ndarray:
    """A (2H, 2W) image that tiles the plane seamlessly: the source and its mirror images."""
    top = np.concatenate([src, src[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def _tiles(period: np.ndarray, height: int, width: int, exact: bool) -> Iterator[np.ndarray]:
    ph, pw = period.shape[:2]
    for y in range(0, height, TILE):
        rows = np.arange(y, y + TILE) % ph
        for x in range(0, width, TILE):
            cols = np.arange(x, x + TILE) % pw
            tile = period[rows[:, None], cols[None, :]]
            if exact:  # beyond the image's edge: white, as a scanner pads
                tile = tile.copy()
                tile[max(0, height - y) :] = 255
                tile[:, max(0, width - x) :] = 255
            yield tile


def write_slide(
    out: str | Path,
    source: np.ndarray,
    size: tuple[int, int] | None = None,
    mpp: float | None = 0.499,
    downsamples: Sequence[int] = (1, 4, 16),
    zlib_level: int = 1,
) -> Path:
    """Write `source` (RGB uint8), or a mirrored repeat of it `size` = (width, height) large, as a pyramidal
    tiled TIFF with the given level downsamples (the first must be 1) and µm/px (None: no resolution tags).
    Without `size` each level is an exact LANCZOS downsample of the source."""
    import tifffile

    out = Path(out)
    h, w = source.shape[:2]
    width, height = size or (w, h)
    exact = size is None
    period = source if exact else mirrored_period(source)
    with tifffile.TiffWriter(out, bigtiff=width * height * 3 > 2**31) as tw:
        for i, d in enumerate(downsamples):
            lw, lh = max(1, width // d), max(1, height // d)
            ph, pw = period.shape[:2]
            level_period = (
                period
                if d == 1
                else np.asarray(
                    # area averaging, as scanners and libvips make pyramid levels
                    Image.fromarray(period).resize((max(1, pw // d), max(1, ph // d)), Image.Resampling.BOX)
                )
            )
            extra = {}
            if mpp is not None:
                res = 1e4 / (mpp * d)  # pixels per centimetre
                extra = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            tw.write(
                _tiles(level_period, lh, lw, exact),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="zlib",
                compressionargs={"level": zlib_level},
                subfiletype=1 if i else 0,
                **extra,
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the .tif to write")
    ap.add_argument("--size", type=int, help="width and height in px (default: the CMU region's own size)")
    ap.add_argument("--mpp", type=float, default=0.499, help="µm per level-0 pixel (default 0.499, the CMU scan's)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="level downsamples (default 1 4 16)")
    ap.add_argument("--source", default=str(CMU_SLIDE), help="the slide whose pixels are used")
    args = ap.parse_args(argv)
    if args.levels[0] != 1:
        ap.error("the first level's downsample must be 1")
    src = cmu_pixels(Path(args.source))
    size = (args.size, args.size) if args.size else None
    path = write_slide(args.out, src, size, args.mpp, args.levels)
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
