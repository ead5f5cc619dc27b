"""H&E stain: normalisation to a reference (Macenko, Reinhard) and stain augmentation (HED jitter), batched.

    ref = fit_reference("macenko", tiles_uint8)        # a JSON-able dict, saved with the run and the model card
    x = normalize_batch(x01, ref)                       # float NCHW in [0, 1] -> the same, stain-normalised
    x = hed_jitter(x01, sigma=0.05, gen=gen)            # training augmentation (Tellez et al. 2018)

Everything works on whole batches of float [0, 1] NCHW tensors on the training or inference device, so the
same function serves the training loop, evaluation and every upload (one image path: the model always sees
tiles normalised the same way). Per-tile estimates are batched: a (N, 3, 3) eigendecomposition and masked
quantiles, no Python loop over tiles. torchstain does the same per image (a loop over every tile of every
batch) and raises on tiles with too little tissue, which are common (background, fat); this module keeps such
tiles unchanged instead.

Macenko (Macenko et al. 2009): optical density OD = -log((I + 1) / Io), with Io the tile's own white level (the
99.9th percentile of each channel, never below IO = 240: glass scanned brighter than 240 is glass, not negative
stain, and a tinted light source is balanced out); pixels with OD >= beta in every
channel are tissue; the plane of the two largest eigenvectors of their OD covariance holds the H and E
vectors, found at the alpha / 100 - alpha percentiles of the angle in that plane; concentrations are
rescaled so their 99th percentile matches the reference's, and recomposed with the reference's stain
vectors. Concentrations are clamped at zero (a pixel holds no negative dye: without the clamp, a pale tile
whose 99th percentile is tiny had its negative values magnified into white with black specks). A tile with
fewer than MIN_TISSUE_FRACTION tissue pixels gets default H&E vectors (its own estimate would be noise) and is
rescaled like any other, as in the normalisation NCT-CRC-HE-100K went through. Bare glass (under
GLASS_FRACTION of its pixels absorbing in any channel) becomes a uniform tile like the flattest training tiles,
normalised (reference version 3): for PathMNIST, its background tiles, which are NCT's glass normalised.

Reinhard (Reinhard et al. 2001): per-channel mean and standard deviation in CIELAB matched to the
reference's (on tissue pixels; background stays white).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

METHODS = ("none", "macenko", "reinhard")
IO = 240.0  # transmitted light intensity (0..255 scale), as in the reference implementation
BETA = 0.15  # OD threshold: transparent pixels are not tissue
ALPHA = 1.0  # percentile of the angle distribution taken as the extreme stain vectors
MIN_TISSUE_FRACTION = 0.10  # tiles with less tissue than this are left unchanged
MAX_FIT_TILES = 2000
WHITE_QUANTILE = 0.999  # the brightest pixels of a tile are taken as its white level (Io) when above IO
# The Macenko maths a reference was fitted with, saved in it: a run is always normalised the way it was trained.
# 1 (references without "version"): fixed Io, signed concentrations. 2: each tile's white level, clamped at 0.
# 3: bare glass (GLASS_FRACTION) becomes uniform stain at the reference's glass_concentration (_flat_concentration).
MACENKO_VERSION = 3
GLASS_FRACTION = 0.01  # a tile where fewer pixels than this absorb (OD >= beta) in any channel is bare glass
FLAT_QUANTILE = 0.1  # glass is rendered like this fraction of the training tiles with the least spread in stain
_DEFAULT_HE = torch.tensor([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])  # Macenko's reference H&E

_CONSTANTS: dict[tuple, torch.Tensor] = {}


def constant(values: Any, like: torch.Tensor) -> torch.Tensor:
    """`values` (a tensor, nested lists or numbers) as a tensor of `like`'s dtype on its device, made once and then
    reused: per-batch code that built its constants from host data copied them to the GPU at every batch, and a
    copy from pageable memory makes the host wait for the device. Keyed by value, so a new reference gets its own."""
    if isinstance(values, torch.Tensor):
        key: tuple = ("t", id(values), like.device, like.dtype)  # module-level constants: alive for the process
    else:
        key = ("v", repr(values), like.device, like.dtype)
    out = _CONSTANTS.get(key)
    if out is None:
        if len(_CONSTANTS) > 256:  # many references in one process (tests, a long-lived app): start afresh
            _CONSTANTS.clear()
        out = _CONSTANTS[key] = torch.as_tensor(values, dtype=like.dtype).to(like.device)
    return out


# -- optical density and the Macenko estimate ----------------------------------------------------------
def _od(x01: torch.Tensor, white_level: bool = True) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, P) optical density against each tile's white level (see above), or
    against the fixed IO (`white_level=False`: version 1 references, and Reinhard's tissue mask)."""
    n = x01.shape[0]
    v = x01.reshape(n, 3, -1).float() * 255.0
    if not white_level:
        return -torch.log((v + 1.0) / IO)
    k = max(1, min(v.shape[2], round(WHITE_QUANTILE * v.shape[2])))
    white = torch.kthvalue(v, k, dim=2, keepdim=True).values
    return -torch.log((v + 1.0) / torch.clamp_min(white + 1.0, IO))  # exactly the classic OD when white < IO


def _tissue_mask(od: torch.Tensor) -> torch.Tensor:
    return (od >= BETA).all(dim=1)  # (N, P)


def _masked_quantile(values: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """Per row of (N, P) values, the q-quantile of the entries where mask is True (NaN where none)."""
    return torch.nanquantile(torch.where(mask, values, torch.full_like(values, float("nan"))), q, dim=1)


def _macenko_estimate(
    od: torch.Tensor, mask: torch.Tensor, clamp: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stain matrices (N, 3, 2) [H, E], every pixel's concentrations (N, 2, P) (clamped at zero with `clamp`) and
    their 99th percentiles (N, 2), for each row of OD (N, 3, P).

    Rows with too little tissue (under MIN_TISSUE_FRACTION of their pixels) get the default H&E vectors:
    the angle percentiles of a few pixels are noise."""
    w = mask.to(od.dtype).unsqueeze(1)  # (N, 1, P)
    count = w.sum(-1, keepdim=True).clamp_min(2.0)
    mean = (od * w).sum(-1, keepdim=True) / count
    centred = (od - mean) * w
    cov = centred @ centred.transpose(1, 2) / (count - 1.0)  # (N, 3, 3)
    _, vecs = torch.linalg.eigh(cov.double() + 1e-9 * torch.eye(3, dtype=torch.float64, device=od.device))
    vecs = vecs.to(od.dtype)
    top, second = vecs[:, :, 2], vecs[:, :, 1]
    top = top * torch.where(top.sum(1, keepdim=True) < 0, -1.0, 1.0)  # OD is positive: so is its main axis
    basis = torch.stack([top, second], dim=2)  # (N, 3, 2)
    proj = basis.transpose(1, 2) @ od  # (N, 2, P)
    phi = torch.atan2(proj[:, 1], proj[:, 0])  # angles near 0, no wrap-around
    lo = _masked_quantile(phi, mask, ALPHA / 100.0)
    hi = _masked_quantile(phi, mask, 1.0 - ALPHA / 100.0)
    v_lo = (basis @ torch.stack([torch.cos(lo), torch.sin(lo)], 1).unsqueeze(-1)).squeeze(-1)
    v_hi = (basis @ torch.stack([torch.cos(hi), torch.sin(hi)], 1).unsqueeze(-1)).squeeze(-1)
    h_first = (v_lo[:, 0] > v_hi[:, 0]).unsqueeze(1)  # haematoxylin absorbs more red light
    he = torch.stack([torch.where(h_first, v_lo, v_hi), torch.where(h_first, v_hi, v_lo)], dim=2)
    he = he / he.norm(dim=1, keepdim=True).clamp_min(1e-8)
    bad = ~torch.isfinite(he).flatten(1).all(1) | (mask.float().mean(1) < MIN_TISSUE_FRACTION)
    he = torch.where(bad.view(-1, 1, 1), constant(_DEFAULT_HE, he), he)
    conc = torch.linalg.pinv(he) @ od  # (N, 2, P), every pixel
    if clamp:
        conc = conc.clamp_min(0.0)
    max_c = torch.quantile(conc, 0.99, dim=2).clamp_min(1e-6)
    return he, conc, max_c


def _macenko(x01: torch.Tensor, ref: dict[str, Any]) -> torch.Tensor:
    """Every tile's concentrations rescaled to the reference's 99th percentile and recomposed with the
    reference's stain vectors, as in the Macenko normalisation NCT-CRC-HE-100K (hence PathMNIST) went through:
    an almost empty tile comes out as the same uniform stain as the background tiles of those sets."""
    n, _, h, w = x01.shape
    version = int(ref.get("version", 1))
    od = _od(x01, white_level=version >= 2)
    _, conc, max_c = _macenko_estimate(od, _tissue_mask(od), clamp=version >= 2)
    ref_he = constant(ref["stain_matrix"], od)  # (3, 2)
    ref_max = constant(ref["max_concentration"], od)  # (2,)
    conc = conc * (ref_max / max_c).unsqueeze(-1)
    if version >= 3:
        # Bare glass has no stain to measure: rescaling its faint texture magnifies dust and uneven light into a
        # mottled pattern. It becomes a uniform tile like the flattest training tiles (normalised): what NCT's
        # normalisation made of its glass, PathMNIST's background tiles, when the training set is PathMNIST.
        glass = (od >= BETA).any(dim=1).to(od.dtype).mean(1) < GLASS_FRACTION  # (N,)
        flat = constant(ref["glass_concentration"], od).view(1, 2, 1)
        conc = torch.where(glass.view(n, 1, 1), flat.expand_as(conc), conc)
    out = IO * torch.exp(-(ref_he @ conc))  # (N, 3, P) on the 0..255 scale
    out = ((out - 1.0) / 255.0).clamp(0.0, 1.0).reshape(n, 3, h, w)
    usable = torch.isfinite(out).flatten(1).all(1)
    return torch.where(usable.view(n, 1, 1, 1), out.to(x01.dtype), x01)


def _flat_concentration(
    od: torch.Tensor, conc: torch.Tensor, max_c: torch.Tensor, ref_max: torch.Tensor
) -> torch.Tensor:
    """(2,) H and E concentrations of a typical pixel of the flattest FLAT_QUANTILE of the tiles (least
    spread in total optical density), after rescaling to `ref_max`: how a uniform tile looks normalised.
    `conc` and `max_c`: the tiles' clamped concentrations and their 99th percentiles (_macenko_estimate)."""
    conc = conc * (ref_max / max_c).unsqueeze(-1)  # (N, 2, P)
    total = od.sum(1)  # (N, P)
    spread = total.std(1) / total.mean(1).clamp_min(1e-6)
    flattest = spread <= torch.quantile(spread, FLAT_QUANTILE)
    return conc[flattest].median(dim=2).values.median(dim=0).values


# -- CIELAB for Reinhard --------------------------------------------------------------------------------
_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


def rgb_to_lab(x01: torch.Tensor) -> torch.Tensor:
    """sRGB (N, 3, H, W) in [0, 1] -> CIELAB (D65), as skimage.color.rgb2lab."""
    lin = torch.where(x01 > 0.04045, ((x01 + 0.055) / 1.055) ** 2.4, x01 / 12.92)
    xyz = torch.einsum("ij,njhw->nihw", _RGB_TO_XYZ.to(x01), lin) / _WHITE.to(x01).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16 / 116) / 7.787) * _WHITE.to(lab).view(1, 3, 1, 1)
    lin = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB_TO_XYZ).to(lab), xyz).clamp_min(0.0)
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin).clamp(0, 1)


def _lab_stats(lab: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = mask.to(lab.dtype).unsqueeze(1)  # (N, 1, P)
    flat = lab.flatten(2)
    count = w.sum(-1).clamp_min(1.0)
    mean = (flat * w).sum(-1) / count
    std = (((flat - mean.unsqueeze(-1)) ** 2 * w).sum(-1) / count).sqrt()
    return mean, std  # (N, 3) each


def _reinhard(x01: torch.Tensor, ref: dict[str, Any]) -> torch.Tensor:
    n = x01.shape[0]
    mask = _tissue_mask(_od(x01, white_level=False))
    usable = mask.float().mean(1) >= MIN_TISSUE_FRACTION  # no early exit when none is: that would wait for the GPU
    lab = rgb_to_lab(x01.float())
    mean, std = _lab_stats(lab, mask)
    ref_mean = constant(ref["lab_mean"], lab)
    ref_std = constant(ref["lab_std"], lab)
    mapped = (lab - mean.view(n, 3, 1, 1)) / std.clamp_min(1e-3).view(n, 3, 1, 1) * ref_std.view(
        1, 3, 1, 1
    ) + ref_mean.view(1, 3, 1, 1)
    tissue = mask.view(n, 1, *x01.shape[2:])
    out = torch.where(tissue, lab_to_rgb(mapped), x01.float())  # background pixels stay as they are
    return torch.where(usable.view(n, 1, 1, 1), out.to(x01.dtype), x01)


# -- public API ----------------------------------------------------------------------------------------
def fit_reference(method: str, tiles_uint8: np.ndarray, seed: int = 0) -> dict[str, Any] | None:
    """The stain reference of a set of uint8 RGB tiles (N, H, W, 3): pixels of up to MAX_FIT_TILES tiles pooled.

    Returns None for method "none"; raises ValueError when the tiles hold too little tissue to fit."""
    if method == "none":
        return None
    if method not in METHODS:
        raise ValueError(f"stain normalisation must be one of {', '.join(METHODS)}, got {method!r}")
    tiles = np.asarray(tiles_uint8)
    if tiles.ndim != 4 or tiles.shape[3] != 3:
        raise ValueError(
            "stain normalisation needs RGB tiles (H&E); this dataset has "
            f"{tiles.shape[3] if tiles.ndim == 4 else 1} channel(s)"
        )
    if len(tiles) > MAX_FIT_TILES:
        tiles = tiles[np.sort(np.random.default_rng(seed).choice(len(tiles), MAX_FIT_TILES, replace=False))]
    x01 = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float() / 255.0
    od = _od(x01, white_level=method == "macenko")
    mask = _tissue_mask(od)
    usable = mask.float().mean(1) >= MIN_TISSUE_FRACTION
    if int(usable.sum()) < 1:
        raise ValueError("too little stained tissue in the training tiles to fit a stain reference")
    # The median of per-tile estimates: the reference is a typical training tile, so normalising a training
    # tile (per tile, like any input) changes it little.
    if method == "macenko":
        tiles_he, tiles_conc, tiles_max = _macenko_estimate(od[usable], mask[usable])
        he = tiles_he.median(dim=0).values
        he = he / he.norm(dim=0, keepdim=True)
        ref_max = tiles_max.median(dim=0).values
        return {
            "method": "macenko",
            "version": MACENKO_VERSION,
            "stain_matrix": he.tolist(),
            "max_concentration": ref_max.tolist(),
            "glass_concentration": _flat_concentration(od[usable], tiles_conc, tiles_max, ref_max).tolist(),
            "fitted_on_tiles": int(usable.sum()),
        }
    mean, std = _lab_stats(rgb_to_lab(x01[usable]), mask[usable])
    return {
        "method": "reinhard",
        "lab_mean": mean.median(dim=0).values.tolist(),
        "lab_std": std.median(dim=0).values.tolist(),
        "fitted_on_tiles": int(usable.sum()),
    }


def normalize_batch(x01: torch.Tensor, ref: dict[str, Any] | None) -> torch.Tensor:
    """Stain-normalise a float (N, 3, H, W) batch in [0, 1] to `ref` (from fit_reference); None: unchanged."""
    if not ref or ref.get("method", "none") == "none" or x01.shape[1] != 3 or x01.shape[0] == 0:
        return x01
    if ref["method"] == "macenko":
        return _macenko(x01, ref)
    if ref["method"] == "reinhard":
        return _reinhard(x01, ref)
    raise ValueError(f"unknown stain normalisation {ref['method']!r}")


def normalize_uint8(tiles_uint8: np.ndarray, ref: dict[str, Any] | None) -> np.ndarray:
    """The same on uint8 NHWC arrays (for display: 'as the model sees it')."""
    if not ref or ref.get("method", "none") == "none":
        return tiles_uint8
    x = torch.from_numpy(np.ascontiguousarray(tiles_uint8)).permute(0, 3, 1, 2).float() / 255.0
    out = normalize_batch(x, ref)
    return (out * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# -- stain augmentation ---------------------------------------------------------------------------------
# Ruifrok & Johnston's H&E-DAB stain vectors, as skimage.color.rgb_from_hed.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_RGB_FROM_HED[2] = torch.linalg.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_LOG_ADJUST = float(np.log(1e-6))


def hed_jitter(x01: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Per-tile random scale (1 +- sigma) and shift (+- sigma) of each HED channel (Tellez et al. 2018),
    in skimage's rgb2hed units; a batch of float (N, 3, H, W) in [0, 1] in and out."""
    if sigma <= 0 or x01.shape[1] != 3:
        return x01
    n, dev = x01.shape[0], x01.device
    hed = torch.einsum("nihw,ij->njhw", torch.log(x01.clamp_min(1e-6)) / _LOG_ADJUST, constant(_HED_FROM_RGB, x01))
    u = torch.rand((2, n, 3), generator=gen, device=gen.device).to(dev, x01.dtype)
    scale = (1.0 + (2 * u[0] - 1) * sigma).view(n, 3, 1, 1)
    shift = ((2 * u[1] - 1) * sigma).view(n, 3, 1, 1)
    hed = hed * scale + shift
    rgb = torch.exp(torch.einsum("njhw,ji->nihw", hed, constant(_RGB_FROM_HED, x01)) * _LOG_ADJUST)
    return rgb.clamp(0.0, 1.0)
