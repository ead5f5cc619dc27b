"""Start the app with its warm-up begun at server start: `python serve.py [streamlit options]`.

`streamlit run app.py` runs app.py (and so starts histo_core.warmup) only when the first browser session
connects, so the first pages race the warm-up. This starts the warm-up thread first, then Streamlit's server in
the same process (`streamlit run app.py` with the options given), so by the time a user opens a page the
imports (every page's modules among them), the default dataset and the default model are ready.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    from histo_core.runtime import configure_process

    configure_process()
    from pages.ui.navigation import app_navigation_only, start_warmup

    # first (it imports Streamlit in this thread, before the warm-up thread imports parts of it): a first visit to
    # any page runs app.py's navigation at once, not after a rerun
    app_navigation_only()
    start_warmup()  # the heavy imports, every page's modules, the default dataset and model, in the background
    from streamlit.web import cli as stcli

    sys.argv = ["streamlit", "run", str(ROOT / "app.py"), *argv]
    sys.exit(stcli.main())


if __name__ == "__main__":
    main(sys.argv[1:])
