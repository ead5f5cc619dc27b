"""Review: every mistake of a completed run (filter, sort, page, Grad-CAM), the most-confused pairs, examples
side by side, and the training labels the data itself suspects are wrong."""

from __future__ import annotations

import streamlit as st

from histo_core import paths
from pages.ui.common import listed_runs, page_setup
from pages.ui.review import choose, confused_pairs_section, label_errors_section, mistakes_section, reviewable_runs


def main() -> None:
    page_setup(__file__)
    reviewable = reviewable_runs(listed_runs())
    if not reviewable:
        st.info(
            f"No completed run with saved predictions in `{paths.runs_dir()}` yet. Train one on the Train page and "
            "come back when it has finished."
        )
        return
    reviewed = choose(reviewable)
    if reviewed is None:
        return
    mistakes_section(reviewed)
    confused_pairs_section(reviewed)
    label_errors_section(reviewed)


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (the warm-up) runs nothing
    main()
