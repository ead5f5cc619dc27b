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


# -- shareable URLs: ?run=<id>, ?dataset=<spec> -----------------------------------------------------------
def url_selection(param: str, key: str, options: list[str]) -> None:
    """Call before the selectbox `key`: a `?param=` naming one of `options` selects it (once per new URL value,
    so the user's own choice is not overridden), and a selection no longer offered (a deleted run) is dropped."""
    wanted = st.query_params.get(param)
    applied = f"_url_applied.{key}"
    if wanted in options and st.session_state.get(applied) != wanted:
        st.session_state[key] = wanted
    if st.session_state.get(key) not in options:
        st.session_state.pop(key, None)


def keep_in_url(param: str, key: str, value: str | None) -> None:
    """Call after the selectbox: the URL names the selection, so a reload or a shared link shows the same view."""
    if value is None:
        return
    st.query_params[param] = value
    st.session_state[f"_url_applied.{key}"] = value
