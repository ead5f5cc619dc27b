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
