"""Small Streamlit helpers every page uses: page setup and turning user errors into messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from histo_core.errors import HistoError
from pages.ui.navigation import page_spec


def page_setup(page_file: str) -> None:
    """Tab title, icon, sign-in and heading for the page whose file is `page_file` (pass `__file__`), all read
    from the one page list (pages/ui/navigation.py)."""
    spec = page_spec(page_file)
    tab = spec.page_heading if spec.page_heading == "Histo Explorer" else f"{spec.title} · Histo Explorer"
    st.set_page_config(page_title=tab, page_icon=spec.icon, layout="wide")
    require_sign_in()
    st.title(spec.page_heading)


def sign_in_required() -> bool:
    """True when .streamlit/secrets.toml has an [auth] section (Streamlit's built-in OIDC sign-in)."""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file, or one that does not parse: no sign-in configured
        return False


def signed_in_user() -> str | None:
    """The signed-in user's e-mail (else name, else subject) when sign-in is required; None otherwise."""
    if not sign_in_required() or not st.user.is_logged_in:
        return None
    for claim in ("email", "name", "sub"):
        value = st.user.get(claim)
        if value:
            return str(value)
    return "signed-in user"


def require_sign_in() -> None:
    """With [auth] configured, every page shows only a sign-in button until the user has signed in
    (st.login, OIDC); afterwards the sidebar names the user and offers sign-out. Without it: nothing."""
    if not sign_in_required():
        return
    if not st.user.is_logged_in:
        st.title("Histo Explorer")
        st.info("This Histo Explorer requires sign-in.")
        if st.button("Sign in", type="primary", key="_histo_sign_in"):
            try:
                st.login()
            except Exception as exc:  # noqa: BLE001 - e.g. Authlib missing or [auth] incomplete: say so, one line
                st.error(
                    f"Sign-in is configured in .streamlit/secrets.toml but cannot start: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
                    "(install Authlib>=1.3.2 and check the [auth] section)"
                )
        st.stop()
    with st.sidebar:
        st.caption(f"Signed in as {signed_in_user()}")
        if st.button("Sign out", key="_histo_sign_out"):
            st.logout()


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
