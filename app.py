"""Histo Explorer: the app shell. `streamlit run app.py`.

The sidebar lists the pages of pages/ui/navigation.py (the one page list) and runs the chosen one; the home page
is pages/0_Home.py. Each page file also runs on its own (`streamlit run pages/3_Runs.py`, AppTest).
"""

from __future__ import annotations

import streamlit as st

from histo_core.paths import confine_to_data_roots
from histo_core.runtime import configure_process
from pages.ui.navigation import PAGES, start_warmup


def main() -> None:
    configure_process()  # threads and OpenMP wait policy before the pages load torch (histo_core/runtime.py)
    confine_to_data_roots()  # a web user's datasets, and every process started for one, stay inside the data roots
    start_warmup()  # once per server process: heavy imports, the pages' modules, the default model, in the background
    st.navigation(
        [
            st.Page(
                spec.file, title=spec.title, icon=spec.icon, url_path=spec.url_path or None, default=not spec.url_path
            )
            for spec in PAGES
        ]
    ).run()


if __name__ == "__main__":  # `streamlit run app.py` runs it as __main__
    main()
