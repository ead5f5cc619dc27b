"""The Review page's sections: the chosen run and split, its mistakes (filters, the confusion matrix, a page of
tile cards with Grad-CAM, the table), the most-confused pairs with examples side by side, and the training
labels the data itself suspects are wrong (a background task, then the ranking and marks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from histo_core.corrections import dataset_identity, training_tile_ids
from histo_core.errors import HistoError
from histo_core.explain import CAM_METHODS, upscale_tile
from histo_core.label_errors import DEFAULT_EPOCHS, DEFAULT_FOLDS, load_label_errors
from histo_core.model_input import preprocess
from histo_core.review import (
    SORTS,
    Predictions,
    RunTiles,
    confused_pairs,
    confusion,
    load_predictions,
    paginate,
    prediction_splits,
    query,
    side_by_side,
    table,
    to_csv,
)
from histo_core.runs import RunDir
from pages.ui.charts import confusion_figure, selected_cell
from pages.ui.classify import CamCache, cached_model, show_cam, tile_grid
from pages.ui.common import (
    WRAP,
    keep_in_url,
    plain,
    run_choice_label,
    run_trained_on,
    show_table,
    synthetic_badge,
    url_selection,
)
from pages.ui.curation import Candidate, mark_panel
from pages.ui.formats import pct
from pages.ui.tasks import task_panel

GRID_COLUMNS = 4
LABEL_ERROR_COLUMNS = {
    "given": "given label",
    "suggested": "looks like",
    "p_given": "p(given label)",
    "p_suggested": "p(looks like)",
    "clean": "label before the noise",
}


@st.cache_resource(show_spinner="Opening the run's dataset…", max_entries=4)
def run_tiles(run_path: str) -> RunTiles:
    return RunTiles(RunDir(run_path))


@st.cache_data(max_entries=8, show_spinner=False)
def predictions(run_path: str, split: str, mtime_ns: int) -> Predictions:
    return load_predictions(RunDir(run_path), split)


@dataclass
class Reviewed:
    """The run and split under review: its predictions and, when its dataset opens, its tiles."""

    run: RunDir
    split: str
    preds: Predictions
    tiles_source: RunTiles | None
    identity: dict | None  # the dataset's identity for label corrections; None without tiles

    def tiles_at(self, split_name: str, rows: np.ndarray) -> np.ndarray | None:
        """Tiles of a prediction split, or of the run's training set (split_name "training": train or train+val)."""
        if self.tiles_source is None:
            return None
        try:
            if split_name == "training":
                return self.tiles_source.training(rows)
            return self.tiles_source.get(split_name, rows)
        except HistoError as exc:
            st.error(plain(exc))
            return None


def reviewable_runs(runs: list[RunDir]) -> list[RunDir]:
    return [r for r in runs if r.status().state == "completed" and prediction_splits(r)]


def choose(reviewable: list[RunDir]) -> Reviewed | None:
    """The run (?run=<id>) and split to review, their predictions and tiles; None (with a message) when the
    predictions cannot be read."""
    ids = [r.id for r in reviewable]
    url_selection("run", "review_run", ids)
    top_left, top_right = st.columns([3, 1])
    run_id = top_left.selectbox(
        "Run",
        ids,
        key="review_run",
        format_func=run_choice_label,
    )
    keep_in_url("run", "review_run", run_id)
    run = next(r for r in reviewable if r.id == run_id)
    top_left.caption(run_trained_on(run))
    split = top_right.selectbox("Split", prediction_splits(run), key="review_split")
    synthetic_badge(run.dataset())
    try:
        preds = predictions(str(run.path), split, run.predictions_path(split).stat().st_mtime_ns)
    except HistoError as exc:
        st.error(plain(exc))
        return None
    wrong = int(preds.wrong.sum())
    split_report = (run.results() or {}).get(split) or {}
    st.caption(
        f"{len(preds)} {split} tiles · {wrong} misclassified · accuracy {pct(1 - wrong / max(1, len(preds)))}"
        + (" · predictions with TTA" if split_report.get("tta") else "")
    )
    try:
        tiles_source: RunTiles | None = run_tiles(str(run.path))
    except HistoError as exc:
        tiles_source = None
        st.warning(f"{plain(exc)}. Tables and counts are still shown; tiles are not.")
    identity = dataset_identity(tiles_source.dataset) if tiles_source is not None else None
    return Reviewed(run, split, preds, tiles_source, identity)


# -- mistakes -------------------------------------------------------------------------------------------------


def parse_cell(value) -> tuple[int, int] | None:
    """(true, predicted) of a cell key "t>p"; None for "any" or anything else (a browser may send back the
    display label of a cell of the previously selected run)."""
    parts = str(value).split(">") if isinstance(value, str) else []
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def apply_cell() -> None:
    cell = parse_cell(st.session_state.get("review_cell"))
    if cell is None:
        st.session_state["review_cell"] = "any"
    else:
        st.session_state["review_true"], st.session_state["review_pred"] = cell


def apply_clicked_cell(cell_labels: dict[str, str]) -> None:
    """A click on a confusion-matrix cell filters the mistakes to it (diagonal cells: nothing to list)."""
    cell = selected_cell(st.session_state.get("review_confusion"))
    if cell is not None:
        st.session_state["review_true"], st.session_state["review_pred"] = cell
        st.session_state["review_cell"] = f"{cell[0]}>{cell[1]}" if f"{cell[0]}>{cell[1]}" in cell_labels else "any"


def mistakes_section(v: Reviewed) -> None:
    """The filters (a confusion-matrix cell, true and predicted class, sort), the CSV, marking for correction,
    the clickable confusion matrix, a page of tile cards and the table of the matching mistakes."""
    preds, classes, split = v.preds, v.preds.classes, v.split
    st.header("Mistakes")
    pairs = confused_pairs(preds)
    cell_labels = {
        f"{p['true_index']}>{p['pred_index']}": f"{p['true']} → {p['predicted']} ({p['count']})" for p in pairs
    }
    filter_options = [-1, *range(len(classes))]
    if st.session_state.get("review_cell", "any") not in ("any", *cell_labels):  # stale: another run's cell
        st.session_state["review_cell"] = "any"
    for key in ("review_true", "review_pred"):
        if st.session_state.get(key, -1) not in filter_options:
            st.session_state.pop(key)
    # two rows, so that every select shows its whole value in a 1024 px window ("Sort by" was cut to "los")
    f1, f4 = st.columns([2, 1])
    f2, f3 = st.columns(2)
    f1.selectbox(
        "Confusion-matrix cell (true → predicted, count)",
        ["any", *cell_labels],
        key="review_cell",
        format_func=lambda c: "pick a cell…" if c == "any" else cell_labels[c],
        on_change=apply_cell,
    )
    true_class = f2.selectbox(
        "True class", filter_options, key="review_true", format_func=lambda i: "any" if i < 0 else classes[i]
    )
    pred_class = f3.selectbox(
        "Predicted class", filter_options, key="review_pred", format_func=lambda i: "any" if i < 0 else classes[i]
    )
    sort = f4.selectbox(
        "Sort by",
        SORTS,
        key="review_sort",
        help="loss: worst mistakes first · confidence: most confident mistakes first · index: dataset order",
    )
    rows = query(preds, None if true_class < 0 else true_class, None if pred_class < 0 else pred_class, sort=sort)
    signature = (v.run.id, split, true_class, pred_class, sort)
    if st.session_state.get("review_signature") != signature:  # new filters: back to the first page
        st.session_state["review_signature"] = signature
        st.session_state.pop("review_page", None)
    listed = table(preds, rows)
    st.caption(f"{len(rows)} misclassified tile(s) match")
    st.download_button(
        "Download the listed tiles (CSV)",
        to_csv(listed),
        file_name=f"{v.run.id}_{split}_mistakes.csv",
        mime="text/csv",
        key="review_csv",
    )
    with st.expander("Mark the listed tiles for label correction"):
        mark_mistakes(v, rows)
    with st.expander("Confusion matrix (click a cell to list its tiles)", expanded=True):
        st.plotly_chart(
            confusion_figure(confusion(preds).tolist(), classes, clickable=True),
            key="review_confusion",
            on_select=lambda: apply_clicked_cell(cell_labels),
            selection_mode="points",
        )
    if not len(rows):
        st.success("No misclassified tile matches these filters.")
        return
    mistake_cards(v, rows)
    show_table(
        listed.iloc[:500].rename(columns={"p_true": "p(true class)"}),
        column_config={
            "confidence": st.column_config.NumberColumn(format="%.3f"),
            "p(true class)": st.column_config.NumberColumn(format="%.3f"),
        },
    )


def mark_mistakes(v: Reviewed, rows: np.ndarray) -> None:
    preds, split = v.preds, v.split
    if split == "test":
        st.caption(
            "Test labels are never corrected: corrections change training labels only. Mark training tiles "
            "under Suspected label errors below, or validation mistakes (Split: val)."
        )
    elif v.identity is not None:
        st.caption(
            "Validation tiles are training tiles only in runs trained on train+val; other runs leave "
            "validation labels as they are."
        )
        mark_panel(
            "review_mark",
            v.identity,
            preds.classes,
            [
                Candidate(
                    f"{split}:{int(preds.indices[p])}",
                    int(preds.labels[p]),
                    int(preds.pred[p]),
                    f"p {preds.confidence[p]:.2f}",
                )
                for p in rows[:500]
            ],
            v.run.id,
            f"Review mistakes ({split})",
        )


def mistake_cards(v: Reviewed, rows: np.ndarray) -> None:
    """A page of the matching mistakes as cards: the tile, and its Grad-CAM where asked (per card or all)."""
    preds, classes, split = v.preds, v.preds.classes, v.split
    c1, c2, c3, c4 = st.columns([1, 2, 2, 2])  # "CAM on all" on one line at 1024 px
    page_size = c1.selectbox("Tiles per page", (12, 24, 48, 96), key="review_page_size")
    method = c2.selectbox("Grad-CAM method", list(CAM_METHODS), key="review_cam_method")
    explain = c3.radio("Explain", ["predicted class", "true class"], horizontal=True, key="review_explain")
    cam_all = c4.toggle("CAM on all", key="review_cam_all", help="Grad-CAM for every tile on this page", **WRAP)
    pages = paginate(rows, 1, page_size)[1]
    page = st.pagination(pages, key="review_page") if pages > 1 else 1
    shown, _ = paginate(rows, page, page_size)
    tiles = v.tiles_at(split, preds.indices[shown])
    if tiles is None:
        return
    want_cam = [bool(cam_all or st.session_state.get(f"review_cam_{split}_{int(p)}")) for p in shown]
    cam_maps: dict[int, np.ndarray] = {}
    loaded = None
    if any(want_cam):
        try:
            loaded = cached_model(str(v.run.path))
            chosen = [i for i, w in enumerate(want_cam) if w]
            inputs = [preprocess(tiles[i], loaded.meta) for i in chosen]
            targets = [
                int(preds.pred[shown[i]] if explain == "predicted class" else preds.labels[shown[i]]) for i in chosen
            ]
            cache = CamCache("review_cams", f"{v.run.id}:{split}:{loaded.source}")
            for i, cam in zip(chosen, cache.get_many(loaded, [int(shown[i]) for i in chosen], inputs, method, targets)):
                cam_maps[i] = cam
        except HistoError as exc:
            st.error(plain(exc))
    cam_opts = {"method": method, "alpha": 0.5, "raw": False}
    for start in range(0, len(shown), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for j, col in enumerate(cols):
            k = start + j
            if k >= len(shown):
                break
            pos = int(shown[k])
            with col.container(border=True):
                st.markdown(
                    f"**#{preds.indices[pos]}** · true **{plain(classes[preds.labels[pos]])}** → "
                    f"**{plain(classes[preds.pred[pos]])}**"
                )
                st.caption(
                    f"confidence {preds.confidence[pos]:.3f} · p(true) {preds.p_true[pos]:.3f} · "
                    f"loss {preds.loss[pos]:.3f}"
                )
                if k in cam_maps and loaded is not None:  # the tile stays visible, its map beside it at the same size
                    target = preds.pred[pos] if explain == "predicted class" else preds.labels[pos]
                    tile_col, cam_col = st.columns(2)
                    tile_col.image(upscale_tile(tiles[k], 160), caption="tile")
                    show_cam(
                        preprocess(tiles[k], loaded.meta),
                        cam_maps[k],
                        cam_opts,
                        classes[target],
                        container=cam_col,
                        predicted=target == preds.pred[pos],
                    )
                else:
                    st.image(upscale_tile(tiles[k], 160))
                if not cam_all:  # with "CAM on all" every card has its map: no greyed-out toggle per card
                    st.toggle("Grad-CAM", key=f"review_cam_{split}_{pos}")


# -- most-confused pairs and side-by-side examples -------------------------------------------------------------


def confused_pairs_section(v: Reviewed) -> None:
    preds = v.preds
    st.header("Most-confused pairs")
    pairs = confused_pairs(preds)
    if not pairs:
        st.success("No mistakes on this split.")
        return
    show_table(
        pd.DataFrame(
            [
                {
                    "true": p["true"],
                    "predicted": p["predicted"],
                    "tiles": p["count"],
                    "share of the true class": p["share_of_true"],
                }
                for p in pairs[:15]
            ]
        ),
        column_config={"share of the true class": st.column_config.NumberColumn(format="percent")},
    )
    examples = side_by_side(preds)
    with st.expander(f"Examples side by side ({len(examples)} classes with mistakes)", expanded=False):
        st.caption(
            "Per true class: its worst mistake, a confidently correct tile of the same class, and a "
            "confidently correct tile of the class it was mistaken for."
        )
        for ex in examples:
            picks = [ex["misclassified"], ex["correct_true"], ex["correct_mistaken"]]
            caps = [
                f"misclassified: {ex['true']} → {ex['mistaken_for']}",
                f"correct {ex['true']}",
                f"correct {ex['mistaken_for']}",
            ]
            present = [(p, c) for p, c in zip(picks, caps) if p is not None]
            imgs = v.tiles_at(v.split, preds.indices[[p for p, _ in present]])
            if imgs is not None:
                tile_grid(list(imgs), [c for _, c in present], columns=3, px=160)


# -- suspected label errors ------------------------------------------------------------------------------------


def label_errors_section(v: Reviewed) -> None:
    """The search for suspected label errors (a background task) and, once done, its summary, ranking, marks
    and the most suspicious tiles."""
    run = v.run
    st.header("Suspected label errors (training set)")
    st.caption(
        "Each training tile is predicted by a model trained, with this run's settings but few epochs, on the "
        "other folds; tiles whose given label gets a low out-of-sample probability while another class is "
        "confidently predicted are flagged (confident learning, Northcutt et al. 2021)."
    )
    report = load_label_errors(run)
    l1, l2, l3 = st.columns([1, 1, 2])
    folds = int(l1.number_input("Folds", 2, 10, DEFAULT_FOLDS, key="review_le_folds"))
    epochs = int(
        l2.number_input(
            "Epochs per fold", 1, 100, min(DEFAULT_EPOCHS, int(run.config().get("epochs", 5))), key="review_le_epochs"
        )
    )
    with l3:
        # trains one small model per fold: a background task (histo_core.tasks), never in the server process
        task_panel(
            "label-errors",
            {"run": run.id, "folds": folds, "epochs": epochs},
            start_label="Recompute" if report else "Find suspected label errors",
            key="review_le",
            help="Trains one model per fold in a background process (CPU: about a minute for a few thousand "
            "28 px tiles); the result is saved with the run.",
            render_result=lambda result: None,
            device=run.config().get("device") or "cpu",
        )
        report = load_label_errors(run)
    if report is not None:
        label_errors_report(v, report)


def label_errors_report(v: Reviewed, report) -> None:
    run = v.run
    s = report.summary()
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Training tiles checked", s["tiles"])
    m2.metric(
        "Flagged",
        f"{s['flagged']} ({s['flagged_share']:.1%})",
        f"estimated wrong labels: {s['estimated_noise']:.1%}",
        delta_color="off",
        help="as many tiles as the estimated share of wrong labels (confident learning: the off-diagonal of "
        "the calibrated confident joint), the ones the cross-validated models doubt most",
    )
    if report.flipped is not None:
        m3.metric(
            "Known flipped labels flagged",
            f"{s['flipped_flagged']} / {s['flipped']}",
            f"recall {s['recall']:.2f}" if s["recall"] is not None else None,
            delta_color="off",
        )
        m4.metric("Precision of the flags", f"{s['precision']:.2f}" if s["precision"] is not None else "-")
        st.caption(
            f"This run trained with fixed label noise: {s['flipped']} training labels were flipped on purpose. "
            f"{s['flipped_in_top']} of them are among the {s['flipped']} most suspicious tiles."
        )
    st.caption(
        f"{s['folds']} folds × {s['epochs']} epochs of {s['arch']}, {s['seconds']} s, computed "
        f"{s['computed_at']}" + (f"; a random {s['tiles']} of {s['training_tiles']} tiles" if s["sampled"] else "")
    )
    ranked = report.table()
    only_flagged = st.toggle("Flagged tiles only", value=True, key="review_le_flagged")
    shown_table = ranked[ranked["flagged"]] if only_flagged else ranked
    show_table(shown_table.iloc[:500].rename(columns=LABEL_ERROR_COLUMNS))
    st.download_button(
        "Download the ranking (CSV)",
        ranked.to_csv(index=False).encode("utf-8"),
        file_name=f"{run.id}_label_errors.csv",
        mime="text/csv",
        key="review_le_csv",
    )
    if v.identity is not None and v.tiles_source is not None:
        st.markdown("**Mark suspected errors**: relabel, exclude or confirm (most suspicious first)")
        order = report.ranked()
        if only_flagged:
            order = order[report.flagged[order]]
        tile_ids = training_tile_ids(report.indices[order[:500]], len(v.tiles_source.dataset.split("train")))
        mark_panel(
            "review_le_mark",
            v.identity,
            list(report.classes),
            [
                Candidate(
                    t, int(report.given[p]), int(report.suggested[p]), f"p(given) {report.self_confidence[p]:.2f}"
                )
                for t, p in zip(tile_ids, order[:500])
            ],
            run.id,
            "Review suspected label errors",
        )
    top = report.ranked()[:12]
    imgs = v.tiles_at("training", report.indices[top])
    if imgs is not None:
        st.markdown("**Most suspicious training tiles**")
        caps = [
            f"#{report.indices[p]} given {report.classes[report.given[p]]} · looks like "
            f"{report.classes[report.suggested[p]]} ({report.probs[p, report.suggested[p]]:.2f})"
            + (" · FLIPPED" if report.flipped is not None and report.flipped[p] else "")
            for p in top
        ]
        tile_grid(list(imgs), caps, columns=GRID_COLUMNS, px=128)
    if (
        report.flipped is not None
        and report.flipped.any()
        and st.toggle("Show the flipped tiles", key="review_le_flips")
    ):
        flips = np.flatnonzero(report.flipped)[:48]
        imgs = v.tiles_at("training", report.indices[flips])
        if imgs is not None:
            caps = [
                f"#{report.indices[p]} given {report.classes[report.given[p]]}, really "
                f"{report.classes[report.clean[p]]}" + (" · flagged" if report.flagged[p] else " · missed")
                for p in flips
            ]
            tile_grid(list(imgs), caps, columns=GRID_COLUMNS, px=128)
