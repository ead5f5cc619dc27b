"""Which resampling filter makes 28 px tiles from real 224 px tiles that look like PathMNIST's own 28 px tiles.

    python benchmarks/resample_match.py

PathMNIST's tiles are NCT-CRC-HE 224 px tiles shrunk to 28 px by MedMNIST (the filter is not stated). An upload of
a full-size tile is shrunk by the image path (`histo_core.image_decode.make_tile`); if its filter leaves the tile
sharper or softer than the training tiles, the model sees a shift that is not in the tissue. This compares the
sharpness of the 240 pathmnist-mini tiles with the 22 real 224 px NCT-CRC-HE tiles of ../shared/data (CRC-VAL-HE-7K
and NCT-CRC-HE-100K-NONORM) shrunk with each filter of Pillow and with `pipeline.resize_batch`. Sharpness is
measured on the grey level, per tile, over its standard deviation (so contrast and stain do not count): the mean
absolute difference of horizontal neighbours, and the mean absolute Laplacian; the medians are printed. The
filter whose figures are closest to PathMNIST's is the best match.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
NPZ = SHARED / "pathmnist-mini" / "pathmnist.npz"
CRC = SHARED / "tiles" / "crc-he"


def sharpness(tiles: np.ndarray) -> tuple[float, float]:
    """(median neighbour difference, median |Laplacian|), each over the tile's standard deviation."""
    a = np.asarray(tiles, np.float64).mean(-1)
    sd = a.std((1, 2)) + 1e-6
    grad = np.abs(np.diff(a, axis=2)).mean((1, 2))
    lap = np.abs(4 * a[:, 1:-1, 1:-1] - a[:, :-2, 1:-1] - a[:, 2:, 1:-1] - a[:, 1:-1, :-2] - a[:, 1:-1, 2:]).mean(
        (1, 2)
    )
    return float(np.median(grad / sd)), float(np.median(lap / sd))


def main() -> None:
    if not NPZ.exists() or not CRC.is_dir():
        raise SystemExit(f"{SHARED} lacks pathmnist-mini or tiles/crc-he: the real sample images are needed")
    import torch
    from PIL import Image

    from histo_core.image_decode import RESAMPLE, read_image_file
    from histo_core.pipeline import resize_batch

    with np.load(NPZ) as z:
        pathmnist = np.concatenate([z[f"{s}_images"] for s in ("train", "val", "test")])
    files = sorted(p for p in CRC.rglob("*") if p.suffix.lower() in (".tif", ".tiff", ".jpg", ".jpeg", ".png"))
    full = [read_image_file(p).array for p in files]
    g, lap = sharpness(pathmnist)
    print(f"{len(pathmnist)} PathMNIST tiles against {len(full)} real 224 px tiles shrunk to 28 px")
    print("| resize | neighbour difference | Laplacian | distance to PathMNIST |")
    print("|---|---|---|---|")
    print(f"| PathMNIST's own tiles | {g:.3f} | {lap:.3f} | - |")
    rows = []
    for f in ("NEAREST", "BOX", "BILINEAR", "HAMMING", "BICUBIC", "LANCZOS"):
        flt = getattr(Image.Resampling, f)
        tiles = np.stack([np.asarray(Image.fromarray(a).resize((28, 28), flt)) for a in full])
        rows.append((f"Pillow {f}" + (" (the image path's)" if flt == RESAMPLE else ""), *sharpness(tiles)))
    x = torch.from_numpy(np.stack(full)).permute(0, 3, 1, 2).float() / 255
    rows.append(
        ("pipeline.resize_batch (large images, slides)", *sharpness(resize_batch(x, 28).permute(0, 2, 3, 1).numpy()))
    )
    for name, a, b in rows:
        print(f"| {name} | {a:.3f} | {b:.3f} | {abs(a - g) / g + abs(b - lap) / lap:.3f} |")


if __name__ == "__main__":
    main()
