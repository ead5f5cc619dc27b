"""The "Evaluate on another dataset" panel (Runs page for a run, Classify page for an exported or ready-made
model): pick a dataset, edit how its classes map onto the model's,
start an evaluation in the background (histo_core.evaluation.start_evaluation: the `evaluate` process kind), and show the saved
evaluations. Matching and scoring live in histo_core.classnames / histo_core.evaluation."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from histo_core import classnames, evaluation
from histo_core.classnames import match_classes, short_name
from histo_core.errors import HistoError
from histo_core.evaluation import list_evaluations
from histo_core.model_catalog import ModelEntry
from histo_core.runs import RunDir
from pages.ui.common import lazy_expander, percent_column, plain, show_table, user_errors
from pages.ui.datasets import dataset_picker, open_cached
from pages.ui.live import live
from pages.ui.report import render_report

NO_COUNTERPART = "(no counterpart: reported apart)"
SPLITS = ("all", "test", "val", "train")


def model_classes(run: RunDir) -> list[str]:
    return [
        str(c) for c in (run.dataset().get("classes") or ((run.results() or {}).get("test") or {}).get("classes") or [])
    ]


def _target(model: RunDir | ModelEntry) -> tuple[RunDir | str, str, list[str], str]:
    """What the evaluation jobs take (a run, else the model's ref), the widget-key suffix, the model's classes and
    where the evaluations are saved (in words)."""
    if isinstance(model, RunDir):
        return model, model.id, model_classes(model), "with the run"
    return model.ref, f"{model.kind}-{model.name}", list(model.classes), "in the data folder's evaluations/"


def _option(model_class: str) -> str:
    """A model class as the grid offers it: its NCT abbreviation first where it has one (typing TUM finds it)."""
    short = short_name(model_class)
    return f"{short} · {model_class}" if short != model_class else model_class


def class_map_editor(dataset_classes: list[str], classes: list[str], key: str) -> dict[str, str] | None:
    """A table: each dataset class and the model class it counts as, pre-filled by name, NCT abbreviation, known
    words (01_TUMOR -> TUM, 08_EMPTY -> BACK) or a close spelling (classnames.suggest_classes); the model's
    classes offered by abbreviation and name. A pasted map (`01_TUMOR=TUM,03_COMPLEX=-`) overrides the rows it
    names. Says which dataset classes stay unscored. Returns the map to pass on (the rows that differ from the
    automatic match), or None when no class is matched (with a hint, not an error: nothing is wrong yet)."""
    auto = match_classes(dataset_classes, classes)
    suggested = classnames.suggest_classes(dataset_classes, classes)
    options = [NO_COUNTERPART, *[_option(c) for c in classes]]
    back = {_option(c): c for c in classes}
    frame = pd.DataFrame(
        {
            "dataset class": dataset_classes,
            "model class": [NO_COUNTERPART if m is None else _option(classes[m]) for m in suggested],
        }
    )
    edited = st.data_editor(
        frame,
        key=key,
        hide_index=True,
        width="stretch",
        disabled=["dataset class"],
        column_config={
            "model class": st.column_config.SelectboxColumn(
                "model class",
                options=options,
                required=True,
                help="Which of the model's classes this dataset class is (type its abbreviation, e.g. TUM); tiles of "
                "a class with no counterpart are not scored but listed apart with what the model called them",
            )
        },
    )
    pasted = st.text_input(
        "Or paste a class map",
        key=f"{key}_paste",
        placeholder="01_TUMOR=TUM,02_STROMA=STR,03_COMPLEX=-",
        help="DATASET_CLASS=MODEL_CLASS pairs, comma-separated; a model class by name or abbreviation; - for none. "
        "The rows it names override the table.",
    )

    def index_of(shown: str) -> int | None:
        name = back.get(str(shown), str(shown))
        return classes.index(name) if name in classes else None

    chosen = [None if d == NO_COUNTERPART else index_of(d) for d in edited["model class"]]
    if pasted.strip():
        overrides = classnames.parse_class_map(pasted)  # HistoError on a malformed pair: shown by the caller
        resolved = match_classes(dataset_classes, classes, overrides)
        named = {classnames._key(k) for k in overrides}
        chosen = [r if classnames._key(c) in named else m for c, r, m in zip(dataset_classes, resolved, chosen)]
    mapping = {}
    for src, dst, a in zip(dataset_classes, chosen, auto):
        if dst is None:
            if a is not None:  # an automatic match undone
                mapping[str(src)] = classnames.NO_COUNTERPART
        elif a != dst:
            mapping[str(src)] = short_name(classes[dst])
    unscored = [str(c) for c, d in zip(dataset_classes, chosen) if d is None]
    if len(unscored) == len(dataset_classes):
        st.info("No dataset class is matched to a model class yet: pick the model class of at least one row.")
        return None
    if unscored:
        st.caption(
            f"Not scored ({len(unscored)} of {len(dataset_classes)} classes, no counterpart): {', '.join(unscored)}; "
            "their tiles are listed apart with what the model called them."
        )
    return mapping


def evaluate_panel(model: RunDir | ModelEntry) -> None:
    """The panel for a run (Runs page) or an exported / ready-made model (Classify page): one code path, the
    evaluations of a run saved in it, those of a weights model in `<data dir>/evaluations/<model name>/`."""
    target, key, classes, where = _target(model)
    wanted = st.query_params.get("dataset")  # Runs?run=<id>&dataset=<spec> opens this panel on that dataset
    # built only while open (lazy_expander); the choices made in it (not the class map's edits) are kept closed
    kept = [f"evaluate_ds_{key}_{k}" for k in ("choice", "path")]
    kept += [f"evaluate_split_{key}", f"evaluate_name_{key}", f"evaluate_map_{key}_paste"]
    title = "Evaluate on another dataset (a folder of class folders, an npz, a CSV)"
    opened, box = lazy_expander(title, f"evaluate_open_{key}", kept, expanded=bool(wanted))
    if opened:
        with box:
            _evaluate_form(target, key, classes, where)
    evaluations_view(target, key)


def _evaluate_form(target: RunDir | str, key: str, classes: list[str], where: str) -> None:
    """The dataset, the tiles and the class map of a new evaluation, and its start button."""
    choice = dataset_picker(f"evaluate_ds_{key}", url="read")
    if not choice:
        return
    ds = None
    with user_errors():
        ds = open_cached(choice.spec)
    if ds is None:
        return
    sizes = ds.split_sizes()
    st.caption(
        f"**{ds.info.title}** · {ds.info.num_classes} classes · " + " / ".join(f"{k} {v:,}" for k, v in sizes.items())
    )
    a, b = st.columns([1, 2])
    split = a.selectbox(
        "Tiles to score",
        SPLITS,
        key=f"evaluate_split_{key}",
        format_func=lambda s: "all of them" if s == "all" else f"{s} split ({sizes.get(s, 0):,})",
    )
    name = b.text_input("Name of this evaluation", key=f"evaluate_name_{key}", placeholder="default: <dataset>-<split>")
    st.markdown("**Classes**: the dataset's (left) and the model's class each counts as (right)")
    try:
        mapping = class_map_editor([str(c) for c in ds.info.classes], classes, key=f"evaluate_map_{key}")
    except HistoError as exc:
        st.error(plain(exc))
        return
    if mapping is not None and st.button(
        "Start the evaluation",
        key=f"evaluate_start_{key}",
        type="primary",
        help=f"runs `python -m histo_core evaluate` in the background; the result is saved {where}",
    ):
        with user_errors("Not started: "):
            started = evaluation.start_evaluation(target, choice.spec, split, mapping, name or None)
            st.session_state[f"evaluate_started_{key}"] = started


def _running_jobs(target: RunDir | str) -> list[dict]:
    return [j for j in evaluation.evaluation_jobs(target) if j["state"] == "running"]


def _running(target: RunDir | str) -> None:
    for j in _running_jobs(target):
        st.info(plain(f"⏳ Evaluating on {j['dataset']} ({j['split']}) as '{j['name']}'…"))


def evaluations_view(target: RunDir | str, key: str) -> None:
    """Running jobs (refreshed), failed ones with their error line, and the saved evaluations of a run or of a
    weights model (its ref)."""
    all_jobs = evaluation.evaluation_jobs(target)
    if any(j["state"] == "running" for j in all_jobs):
        live(lambda: bool(_running_jobs(target)), lambda: _running(target))
    saved = list_evaluations(target)
    saved_names = {e["name"] for e in saved}
    for j in all_jobs:
        if j["state"] == "failed" and j["name"] not in saved_names:
            st.error(plain(f"Evaluation '{j['name']}' on {j['dataset']} failed: {j['error']}"))
    if not saved:
        return
    st.markdown("**Evaluations on other datasets**")
    table = pd.DataFrame(
        [
            {
                "name": e["name"],
                "dataset": e.get("dataset_title") or e.get("dataset"),
                "tiles": e.get("split"),
                "scored": e["n"],
                "not scored": sum(u["tiles"] for u in e.get("unmatched") or []),
                "accuracy": e.get("accuracy"),
                "AUC": e.get("auc"),
                "when": e.get("evaluated_at"),
            }
            for e in saved
        ]
    )
    show_table(
        table,
        column_config={"accuracy": percent_column(), "AUC": st.column_config.NumberColumn(format="%.3f")},
    )
    pick = st.selectbox("Show evaluation", [e["name"] for e in saved], key=f"evaluate_show_{key}")
    report = next(e for e in saved if e["name"] == pick)
    from histo_core.evaluation import format_matching

    st.caption(plain(" · ".join(format_matching(report))))
    render_report(report, key=f"eval-{key}-{pick}")
