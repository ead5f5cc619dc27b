"""Whole slides: open a scanned slide with OpenSlide, find its tissue, cut it into tiles at the model's field of
view (in µm) and classify them in a bounded streaming pipeline; write a per-tile CSV, a QuPath GeoJSON and a
class-map PNG into an analysis folder under the runs directory.

    slide = open_slide("CMU-1.svs")                       # reader: checks, µm/px, levels, vendor
    folder = analyse_slide(loaded, slide, runs_root=None)  # analysis: tissue, grid, stream, outputs
"""

from histo_core.slides.analysis import SlideAnalysis, analyse_slide, analysis_dir, list_analyses
from histo_core.slides.reader import Slide, open_slide

__all__ = ["Slide", "SlideAnalysis", "analyse_slide", "analysis_dir", "list_analyses", "open_slide"]
