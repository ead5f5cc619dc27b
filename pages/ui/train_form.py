"""The Train page's form: one widget per option of the one table of training options
(`histo_core.train_options`: label, help, group, choices, type, when it applies), with defaults from
`histo_core.training.default_config(dataset, device)`. Nothing about an option is written here.

Every widget is keyed `train.<field>` (augmentation: `train.augment.<field>`); an option that does not apply is
disabled, not hidden. The groups are sections built only while open (`lazy_expander`: a new tab draws every widget
after fetching its code, so closed sections cost the page's first view for nothing); a closed section keeps its
widgets' values in st.session_state. Defaults are written into st.session_state whenever the dataset or the
device changes, before the widgets are drawn. `FORM_FIELDS` + `OUTSIDE_FORM` cover every TrainConfig field
(tests/test_train_options.py).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from histo_core.config import ELSEWHERE, Option, TrainConfig, config_paths
from histo_core.train_options import GROUPS, OPTIONS, TABLE
from pages.ui.common import WRAP, lazy_expander

PREFIX = "train."
# drawn by this form, in the table's order; the rest (ELSEWHERE) are picked elsewhere on the page: the dataset
# picker (dataset, size, as_rgb, data_dir), the corrections picker, the signed-in user (started_by)
FORM_FIELDS = [o.path for o in TABLE if o.group != ELSEWHERE]
OUTSIDE_FORM = tuple(o.path for o in TABLE if o.group == ELSEWHERE)


def all_config_fields() -> set[str]:
    """Every TrainConfig field as the form names it (augmentation fields as augment.<name>)."""
    return set(config_paths())


def _get(config: TrainConfig, path: str) -> Any:
    obj = config
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def apply_defaults(defaults: TrainConfig) -> None:
    """Put `defaults` into the widgets' session state (call before the widgets are drawn)."""
    for path in FORM_FIELDS:
        if path == "device":
            continue  # the user's device choice produced these defaults; keep it
        opt = OPTIONS[path]
        value, kind = _get(defaults, path), opt.kind
        if opt.none_as_zero:
            value = float(value or 0.0)
        if kind is float and value is not None:
            value = float(value)  # number_input refuses an int value next to float steps
        st.session_state[PREFIX + path] = value


def _disabled(opt: Option) -> bool:
    """The option does not apply given the other widgets' values (the table's `applies`)."""
    return not opt.is_active(lambda path: st.session_state.get(PREFIX + path))


def field_widget(opt: Option) -> None:
    key = PREFIX + opt.path
    # the table's help is the CLI's too: on the page its --flags name the widgets ('Monitor', not --monitor)
    help_text = form_message(opt.help_text()) + (f"\n\n{opt.page_note}" if opt.page_note else "")
    common: dict[str, Any] = {"help": help_text, "disabled": _disabled(opt)}
    if opt.choices is not None:
        value = st.selectbox(opt.label, list(opt.choices()), key=key, format_func=opt.choice_label, **common)
        caption = opt.choice_caption(value) if value is not None else ""
        if caption:
            st.caption(caption)
        return
    kind = opt.kind
    if kind is bool:
        st.checkbox(opt.label, key=key, **WRAP, **common)
    elif kind is int:
        st.number_input(opt.label, key=key, **opt.widget, **common)
    elif kind is float:
        st.number_input(opt.label, key=key, **{"format": "%g", **opt.widget}, **common)
    else:
        st.text_input(opt.label, key=key, **common)


# every section of the Train page, built only while open (section_key): the option groups, then the page's own
SECTIONS = (*(g for g in GROUPS if g), "lr_find", "study")


def section_key(name: str) -> str:
    """The session-state key of a section of the Train page (a group of options, the LR finder, the study): True
    while it is open."""
    return f"train_section.{name}"


def render_fields(columns: int = 3) -> None:
    """The ungrouped fields first, then one section per group, built while open."""
    for group in GROUPS:
        options = [o for o in TABLE if o.group == group]
        if group:
            opened, container = lazy_expander(group, section_key(group), keep=[PREFIX + o.path for o in options])
        else:
            opened, container = True, st.container()
        if not opened:
            continue
        with container:
            cols = st.columns(columns)
            for i, opt in enumerate(options):
                with cols[i % columns]:
                    field_widget(opt)


def config_from_state(base: TrainConfig) -> TrainConfig:
    """`base` (dataset, size, as_rgb, data_dir and the defaults) with every form value applied. Numbers typed
    in the widgets are coerced to the field's type; validation is left to TrainConfig.validate()."""
    d = base.to_dict()
    for path in FORM_FIELDS:
        key = PREFIX + path
        if key not in st.session_state:
            continue
        value, opt = st.session_state[key], OPTIONS[path]
        if opt.none_as_zero:
            value = float(value) if value else None
        kind = opt.kind
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if path.startswith("augment."):
            d["augment"][path.split(".", 1)[1]] = value
        else:
            d[path] = value
    d["name"] = (d.get("name") or "").strip()
    return TrainConfig.from_dict(d)


def form_message(text: str) -> str:
    """A config error as the form says it: CLI flags (`--noise`, `--data-dir`) become the widgets' labels."""
    import re

    labels = {opt.flag[2:]: opt.label for opt in TABLE}

    def label(m: re.Match) -> str:
        name = labels.get(m.group(1))
        return f"'{name}'" if name else m.group(1).replace("-", " ")

    return re.sub(r"--([a-z][a-z0-9-]*)", label, text)
