"""Small Streamlit helpers every page uses: page setup and turning user errors into messages."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import streamlit as st

from histo_core.errors import HistoError


def page_setup(title: str, icon: str = "🔬") -> None:
    st.set_page_config(page_title=f"{title} · Histo Explorer", page_icon=icon, layout="wide")
    st.title(title)


@contextmanager
def user_errors(prefix: str = "") -> Iterator[None]:
    """Show a HistoError as st.error (one clear line) instead of a stack trace; anything else propagates."""
    try:
        yield
    except HistoError as exc:
        st.error(f"{prefix}{exc}")


def synthetic_badge(info) -> None:
    """Every view of the synthetic demo says so."""
    if getattr(info, "synthetic", False) or (isinstance(info, dict) and info.get("synthetic")):
        st.warning("SYNTHETIC DEMO DATA: procedurally generated tiles, not real tissue.", icon="🧪")
