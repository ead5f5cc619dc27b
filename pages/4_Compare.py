"""Compare: overlay the curves of several runs and tabulate their settings and final metrics."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from histo_core import paths
from histo_core.evaluation import list_evaluations
from histo_core.runs import RunDir
from histo_core.summaries import comparison_row, run_summary
from pages.ui.charts import confusion_figure, metric_label, metrics_bar_figure, overlay_figure, run_colours
from pages.ui.common import keep_in_url, listed_runs, page_setup, show_table, url_selection
from pages.ui.formats import MISSING, num, pct
from pages.ui.runs import link_to_page, run_label


def _macro_f1(report: dict) -> float | None:
    f1 = [c["f1"] for c in report.get("per_class") or [] if c.get("support")]
    return sum(f1) / len(f1) if f1 else None


# the curves a user can overlay, in the words of the Runs page's charts (training accuracy says it is measured
# on the labels trained on, noisy ones included)
CURVES = {
    k: metric_label(k) for k in ("val_acc", "val_loss", "val_auc", "train_acc", "train_loss", "lr", "images_per_s")
}


def choose_runs(runs: dict[str, RunDir], summaries: dict[str, dict]) -> list[str]:
    """The multiselect of runs (?run=<id>&run=<id> picks them); by default the latest runs with curves, at most four."""
    with_curves = [rid for rid, r in runs.items() if summaries[rid]["epoch"]][:4]
    if len(runs) > 10:
        st.caption("Up to 10 runs get distinct colours; pick fewer for readable charts.")
    url_selection("run", "compare_runs", list(runs), many=True)  # ?run=<id>&run=<id>: these runs side by side
    if "compare_runs" not in st.session_state:
        st.session_state["compare_runs"] = with_curves[:4] or list(runs)[:2]
    chosen = st.multiselect("Runs", list(runs), format_func=lambda rid: run_label(summaries[rid]), key="compare_runs")
    keep_in_url("run", "compare_runs", chosen)  # a reload or a shared link compares the same runs
    return chosen


def curves_section(chosen: list[str], legend: dict[str, str], colours: dict) -> None:
    """One curve of every chosen run, overlaid; the curve picked from those some run has logged."""
    metrics_rows = {rid: RunDir(paths.runs_dir() / rid).metrics() for rid in chosen}
    # curves that exist in at least one chosen run (a train+val run logs no validation curves)
    available = [
        k for k in CURVES if any(isinstance(r.get(k), (int, float)) for rows in metrics_rows.values() for r in rows)
    ]
    if not available:
        st.info("None of these runs has finished an epoch yet.")
        return
    if st.session_state.get("compare_metric") not in available:
        st.session_state.pop("compare_metric", None)
    metric = st.selectbox("Curve", available, format_func=CURVES.get, key="compare_metric")
    missing = [
        legend[rid] for rid in chosen if not any(isinstance(r.get(metric), (int, float)) for r in metrics_rows[rid])
    ]
    series = {legend[rid]: metrics_rows[rid] for rid in chosen}
    st.plotly_chart(
        overlay_figure(series, metric, title=f"{CURVES[metric]} per epoch", colours=colours), width="stretch"
    )
    if missing:
        st.caption(
            f"No {CURVES[metric]} for {', '.join(missing)}"
            + (" (trained on train+val: no validation split)" if metric.startswith("val_") else "")
        )


def held_out_section(chosen: list[str], legend: dict[str, str], colours: dict) -> None:
    """Test metrics and confusion matrices of the chosen runs, side by side."""
    tested = {rid: (RunDir(paths.runs_dir() / rid).results() or {}).get("test") for rid in chosen}
    tested = {rid: rep for rid, rep in tested.items() if rep and rep.get("n")}
    if not tested:
        return
    st.subheader("Test set, side by side")
    st.plotly_chart(
        metrics_bar_figure(
            {
                legend[rid]: {"accuracy": rep.get("accuracy"), "AUC": rep.get("auc"), "macro F1": _macro_f1(rep)}
                for rid, rep in tested.items()
            },
            colours,
        ),
        width="stretch",
    )
    normalise = st.toggle("Row-normalised confusion matrices (recall per class)", value=True, key="compare_norm")
    items = list(tested.items())
    for start in range(0, len(items), 3):
        for col, (rid, rep) in zip(st.columns(3), items[start : start + 3]):
            col.plotly_chart(
                confusion_figure(
                    rep["confusion"], rep.get("classes") or [], normalize=normalise, title=legend[rid], compact=True
                ),
                width="stretch",
                key=f"compare_cm_{rid}",
            )


def settings_table(runs: dict[str, RunDir], summaries: dict[str, dict], chosen: list[str]) -> None:
    """Settings and results of the chosen runs, one column each (one row each in the CSV)."""
    table = pd.DataFrame([comparison_row(runs[rid]) for rid in chosen])
    front = [c for c in ("run", "test acc", "test AUC", "test ECE", "dataset", "arch", "epochs", "noise") if c in table]
    table = table[front + [c for c in table.columns if c not in front]]
    st.subheader("Settings and results")
    # a row per setting and a column per run: the 25 settings side by side scrolled sideways at 1024 px (issue 24)
    show_table(side_by_side(table), hide_index=False)
    synthetic = [rid for rid in chosen if summaries[rid]["synthetic"]]
    if synthetic:
        st.warning(f"{len(synthetic)} of these runs trained on the SYNTHETIC demo data.", icon="🧪")
    st.download_button(
        "Download the table as CSV",
        data=table.to_csv(index=False).encode("utf-8"),
        file_name="histo-runs-comparison.csv",
        mime="text/csv",
        on_click="ignore",
    )


def side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison turned to one row per setting and one column per run (headed by its name, its id where
    two share a name), every value written as the app writes it: accuracy as a percentage, scores with three
    decimals, a missing value as "-"."""
    names = list(table["run"])
    headers = [n if names.count(n) == 1 else f"{n} ({rid})" for n, rid in zip(names, table["run id"])]
    written = {"test acc": pct, "test AUC": num, "test ECE": num}
    rows = {
        col: [written[col](v) if col in written else (MISSING if missing_value(v) else str(v)) for v in table[col]]
        for col in table.columns
        if col != "run"
    }
    out = pd.DataFrame.from_dict(rows, orient="index", columns=headers)
    out.index.name = "setting"
    return out


def missing_value(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def evaluations_table(runs: dict[str, RunDir], chosen: list[str], legend: dict[str, str]) -> None:
    """The chosen runs' evaluations on other datasets (the Runs page starts them)."""
    evaluations = [
        {
            "run": legend[rid],
            "evaluation": e["name"],
            "dataset": e.get("dataset_title") or e.get("dataset"),
            "tiles scored": e["n"],
            "accuracy": e.get("accuracy"),
            "AUC": e.get("auc"),
        }
        for rid in chosen
        for e in list_evaluations(runs[rid])
    ]
    if evaluations:
        st.subheader("Evaluations on other datasets")
        show_table(
            pd.DataFrame(evaluations),
            percent=["accuracy"],
            column_config={"AUC": st.column_config.NumberColumn(format="%.3f")},
        )


def main() -> None:
    page_setup(__file__)
    runs = {r.id: r for r in listed_runs()}
    if len(runs) < 2:
        st.info("Comparing needs at least two runs; start them on the Train page.")
        link_to_page("pages/2_Train.py", "Train a model", "🏋️")
        return
    summaries = {rid: run_summary(r) for rid, r in runs.items()}
    chosen = choose_runs(runs, summaries)
    if not chosen:
        st.info("Pick runs to compare.")
        return
    legend = {rid: (summaries[rid]["name"] or rid) for rid in chosen}
    colours = run_colours([legend[rid] for rid in chosen])
    curves_section(chosen, legend, colours)
    held_out_section(chosen, legend, colours)
    settings_table(runs, summaries, chosen)
    evaluations_table(runs, chosen, legend)


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (the warm-up) runs nothing
    main()
