"""Small Streamlit helpers every page uses: page setup and turning user errors into messages."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import streamlit as st

from histo_core import paths
from histo_core.errors import HistoError
from pages.ui.formats import MISSING, TABLE_PERCENT
from pages.ui.navigation import app_navigation_only, page_spec

# What makes Markdown act: emphasis, code, links and images (they need `[`), HTML and autolinks (`<`), headings,
# LaTeX, strikethrough, tables, escapes; and `://`, GFM's bare-URL autolink. Other punctuation stays as typed.
_MARKDOWN_SYNTAX = re.compile(r"([\\`*_\[\]<>#$~|])|:(?=//)")


def plain(text: object) -> str:
    """`text` made safe to place inside Streamlit Markdown (markdown, caption, alerts, labels): the characters
    Markdown acts on are backslash-escaped and line breaks become spaces, so a run name, class name, file name,
    dataset title or a message quoting them shows as typed, never as an image, a link, HTML or markup (user
    text is data)."""
    return _MARKDOWN_SYNTAX.sub(lambda m: "\\" + m.group(0), " ".join(str(text).splitlines()))


def show_table(
    data: Any,
    percent: Sequence[str] = (),
    widths: Mapping[str, int | None] | None = None,
    headers: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    """st.dataframe for every table of the app (hide_index and width="stretch" unless given): a missing value
    shows as "-", never "None" (Streamlit's own placeholder for an empty cell); the `percent` columns (accuracies
    and other shares, 0-1) as percentages, like every accuracy of the app. `widths`: the columns shown, in that
    order, each of a set width in px (None: as wide as it needs), so that all fit beside the sidebar in a 1024 px
    window (a long value is cut inside its cell, not a column off the edge; the data keeps the others, e.g. for
    its CSV); names not in the data are skipped. `headers`: a column's header when it is not its name."""
    config: dict[str, Any] = {}
    for c in dict.fromkeys([*percent, *(widths or {}), *(headers or {})]):
        label, width = (headers or {}).get(c), (widths or {}).get(c)
        config[c] = percent_column(label, width=width) if c in percent else st.column_config.Column(label, width=width)
    if config:
        kwargs["column_config"] = config | dict(kwargs.get("column_config") or {})
    if widths is not None:
        kwargs.setdefault("column_order", [c for c in widths if c in data.columns])
    kwargs.setdefault("hide_index", True)
    kwargs.setdefault("width", "stretch")
    return st.dataframe(data, **kwargs, **_TABLE_PLACEHOLDER)


def _if_streamlit_takes(function: Callable, **kwargs: Any) -> dict[str, Any]:
    """`kwargs` when this Streamlit's `function` has those parameters, else {} (requirements allow any 1.x; an
    older release keeps its own look)."""
    import inspect

    return kwargs if set(kwargs) <= set(inspect.signature(function).parameters) else {}


_TABLE_PLACEHOLDER = _if_streamlit_takes(st.dataframe, placeholder=MISSING)
# Pass to every st.checkbox and st.toggle (`st.checkbox(label, **WRAP)`): placed in a column, Streamlit cuts a long
# label off with "…"; this lets it wrap onto a second line instead.
WRAP = _if_streamlit_takes(st.checkbox, wrap=True)


def percent_column(label: str | None = None, help: str | None = None, **kwargs: Any) -> Any:
    """The column config of a column of accuracies or other shares (values 0-1), shown as percentages like
    every accuracy of the app (pages.ui.formats.pct in text); `kwargs`: NumberColumn's others (width...)."""
    return st.column_config.NumberColumn(label, format=TABLE_PERCENT, help=help, **kwargs)


def listed_runs() -> list:
    """runs.list_runs() for a page: a runs directory that cannot be read is one message, and the page stops."""
    from histo_core.runs import list_runs

    try:
        return list_runs()
    except HistoError as exc:
        st.error(plain(exc))
        st.stop()
    return []


def page_setup(page_file: str) -> None:
    """Tab title, icon, sign-in and heading for the page whose file is `page_file` (pass `__file__`), all read
    from the one page list (pages/ui/navigation.py)."""
    paths.confine_to_data_roots()  # this process serves web users: datasets open only inside the data roots
    use_app_navigation()
    spec = page_spec(page_file)
    tab = spec.page_heading if spec.page_heading == "Histo Explorer" else f"{spec.title} · Histo Explorer"
    st.set_page_config(page_title=tab, page_icon=spec.icon, layout="wide")
    require_sign_in()
    st.title(spec.page_heading)


def use_app_navigation() -> None:
    """A link to a page opened before any session has run app.py (a shared link, the first visit after `streamlit
    run app.py` starts): Streamlit, seeing a pages/ folder and no st.navigation call yet, runs the page in its old
    pages-folder mode (a sidebar with an extra "app" entry and no icons, app.py's start-up skipped) until `/` is
    opened. Switch that mode off and run again: app.py then runs with its navigation and opens this same page
    (the page hash is its URL path in both modes). serve.py switches it off before the first visit."""
    if app_navigation_only():
        st.rerun()


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
        st.caption(f"Signed in as {plain(signed_in_user())}")
        if st.button("Sign out", key="_histo_sign_out"):
            st.logout()


@contextmanager
def user_errors(prefix: str = "") -> Iterator[None]:
    """Show a HistoError as st.error (one clear line) instead of a stack trace; anything else propagates."""
    try:
        yield
    except HistoError as exc:
        st.error(plain(f"{prefix}{exc}"))


def synthetic_badge(info) -> None:
    """Every view of the synthetic demo says so."""
    if getattr(info, "synthetic", False) or (isinstance(info, dict) and info.get("synthetic")):
        st.warning("SYNTHETIC DEMO DATA: procedurally generated tiles, not real tissue.", icon="🧪")


# -- shareable URLs: ?run=<id>, ?dataset=<spec> -----------------------------------------------------------
# One rule on every page: a `?param=` in the URL selects its view when it is news to the widget (a fresh visit, a
# reload, a followed link), and the page writes the user's selection back into the URL. A value the page wrote
# itself never overrides the user's next choice: in the browser, the rerun a widget change triggers still carries
# the URL of the previous run, and re-applying it would undo the user's first choice (issue 14).


def _url_mark(param: str, key: str) -> str:
    return f"_url_seen.{key}.{param}"


def url_news(param: str, key: str, many: bool = False) -> Any:
    """The `?param=` value (`many`: the list of its repeated values) when widget `key` should follow it: the
    widget has no value yet (a fresh visit, a reload, a link followed from another page) or the URL differs from
    what this page last applied or wrote (a link followed while on the page). None otherwise, so the user's own
    choice stands."""
    wanted: Any = st.query_params.get_all(param) if many else st.query_params.get(param)
    if not wanted:
        return None
    mark = _url_mark(param, key)
    if key in st.session_state and st.session_state.get(mark) == wanted:
        return None
    st.session_state[mark] = wanted
    return wanted


def url_selection(
    param: str,
    key: str,
    options: Sequence[str] | Mapping[str, Any],
    many: bool = False,
    canonical: Callable[[str], str] | None = None,
) -> None:
    """Call before the selectbox (`many`: multiselect) `key`: a `?param=` naming options selects them when it is
    news (`url_news`), and a selection no longer offered (a deleted run) is dropped. `options` maps URL values
    to the widget's option values where they differ (Classify names a model in the URL, its selectbox holds
    paths); `canonical` maps a URL value to the spelling the options use (dataset paths are listed resolved).
    A link naming something not offered says so, without echoing it, rather than showing another thing silently."""
    values = options if isinstance(options, Mapping) else {o: o for o in options}
    offered = list(values.values())
    news = url_news(param, key, many)
    wanted = [canonical(w) for w in news] if canonical and many and news else news
    if canonical and not many and news:
        wanted = canonical(news)
    if wanted and any(w not in values for w in (wanted if many else [wanted])):
        st.warning(
            f"The {param} this link names is not available here (deleted, not finished, or not one this app may "
            "open): choose one below.",
            icon="🔗",
        )
    if many and wanted and any(w in values for w in wanted):
        st.session_state[key] = [values[w] for w in wanted if w in values]
    elif not many and wanted in values:
        st.session_state[key] = values[wanted]
    if key not in st.session_state:
        return
    if many:
        st.session_state[key] = [v for v in st.session_state[key] if v in offered]
    elif st.session_state[key] not in offered:
        st.session_state.pop(key, None)


def url_selectbox(label: str, param: str, key: str, options: Sequence[str], **kwargs: Any) -> str:
    """A selectbox that a `?param=` link sets and the URL keeps (`url_selection` before it, `keep_in_url` after),
    on the first option when what it held is no longer offered; `kwargs`: the selectbox's others."""
    options = list(options)
    url_selection(param, key, options)
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]
    chosen = st.selectbox(label, options, key=key, **kwargs)
    keep_in_url(param, key, chosen)
    return chosen


def keep_in_url(param: str, key: str | Sequence[str], value: str | list[str] | None, drop: Sequence[str] = ()) -> None:
    """Call after the widget `key`: the URL names its selection (a list: the param repeated), and no longer the
    `drop` params, so a reload or a shared link shows the same view. Several keys: widgets that all follow
    `param` (Feature map's source radio follows ?run= and ?model=)."""
    keys = [key] if isinstance(key, str) else list(key)
    for other in drop:
        st.query_params.pop(other, None)
        for k in keys:
            st.session_state.pop(_url_mark(other, k), None)
    if value is None:
        return
    if isinstance(value, list) and not value:
        st.query_params.pop(param, None)  # nothing selected: nothing to share
    else:
        st.query_params[param] = value
    for k in keys:
        st.session_state[_url_mark(param, k)] = list(value) if isinstance(value, list) else value


def lazy_tabs(labels: Sequence[str], key: str, keep: Mapping[str, str] | None = None) -> tuple[str, Any]:
    """Tabs of which only the open one is built: returns its label and its container; the others stay empty until
    chosen (a click reruns the page). The open tab is bound to `?key=` in the URL, so a reload or a shared link
    opens the same one. For each closed tab in `keep` (label -> the prefix of its widgets' keys; buttons
    excluded) the widgets' values are kept for when it opens again (`keep_widget_values`)."""
    tabs = st.tabs(list(labels), key=key, bind="query-params")
    opened = next((i for i, tab in enumerate(tabs) if tab.open), 0)
    for label, prefix in (keep or {}).items():
        if label != labels[opened]:
            keep_widget_values(k for k in list(st.session_state) if isinstance(k, str) and k.startswith(prefix))
    return labels[opened], tabs[opened]


def lazy_expander(label: str, key: str, keep: Iterable[str] = (), expanded: bool = False) -> tuple[bool, Any]:
    """An expander whose content is built only while it is open: (open, container); opening or closing it reruns
    the page. A page draws each widget in a new browser tab after fetching its code, so the widgets of closed
    sections cost a page's first view time for nothing (issue 24). `keep`: the keys of the widgets inside (buttons
    excluded), whose values are kept while it is closed (`keep_widget_values`)."""
    box = st.expander(label, expanded=expanded, key=key, on_change="rerun")
    if not box.open:
        keep_widget_values(keep)
    return bool(box.open), box


def keep_widget_values(keys: Iterable[str]) -> None:
    """Streamlit forgets the value of a widget that a run does not draw; writing it back into the session state
    keeps it for the run that draws the widget again (a closed tab or section). Not for buttons."""
    for k in keys:
        if k in st.session_state:
            st.session_state[k] = st.session_state[k]


def run_choice_label(run_id: str) -> str:
    """A run in a run picker (Review, Feature map): its name when it has one, its id and its architecture; short
    enough to show whole beside the sidebar at 1024 px (the dataset title made it run past the box's end), so
    the pages say the dataset under the picker (`run_trained_on`)."""
    from histo_core.runs import RunDir

    config = RunDir(paths.runs_dir() / run_id).config()
    return " · ".join(str(part) for part in (config.get("name"), run_id, config.get("arch", "?")) if part)


def run_trained_on(run) -> str:
    """The caption under a run picker: the dataset the run trained on, as plain text."""
    return plain(f"Trained on {run.dataset().get('title', '?')}")
