"""The app's one page list: file, sidebar title, icon and URL path of every page, written once.

app.py builds the sidebar (st.navigation) from it, and every page takes its heading and browser-tab title from
it (page_setup(__file__)). To add a page: put its file in pages/ and add one PageSpec here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PageSpec:
    file: str  # relative to the repository root (app.py's folder)
    title: str  # the sidebar label and the browser tab title
    icon: str
    url_path: str  # /<url_path> in the browser; "" for the home page (the site root)
    heading: str = ""  # the page's own st.title when it differs from the sidebar label

    @property
    def page_heading(self) -> str:
        return self.heading or self.title


PAGES: tuple[PageSpec, ...] = (
    PageSpec("pages/0_Home.py", "Home", "🔬", "", heading="Histo Explorer"),
    PageSpec("pages/1_Datasets.py", "Datasets", "🗂️", "Datasets"),
    PageSpec("pages/2_Train.py", "Train", "🏋️", "Train"),
    PageSpec("pages/3_Runs.py", "Runs", "📈", "Runs"),
    PageSpec("pages/4_Compare.py", "Compare", "⚖️", "Compare", heading="Compare runs"),
    PageSpec("pages/5_Classify.py", "Classify", "🔎", "Classify"),
    PageSpec("pages/6_Review.py", "Review", "🧐", "Review"),
    PageSpec("pages/7_Feature_map.py", "Feature map", "🗺️", "Feature_map"),
    PageSpec("pages/8_Slides.py", "Slides", "🧫", "Slides"),
    PageSpec("pages/9_Studies.py", "Studies", "🧪", "Studies", heading="Noise studies"),
    PageSpec("pages/10_Curation.py", "Curation", "🏷️", "Curation", heading="Label curation"),
)


def page_spec(page_file: str) -> PageSpec:
    """The entry of the page whose file is `page_file` (a page passes its own __file__)."""
    name = Path(page_file).name
    for spec in PAGES:
        if Path(spec.file).name == name:
            return spec
    raise KeyError(f"{name} is not in the page list (pages/ui/navigation.py): add a PageSpec for it")


# What a page's first run imports beyond its own module: Streamlit's emoji table (1-2 s of regex compiling on a busy
# machine, at the first page icon of the server) and its DataFrame conversion, first; the training package (the
# Train page's defaults), the export module (the model menus), the similar-tiles index and plotly's JSON writer
# (the first classification), after the heavy imports they need.
STREAMLIT_FIRST_USE = ("streamlit.emojis", "pyarrow.pandas_compat")
PAGES_LAZY = ("histo_core.training", "histo_core.export", "histo_core.similar", "plotly.io")


def page_modules() -> tuple[str, ...]:
    """Every page as an importable module ("pages.3_Runs"). Importing one runs its imports, not its main(): a page
    runs main() only as __main__, which is how Streamlit runs it."""
    return tuple(f"pages.{Path(spec.file).stem}" for spec in PAGES)


def app_navigation_only() -> bool:
    """Switch off, for this server process, Streamlit's old pages-folder mode, in which it runs a page opened before
    any session has run app.py (a shared link, the first visit after the server starts) without app.py's
    navigation; True when it was on. serve.py calls it at start, so no visit meets the mode; `streamlit run
    app.py` meets it once and the page reruns (pages.ui.common.use_app_navigation). A private Streamlit class: a
    release without it keeps its old sidebar for such a link, nothing worse."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return False
    was_on = bool(getattr(PagesManager, "uses_pages_directory", None))
    PagesManager.uses_pages_directory = False
    return was_on


def start_warmup() -> None:
    """The server's background warm-up (histo_core.warmup) with the pages' modules too, so the first visit of any
    page, opened from the sidebar or by a link, waits for no import; once per process (serve.py, app.py)."""
    from histo_core import warmup

    warmup.start((*STREAMLIT_FIRST_USE, *warmup.MODULES, *PAGES_LAZY, *page_modules()))
