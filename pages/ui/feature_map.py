"""Streamlit pieces of the Feature map page and of the Classify page's "most similar training tiles" and
faithfulness notes. The work is in histo_core (embeddings, similar, faithfulness; kinds for the background)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from histo_core.embeddings import EmbeddingStore, EmbedTarget, is_current, load_store
from histo_core.errors import HistoError
from histo_core.explain import uniform_maps
from histo_core.kinds import get_kind
from pages.ui.classify import tile_grid
from pages.ui.common import plain, show_table
from pages.ui.tasks import task_panel

COLOUR_BY = {
    "true class": "true",
    "predicted class": "predicted",
    "correct / wrong": "outcome",
    "confidence": "confidence",
    "suspected label error": "label_error",
}
MAX_SHOWN = 48  # selected tiles drawn at once
SPLIT_SYMBOLS = {"train": "circle", "val": "diamond", "test": "square"}  # the map's marker per split
SPLIT_MARKS = {"circle": "●", "diamond": "◆", "square": "■"}  # named in the title (the legend lists colours)


# -- embeddings and their background process --------------------------------------------------------------
@st.cache_resource(max_entries=8, show_spinner=False)
def _store(path: str, mtime_ns: int) -> EmbeddingStore | None:
    return load_store(path)


def current_store(target: EmbedTarget) -> EmbeddingStore | None:
    meta = target.out_dir / "meta.json"
    try:
        mtime = meta.stat().st_mtime_ns
    except OSError:
        return None
    store = _store(str(target.out_dir), mtime)
    return store if is_current(store, target) else None


def job_panel(params: dict[str, Any], kind: str, start_label: str, key: str) -> None:
    """Start button, then the live progress of the background process (histo_core.kinds: `embed` with params model
    and, for another dataset than its own, dataset; `explain-quality` with run, tiles); the page redraws itself
    when it has finished."""
    task_panel(
        kind, params, start_label=start_label, help=f"runs the {get_kind(kind).label} in the background", key=key
    )


# -- the map -----------------------------------------------------------------------------------------------
def points_frame(store: EmbeddingStore, splits: Sequence[str], label_errors=None) -> pd.DataFrame:
    df = store.points(label_errors)
    df = df[df["split"].isin(list(splits))].reset_index(drop=True)
    df["outcome"] = df["correct"].map({True: "correct", False: "wrong"}).fillna("n/a")
    df["label_error"] = df["label_error"].map({True: "suspected", False: "not flagged"}).fillna("not checked")
    return df


def scatter(df: pd.DataFrame, colour: str, title: str):
    column = COLOUR_BY[colour]
    kwargs: dict[str, Any] = {}
    if column == "confidence":
        kwargs["color_continuous_scale"] = "Viridis"
        kwargs["range_color"] = (0.0, 1.0)
    elif column == "outcome":
        kwargs["color_discrete_map"] = {"correct": "#2ca02c", "wrong": "#d62728", "n/a": "#7f7f7f"}
    elif column == "label_error":
        kwargs["color_discrete_map"] = {"suspected": "#d62728", "not flagged": "#1f77b4", "not checked": "#c7c7c7"}
    else:  # classes: a colour-blind-safe palette of well-separated colours
        kwargs["color_discrete_sequence"] = px.colors.qualitative.Safe
    present = [s for s in SPLIT_SYMBOLS if s in set(df["split"])]
    title = f"{title} · " + " ".join(f"{SPLIT_MARKS[SPLIT_SYMBOLS[s]]} {s}" for s in present)
    fig = px.scatter(
        df,
        x="x",
        y="y",
        color=column,
        symbol="split",
        symbol_map=SPLIT_SYMBOLS,
        custom_data=["split", "row"],
        hover_data={
            "split": True,
            "row": True,
            "true": True,
            "predicted": True,
            "confidence": ":.3f",
            "x": False,
            "y": False,
        },
        title=title,
        **kwargs,
    )
    fig.update_traces(marker=dict(size=7 if len(df) < 2000 else 4, opacity=0.85))
    one_legend_entry_per_colour(fig)
    fig.update_layout(
        height=620,
        dragmode="lasso",
        legend=dict(title=None),
        margin=dict(l=0, r=0, t=40, b=0),
        xaxis=dict(title="t-SNE 1", showticklabels=False),
        yaxis=dict(title="t-SNE 2", showticklabels=False),
    )
    return fig


def one_legend_entry_per_colour(fig) -> None:
    """Plotly Express makes one trace per colour and symbol (9 classes x 3 splits: a 27-entry legend). The legend
    keeps one entry per colour, which toggles that colour's points in every split; the symbols (one per split)
    are named in the hover and the caption."""
    seen: set[str] = set()
    for trace in fig.data:
        colour = str(trace.name).split(", ")[0]
        trace.update(name=colour, legendgroup=colour, showlegend=colour not in seen)
        seen.add(colour)


def selected_points(event: Any) -> list[tuple[str, int]]:
    """(split, row) of the points a plotly selection event holds, in selection order, without repeats."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return []
    out = []
    for p in points:
        data = p.get("customdata") if isinstance(p, dict) else None
        if data is not None and len(data) >= 2:
            out.append((str(data[0]), int(data[1])))
    return list(dict.fromkeys(out))


def selection_grid(df: pd.DataFrame, picked: list[tuple[str, int]], tiles_of) -> None:
    """The selected tiles with split, row, true label and prediction; `tiles_of(split, rows)` reads tiles."""
    if not picked:
        st.caption("Select points on the map (lasso or box; shift adds) to see their tiles here.")
        return
    index = df.set_index(["split", "row"])
    shown = picked[:MAX_SHOWN]
    st.markdown(
        f"**{len(picked)} tile(s) selected**" + (f", the first {MAX_SHOWN} shown" if len(picked) > MAX_SHOWN else "")
    )
    summary = index.loc[picked][["true", "predicted", "confidence", "outcome"]].reset_index()
    counts = summary["true"].value_counts()
    st.caption("true classes: " + plain(" · ".join(f"{c} {n}" for c, n in counts.items())))
    images, caps = [], []
    by_split: dict[str, list[int]] = {}
    for split, row in shown:
        by_split.setdefault(split, []).append(row)
    fetched: dict[tuple[str, int], np.ndarray] = {}
    for split, rows in by_split.items():
        try:
            arr = tiles_of(split, np.asarray(rows))
        except HistoError as exc:
            st.warning(plain(exc))
            return
        fetched.update({(split, r): t for r, t in zip(rows, arr)})
    for key in shown:
        rec = index.loc[key]
        images.append(fetched[key])
        mark = "" if rec["outcome"] != "wrong" else " ✗"
        caps.append(
            f"{key[0]} #{key[1]} · true {rec['true']} · pred {rec['predicted']} ({rec['confidence']:.2f}){mark}"
        )
    tile_grid(images, caps, columns=6, px=128)
    show_table(summary)


# -- faithfulness table ------------------------------------------------------------------------------------
def quality_frame(doc: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The faithfulness table and its column config: the shares (0-1 in the document) shown in percent."""
    rows = pd.DataFrame(doc["methods"])[
        ["rank", "method", "road_mean", "road_median", "unfaithful_share", "flat_share", "seconds_per_tile"]
    ].copy()
    for col in ("unfaithful_share", "flat_share"):
        rows[col] = rows[col].astype(float) * 100.0
    config = {
        "road_mean": st.column_config.NumberColumn("ROAD mean", format="%+.4f"),
        "road_median": st.column_config.NumberColumn("ROAD median", format="%+.4f"),
        "unfaithful_share": st.column_config.ProgressColumn(
            "unfaithful maps", min_value=0.0, max_value=100.0, format="%.0f%%"
        ),
        "flat_share": st.column_config.ProgressColumn("flat maps", min_value=0.0, max_value=100.0, format="%.0f%%"),
        "seconds_per_tile": st.column_config.NumberColumn("s / tile", format="%.3f"),
    }
    return rows, config


def quality_table(doc: dict[str, Any]) -> None:
    rows, config = quality_frame(doc)
    show_table(rows, column_config=config)
    best = doc.get("best")
    st.caption(
        f"{doc['metric']}; {doc['tiles']} {doc['split']} tiles"
        + (f" (a seeded sample of {doc['of']})" if doc["sampled"] else "")
        + f"; computed {doc['computed_at']} in {doc['seconds']} s. "
        + (f"Most faithful here: **{best}**. " if best else "")
        + "Unfaithful: removing the pixels the map highlights lowers p(class) no more than removing the others."
    )


# -- Classify page additions -------------------------------------------------------------------------------
def _score_key(cache_key: str, tile: np.ndarray, method: str, target: int) -> tuple:
    import hashlib

    digest = hashlib.blake2b(np.ascontiguousarray(tile).tobytes(), digest_size=12).hexdigest()
    return (cache_key, digest, method, int(target))


def faithfulness_scores(
    loaded, tiles: list[np.ndarray], cams: list[np.ndarray], targets: list[int], method: str, cache_key: str
) -> None:
    """ROAD scores of the maps about to be drawn, computed together (one batch: 8 forward passes for a page of
    tiles, not 8 per tile) and kept for `faithfulness_note`; flat maps and maps scored before are skipped."""
    from histo_core.faithfulness import road_scores

    store = st.session_state.setdefault("faithfulness_scores", {})
    todo = [
        (k, tile, cam, target)
        for tile, cam, target in zip(tiles, cams, targets)
        if not uniform_maps(cam)[0] and (k := _score_key(cache_key, tile, method, target)) not in store
    ]
    if not todo:
        return
    scores = road_scores(
        loaded.model,
        loaded.meta,
        np.stack([t for _, t, _, _ in todo]),
        np.stack([c for _, _, c, _ in todo]),
        [int(t) for *_, t in todo],
    )
    store.update({k: float(v) for (k, *_), v in zip(todo, scores)})


def faithfulness_note(
    loaded,
    tile: np.ndarray,
    cam: np.ndarray,
    target: int,
    method: str,
    cache_key: str,
    container=None,
    compute: bool = True,
) -> None:
    """The ROAD score of the map just drawn, one line under the overlay (computed once per map and kept).
    `compute=False`: a map not scored yet says it is being checked (the caller scores it and writes again)."""
    from histo_core.faithfulness import describe, misleading

    box = container or st
    if compute:
        faithfulness_scores(loaded, [tile], [cam], [target], method, cache_key)  # a no-op when scored with its page
    store = st.session_state.setdefault("faithfulness_scores", {})
    key = _score_key(cache_key, tile, method, target)
    flat = bool(uniform_maps(cam)[0])
    if not compute and not flat and key not in store:
        box.caption("Faithfulness: being checked…")
        return
    text = describe(store.get(key), flat)
    if misleading(store.get(key), flat):
        box.warning(f"Faithfulness: {text}", icon="⚠️")
    elif text:
        box.caption(f"Faithfulness: {text}")


@st.cache_resource(max_entries=4, show_spinner=False)
def _index(model_ref: str, mtime_ns: int):
    from histo_core.similar import SimilarityIndex

    return SimilarityIndex.for_model(model_ref, compute=False)


@st.cache_resource(max_entries=4, show_spinner=False)
def _dataset(spec: str, size, as_rgb, data_dir, seed):
    from histo_core.datasets import open_dataset

    return open_dataset(spec, size=size, as_rgb=bool(as_rgb), data_dir=data_dir, seed=int(seed or 0))


def dataset_tiles(target: EmbedTarget, meta: dict[str, Any]):
    """A function (split, rows) -> uint8 tiles of the target's dataset (opened once per server)."""
    kw = dict(target.open_kwargs)
    as_rgb = kw.get("as_rgb")
    if as_rgb is None:
        as_rgb = int(meta.get("in_channels", 3)) == 3

    def get(split: str, rows: np.ndarray) -> np.ndarray:
        try:
            ds = _dataset(target.dataset, kw.get("size"), as_rgb, kw.get("data_dir"), kw.get("seed"))
        except HistoError as exc:
            raise HistoError(f"cannot reopen {target.dataset} to show tiles: {exc}") from None
        s = ds.split(split)
        rows = np.asarray(rows, np.int64)
        if len(rows) and rows.max() >= len(s):
            raise HistoError(
                f"{split}: the embeddings refer to row {int(rows.max())}, but the dataset now has "
                f"{len(s)} tiles; compute the embeddings again"
            )
        return s.get(rows)

    return get


def similar_tiles(loaded, entry, tile: np.ndarray, probs: np.ndarray, key: str, k: int = 8) -> None:
    """For one classified tile: the k nearest training tiles (cosine, in the model's feature space) with their
    labels and distances, and the k-NN vote next to the model's prediction (a warning when they disagree)."""
    from histo_core.embeddings import target_for, tile_features
    from histo_core.similar import knn_vote

    with st.expander("Most similar training tiles", expanded=False):
        try:
            target = target_for(entry.ref)
        except HistoError as exc:
            st.caption(f"Not available: {plain(exc)}")
            return
        store = current_store(target)
        if store is None:
            st.caption(
                "The training tiles of this model are not embedded yet (a run trained before this feature, or "
                "an export). Compute them once, in the background:"
            )
            job_panel({"model": target.model_ref}, "embed", "Embed the training tiles", key=f"{key}_embed")
            return
        try:
            index = _index(target.model_ref, int(store.meta.get("model_mtime_ns", 0)))
        except HistoError as exc:
            st.caption(f"Not available: {plain(exc)}")
            return
        feats, _ = tile_features(loaded.model, loaded.meta, tile[None])
        hits = index.search(feats, min(k, len(index)))
        voted, share = knn_vote(hits.labels, hits.distances, len(index.classes))
        pred = int(np.argmax(probs))
        vote_name, pred_name = index.classes[int(voted[0])], loaded.meta.classes[pred]
        line = (
            f"k-NN vote of the {hits.labels.shape[1]} nearest of {len(index):,} training tiles: **{plain(vote_name)}** "
            f"({share[0]:.0%}) · model: **{plain(pred_name)}** ({probs[pred]:.1%})"
        )
        if vote_name != pred_name:
            st.warning(line + " — the most similar training tiles disagree with the model: look closer.", icon="⚠️")
        else:
            st.markdown(line)
        getter = dataset_tiles(target, store.meta)
        splits, rows = hits.splits[0], hits.rows[0]
        try:
            imgs = [getter(str(s), np.asarray([r]))[0] for s, r in zip(splits, rows)]
        except HistoError as exc:
            st.caption(plain(exc))
            imgs = None
        caps = [
            f"{index.classes[int(lab)]} · d={d:.3f} · {s} #{r}"
            for lab, d, s, r in zip(hits.labels[0], hits.distances[0], splits, rows)
        ]
        if imgs is not None:
            tile_grid(imgs, caps, columns=4, px=112)
        else:
            show_table(pd.DataFrame({"neighbour": caps}))
