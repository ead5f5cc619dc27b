"""Feature map: every tile of a dataset placed by the model's penultimate-layer features (PCA + t-SNE),
coloured by class, prediction, correctness, confidence or suspected label error; select points to see the
tiles. Also: which explanation method is most faithful on a run."""

from __future__ import annotations

import streamlit as st

from histo_core import paths
from histo_core.embeddings import EmbedTarget, target_for
from histo_core.errors import HistoError
from histo_core.faithfulness import DEFAULT_TILES, load_quality
from histo_core.label_errors import load_label_errors
from histo_core.model_catalog import list_models
from histo_core.runs import RunDir
from pages.ui.classify import model_label
from pages.ui.common import (
    keep_in_url,
    listed_runs,
    page_setup,
    plain,
    run_choice_label,
    run_trained_on,
    synthetic_badge,
    url_news,
    url_selection,
)
from pages.ui.feature_map import (
    COLOUR_BY,
    current_store,
    dataset_tiles,
    job_panel,
    points_frame,
    quality_table,
    scatter,
    selected_points,
    selection_grid,
)

SOURCES = ["A run's dataset", "Any dataset, with a frozen model"]


def choose_target(runs: list[RunDir], models: list) -> tuple[RunDir | None, EmbedTarget, dict[str, str]] | None:
    """The map to show: a run's own (run, its target, the embed job's arguments) or a frozen model's on a dataset
    (None, ...); None when there is nothing to choose (a message says so)."""
    if url_news("model", "fm_source"):  # ?model=<name>&dataset=<spec>: a frozen model's map; ?run=<id>: a run's
        st.session_state["fm_source"] = SOURCES[1]
    elif url_news("run", "fm_source"):
        st.session_state["fm_source"] = SOURCES[0]
    source = st.radio(
        "Map",
        SOURCES,
        horizontal=True,
        key="fm_source",
        help="A run: its own train/val/test tiles and its own model. Any dataset: a finished run or an "
        "export in weights/, used as a fixed feature extractor on a dataset of your choice.",
    )
    try:
        if source == SOURCES[0]:
            if not runs:
                st.info("No completed run yet; pick “Any dataset, with a frozen model” to use an export.")
                return None
            ids = [r.id for r in runs]
            url_selection("run", "fm_run", ids)
            run_id = st.selectbox(
                "Run",
                ids,
                key="fm_run",
                format_func=run_choice_label,
            )
            keep_in_url("run", ["fm_run", "fm_source"], run_id, drop=["model", "dataset"])
            run = next(r for r in runs if r.id == run_id)
            st.caption(run_trained_on(run))
            return run, target_for(str(run.path)), {"model": str(run.path)}
        from histo_core.datasets.catalog import available_datasets, canonical_spec

        by_ref = {m.ref: m for m in models}
        url_selection("model", "fm_model", {m.name: m.ref for m in models})
        # full width and Classify's short label: the catalogue's long one ran past the box's end at 1024 px
        ref = st.selectbox("Model (frozen)", list(by_ref), format_func=lambda r: model_label(by_ref[r]), key="fm_model")
        st.caption(plain(f"{by_ref[ref].arch} · trained on {by_ref[ref].dataset}"))
        datasets = {d.spec: d.title for d in available_datasets()}
        url_selection("dataset", "fm_dataset", list(datasets), canonical=canonical_spec)
        spec = st.selectbox("Dataset", list(datasets), format_func=lambda s: f"{datasets[s]} ({s})", key="fm_dataset")
        keep_in_url("model", ["fm_model", "fm_source"], by_ref[ref].name, drop=["run"])
        keep_in_url("dataset", "fm_dataset", spec)
        target = target_for(ref, spec)
        return None, target, {"model": target.model_ref, "dataset": spec}
    except HistoError as exc:
        st.error(plain(exc))
        return None


def map_section(run: RunDir | None, target: EmbedTarget, job_args: dict[str, str]) -> None:
    """The feature map of `target` (or the job that computes it), its controls, and the tiles of a selection."""
    store = current_store(target)
    if store is None:
        st.info(
            f"No feature map for {target.label} on {target.dataset} yet"
            + (" (the run finished before feature maps were saved, or its model changed)." if run else ".")
            + " It is computed in the background: features of every tile, then PCA + t-SNE."
        )
        job_panel(job_args, "embed", "Compute the feature map", key="fm_embed")
        st.stop()  # nothing below (the explanation methods' table) until the map exists
    meta = store.meta
    synthetic_badge({"synthetic": meta.get("synthetic")})
    top = st.columns([2, 2, 1])
    splits = top[0].multiselect("Splits", store.splits, default=store.splits, key="fm_splits")
    report = load_label_errors(run) if run is not None else None
    colours = [c for c in COLOUR_BY if c != "suspected label error" or report is not None]
    if not store.same_classes:
        colours = [c for c in colours if c != "correct / wrong"]
    colour = top[1].selectbox(
        "Colour by",
        colours,
        key="fm_colour",
        help="Suspected label errors appear once the Review page has searched this run's training set.",
    )
    with top[2]:
        job_panel(job_args, "embed", "Recompute", key="fm_recompute")
    st.caption(
        f"{meta['model']} ({meta['arch']}, {meta['dims']}-dim features) on {meta['dataset_title']}: "
        + ", ".join(f"{s} {n:,}" for s, n in meta["counts"].items())
        + f" tiles. Map: {meta['projection']} of {meta['sample_rule']}. Computed {meta['computed_at']}."
    )
    if report is None and run is not None:
        st.caption(
            "Colour by suspected label error: search for them first on the Review page (Suspected label errors)."
        )
    if not splits:
        st.warning("Pick at least one split.")
        st.stop()
    df = points_frame(store, splits, report)
    fig = scatter(df, colour, f"{len(df):,} tiles")
    event = st.plotly_chart(
        fig, key="fm_chart", on_select="rerun", selection_mode=("points", "box", "lasso"), config={"displaylogo": False}
    )
    selection_grid(df, selected_points(event), dataset_tiles(target, meta))


def faithfulness_section(run: RunDir) -> None:
    """Which CAM method's maps are most faithful on the run's test tiles (ROAD), and the job that scores them."""
    st.header("Which explanation method is most faithful on this run?")
    st.caption(
        "Every CAM method's maps on the run's test tiles, scored with ROAD (pytorch-grad-cam): pixels are "
        "removed most-relevant-first and least-relevant-first by the map, and the change in the predicted "
        "class's probability compared. Higher = the map points at what the model really uses."
    )
    doc = load_quality(run)
    if doc:
        quality_table(doc)
    job_panel(
        {"run": str(run.path), "tiles": DEFAULT_TILES},
        "explain-quality",
        "Recompute the table" if doc else f"Score the CAM methods on {DEFAULT_TILES} test tiles",
        key="fm_quality",
    )


def main() -> None:
    page_setup(__file__)
    st.caption(
        "Each point is a tile, placed by what the model sees in it (its penultimate-layer features, PCA then "
        "t-SNE): tiles the model finds alike sit together. Select a cluster to look at its tiles."
    )
    runs = [
        r for r in listed_runs() if r.status().state == "completed" and (r.best_ckpt.exists() or r.last_ckpt.exists())
    ]
    models = list_models()
    if not runs and not models:
        st.info(
            f"No completed run or exported model yet (runs in `{paths.runs_dir()}`). Train one on the Train page; "
            "its feature map is saved when it finishes."
        )
        return
    chosen = choose_target(runs, models)
    if chosen is None:
        return
    run, target, job_args = chosen
    map_section(run, target, job_args)
    if run is not None:
        faithfulness_section(run)


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (the warm-up) runs nothing
    main()
