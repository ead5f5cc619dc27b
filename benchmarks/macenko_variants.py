"""Two changes to Macenko normalisation tried against the current version (v3), on the real tiles.

    python benchmarks/macenko_variants.py [--variants v3,range5,range10,flat8,flat15,pow0,pow50] [--seeds 0 1 2] [--json]

Why: at 28 px the Macenko models lose 2-3 of the 40 in-domain test tiles (pale mucus, a background tile with a
black fleck), while the per-tile rescale of concentrations is far from the identity even on tiles NCT already
normalised (benchmarks/RESULTS.md). Each variant replaces `histo_core.stain._macenko` for the duration of the
script (training tiles and every input alike, as `--stain-norm macenko` does), then trains the default recipe
on the 200 train+val tiles with `fit_arrays` and scores the groups of benchmarks/real_tiles.py:

  v3        the current maths (the control)
  rangeQ    concentrations rescaled only into the training tiles' range of 99th percentiles (the Q-th to the
            (100-Q)-th percentile of those tiles' own), not onto the reference's: a tile already in range keeps
            its intensity
  flatT     tiles whose total optical density varies little (std / mean under T / 100) keep their own
            concentrations under the reference's stain vectors (their per-tile estimate is noise); others as v3
  powP      the per-tile rescale (reference / tile 99th percentile) damped to its P/100-th power: pow0 changes
            the stain vectors only and keeps each tile's intensity, pow100 is v3

An experiment, not a shipped option; no variant beat v3 (RESULTS.md, "Why Macenko costs in-domain tiles").
About 35 s per variant and seed on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stain_recipes import score, seeded_config, setup  # noqa: E402


def variant(name: str, stain, train_max):
    """The `_macenko` replacement for a variant name (see the module doc)."""
    import torch

    v3 = stain._macenko

    def recompose(x01, od, conc, ref):
        n, _, h, w = x01.shape
        ref_he = torch.as_tensor(ref["stain_matrix"], dtype=od.dtype)
        out = stain.IO * torch.exp(-(ref_he @ conc))
        out = ((out - 1.0) / 255.0).clamp(0.0, 1.0).reshape(n, 3, h, w)
        return torch.where(torch.isfinite(out).flatten(1).all(1).view(n, 1, 1, 1), out.to(x01.dtype), x01)

    def glass(od):
        return (od >= stain.BETA).any(dim=1).to(od.dtype).mean(1) < stain.GLASS_FRACTION

    if name == "v3":
        return v3
    if name.startswith("range"):
        q = float(name[5:]) / 100
        lo, hi = torch.quantile(train_max, q, dim=0), torch.quantile(train_max, 1 - q, dim=0)

        def in_range(x01, ref):
            od = stain._od(x01)
            _, conc, max_c = stain._macenko_estimate(od, stain._tissue_mask(od))
            conc = conc * (torch.minimum(torch.maximum(max_c, lo), hi) / max_c).unsqueeze(-1)
            flat = torch.as_tensor(ref["glass_concentration"], dtype=od.dtype).view(1, 2, 1)
            conc = torch.where(glass(od).view(-1, 1, 1), flat.expand_as(conc), conc)
            return recompose(x01, od, conc, ref)

        return in_range
    if name.startswith("flat"):
        limit = float(name[4:]) / 100

        def flat_kept(x01, ref):
            od = stain._od(x01)
            total = od.sum(1)
            flat = (total.std(1) / total.mean(1).clamp_min(1e-6) < limit) & ~glass(od)
            ref_he = torch.as_tensor(ref["stain_matrix"], dtype=od.dtype)
            kept = recompose(x01, od, (torch.linalg.pinv(ref_he) @ od).clamp_min(0.0), ref)
            return torch.where(flat.view(-1, 1, 1, 1), kept, v3(x01, ref))

        return flat_kept
    if name.startswith("pow"):
        power = float(name[3:]) / 100

        def damped(x01, ref):
            od = stain._od(x01)
            _, conc, max_c = stain._macenko_estimate(od, stain._tissue_mask(od))
            ref_max = torch.as_tensor(ref["max_concentration"], dtype=od.dtype)
            conc = conc * ((ref_max / max_c) ** power).unsqueeze(-1)
            flat = torch.as_tensor(ref["glass_concentration"], dtype=od.dtype).view(1, 2, 1)
            conc = torch.where(glass(od).view(-1, 1, 1), flat.expand_as(conc), conc)
            return recompose(x01, od, conc, ref)

        return damped
    raise SystemExit(f"unknown variant {name!r}: v3, rangeQ, flatT or powP")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="v3,range5,range10,flat8,flat15")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    from histo_core import stain
    from histo_core.training import fit_arrays, predict_probs

    sets, (xtr, ytr), ref = setup()
    od = stain._od(torch.from_numpy(xtr).permute(0, 3, 1, 2).float() / 255.0)
    mask = stain._tissue_mask(od)
    usable = mask.float().mean(1) >= stain.MIN_TISSUE_FRACTION
    train_max = stain._macenko_estimate(od[usable], mask[usable])[2]
    current = stain._macenko
    rows = []
    try:
        for name in args.variants.split(","):
            stain._macenko = variant(name, stain, train_max) if name != "v3" else current
            normed = {k: stain.normalize_uint8(x, ref) for k, (x, _) in sets.items()}
            ntr = stain.normalize_uint8(xtr, ref)
            for seed in args.seeds:
                model, meta = fit_arrays(seeded_config(seed), ntr, ytr, classes=[str(i) for i in range(9)])
                probs = {k: predict_probs(model, meta, normed[k], tta=True) for k in sets}
                rows.append(score(name, seed, sets, probs))
    finally:
        stain._macenko = current
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
