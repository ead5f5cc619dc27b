"""Marking tiles for label correction (Review page) and the marks of a dataset (Curation page, Train page)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from histo_core.config import TrainConfig
from histo_core.corrections import Corrections, add_marks, corrections_path, dataset_identity, load_corrections
from histo_core.errors import HistoError
from pages.ui.common import plain, signed_in_user, user_errors

ACTIONS = {
    "suggested": "relabel to the suggested class",
    "class": "relabel to a class I choose",
    "exclude": "exclude from training",
    "confirm": "confirm the label",
}


@dataclass
class Candidate:
    tile: str  # "train:12"
    given: int
    suggested: int
    note: str = ""  # e.g. "p 0.91"


def dataset_corrections(identity: dict) -> Corrections | None:
    """The dataset's corrections file, or None when nobody has marked a tile yet."""
    path = corrections_path(identity)
    if not path.exists():
        return None
    try:
        return load_corrections(path)
    except HistoError as exc:
        st.error(plain(exc))
        return None


def mark_panel(key: str, identity: dict, classes: list[str], candidates: list[Candidate], run_id: str, source: str):
    """Pick tiles among `candidates` and mark them; the top-k shortcut accepts the first k as suggested."""
    if not candidates:
        return
    path = corrections_path(identity)
    existing = dataset_corrections(identity)
    marked = existing.marks if existing else {}
    by_tile = {c.tile: c for c in candidates}

    def label(tile: str) -> str:
        c = by_tile[tile]
        mark = marked.get(tile)
        return (
            f"{tile} · given {classes[c.given]} · looks like {classes[c.suggested]}"
            + (f" · {c.note}" if c.note else "")
            + (f" · marked: {mark['action']}" if mark else "")
        )

    c1, c2, c3 = st.columns([3, 2, 2])
    chosen = c1.multiselect("Tiles to mark", list(by_tile), key=f"{key}_tiles", format_func=label)
    action = c2.radio("Mark as", list(ACTIONS), key=f"{key}_action", format_func=ACTIONS.get)
    target = c3.selectbox(
        "Class", range(len(classes)), key=f"{key}_class", format_func=lambda i: classes[i], disabled=action != "class"
    )
    k = c3.number_input("k", 1, len(candidates), min(10, len(candidates)), key=f"{key}_k")
    b1, b2 = st.columns(2)
    if b1.button("Save the marks", key=f"{key}_save", disabled=not chosen):
        save(path, identity, [by_tile[t] for t in chosen], action, int(target), run_id, source)
    if b2.button(f"Accept the top {int(k)}: relabel to the suggested class", key=f"{key}_topk"):
        save(path, identity, candidates[: int(k)], "suggested", 0, run_id, source)
    st.caption(
        f"Marks are saved in `{plain(path)}`, beside the data, never in it; they change training labels only, "
        "and only in runs trained with them (Train page, or `--corrections`). List and undo them on the Curation page."
    )


def save(path: Path, identity: dict, chosen: list[Candidate], action: str, target: int, run_id: str, source: str):
    marks = []
    for c in chosen:
        m: dict = {"tile": c.tile, "given": c.given}
        if action in ("suggested", "class"):
            m.update(action="relabel", label=c.suggested if action == "suggested" else target)
        else:
            m["action"] = action
        marks.append(m)
    with user_errors():
        corr = add_marks(
            path, identity, marks, run=run_id, source=source + (f" by {signed_in_user()}" if signed_in_user() else "")
        )
        st.success(f"Saved {len(marks)} mark(s); the dataset now has {len(corr.marks)}.")


# The columns of the marks table on the Curation page, each of a set width so that all fit beside the sidebar in a
# 1024 px window (the tile names its split and row; the CSV has those and the run each mark came from).
MARK_COLUMNS = {"tile": 70, "action": 65, "given": 90, "label": 90, "source": 95, "marked": 125}
MARK_HEADERS = {"label": "new label"}


def marks_table(corr: Corrections) -> pd.DataFrame:
    """The marks as rows (Corrections.rows), with when each was made to the minute ("marked")."""
    table = pd.DataFrame(corr.rows())
    if len(table):
        table["marked"] = table["marked_at"].astype(str).str.slice(0, 16)
    return table


def corrections_choice(base: TrainConfig, ds) -> TrainConfig:
    """The Train page's picker: `base` with the dataset's corrections when it has marks and the user ticks them."""
    if ds is None:
        return base
    corr = dataset_corrections(dataset_identity(ds))
    if corr is None or not corr.marks or corr.path is None:
        return base
    c = corr.counts()
    if st.checkbox(
        f"Train with this dataset's label corrections ({c['relabel']} relabelled, {c['exclude']} excluded, "
        f"{c['confirm']} confirmed)",
        key="train.use_corrections",
        help="marked on the Review page, listed on the Curation page; they change the training labels only "
        "(validation and test labels stay as they are), and the run records which corrections it used",
    ):
        return base.replace(corrections=str(corr.path))
    return base
