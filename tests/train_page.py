"""The Train page in AppTest. Its sections (option groups, LR finder, study) draw their widgets only while open
(pages/ui/train_form.py): a test that reads or sets a widget inside one opens them first."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from pages.ui.train_form import SECTIONS, section_key

TRAIN_PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "2_Train.py")


def train_page(timeout: float = 60, sections: bool = True) -> AppTest:
    """The Train page, not yet run, with every section open (`sections`), as a user who opened them all."""
    at = AppTest.from_file(TRAIN_PAGE, default_timeout=timeout)
    for name in SECTIONS if sections else ():
        at.session_state[section_key(name)] = True
    return at
