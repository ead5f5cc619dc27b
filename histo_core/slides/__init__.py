"""Whole slides: open a scanned slide with OpenSlide, find its tissue, cut it into tiles at the model's field of
view (in µm) and classify them in a bounded streaming pipeline; write a per-tile CSV, a QuPath GeoJSON and a
class-map PNG into an analysis folder under the runs directory.

    slide = open_slide("CMU-1.svs")                       # reader: checks, µm/px, levels, vendor
    folder = analyse_slide(loaded, slide, runs_root=None)  # analysis: tissue, grid, stream, outputs
"""

from collections.abc import Callable
from typing import Any

from histo_core.slides.analysis import SlideAnalysis, analyse_slide, analysis_dir, list_analyses
from histo_core.slides.reader import Slide, open_slide

__all__ = ["Slide", "SlideAnalysis", "analyse_slide", "analysis_dir", "list_analyses", "open_slide", "task_main"]


def task_main(params: dict[str, Any], progress: Callable[[float, str], None]) -> dict[str, Any]:
    """The `slide` process kind (histo_core.kinds): a whole-slide analysis, resumed from the analysis folder's
    partial results. Params: model, slide, mpp, device, runs_root, tissue_threshold, batch_size, tta, force, amp."""
    from histo_core.model_cache import load_model

    progress(0.0, "opening the model and the slide")
    loaded = load_model(params["model"], device=params.get("device") or "cpu")

    def report(p: dict[str, Any]) -> None:
        eta = f" · ETA {p['eta_s']:.0f} s" if p.get("eta_s") is not None else ""
        progress(
            p["done"] / max(1, p["total"]), f"{p['done']}/{p['total']} tiles · {p['tiles_per_s']:.0f} tiles/s{eta}"
        )

    with open_slide(params["slide"], mpp=params.get("mpp")) as slide:
        progress(0.0, "finding the tissue")
        return analyse_slide(
            loaded,
            slide,
            runs_root=params.get("runs_root"),
            tissue_threshold=float(params.get("tissue_threshold", 0.5)),
            batch_size=int(params.get("batch_size", 256)),
            tta=bool(params.get("tta", False)),
            force=bool(params.get("force", False)),
            amp=bool(params.get("amp", True)),
            progress=report,
        )
