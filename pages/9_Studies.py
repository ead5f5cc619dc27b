"""Studies: a grid of runs over noise levels and methods, as one thing: accuracy against noise per method, the
table and its CSV, per-class accuracy, label-error detection against the injected flips, "as labelled" against
"with corrections", the recommended method per noise level; cancel, resume or delete the whole study."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from histo_core import liveness
from histo_core import study as S
from histo_core.task_folders import refresh_task, task_summary
from pages.ui.charts import study_figure
from pages.ui.common import page_setup, show_table, url_selectbox, user_errors
from pages.ui.formats import pct, plural

METRICS = {"accuracy": "accuracy", "auc": "AUC", "macro_f1": "macro-F1"}


# The tables' columns have set widths (show_table's `widths`), so that all fit beside the sidebar in a 1024 px
# window: the architecture only when the study has several (its header says how many), the labels only when the
# study compares them; the CSVs have every column.
def _arch(rows: list[dict]) -> dict[str, int]:
    return {"arch": 75} if len({r["arch"] for r in rows}) > 1 else {}


def _score(header: str, width: int):
    """A column of scores that are not shares (AUC, macro-F1), as the app writes them (pages.ui.formats.num)."""
    return st.column_config.NumberColumn(header, format="%.3f", width=width)


def main() -> None:
    page_setup(__file__)

    studies = {t.id: t for t in S.list_studies()}
    if not studies:
        st.info(
            "No study yet. Start one on the Train page ('Run as a noise study', below the training options) or "
            "from a terminal (`python -m histo_core study`, see the README); it appears here as it runs."
        )
        return

    chosen = url_selectbox("Study", "study", "study_id", list(studies))
    task = studies[chosen]
    info = task_summary(task, refresh_task(task))
    spec = (task.task().get("params") or {}).get("spec") or {}
    st.caption(
        f"{info['state']} · {info['progress']:.0%} · {info['message'] or ''} · "
        f"{plural(len(spec.get('archs', [])), 'architecture')} × {plural(len(spec.get('noises', [])), 'noise level')}"
        f" × {plural(len(spec.get('methods', [])), 'method')} × {plural(int(spec.get('seeds', 0)), 'seed')}, "
        f"{spec.get('noise_mode', '')} noise"
        + (" · label-error search measured" if spec.get("find_errors") else "")
        + (" · as labelled and with corrections" if spec.get("compare_corrections") else "")
    )
    if info["error"]:
        st.error(info["error"])

    active = info["state"] in liveness.ACTIVE_STATES
    c1, c2, c3 = st.columns(3)
    if c1.button("Cancel the study", disabled=not active, key="study_cancel"):
        with user_errors():
            S.cancel_study(task)
            st.success("Cancel requested: the driver and its runs stop at their next safe point.")
    if c2.button("Resume", disabled=active or info["state"] == "completed", key="study_resume"):
        with user_errors():
            S.resume_study(task)
            st.success("The study's driver started again: finished runs are kept, the others resumed or started.")
    if c3.button("Delete the study", disabled=active, key="study_delete", help="deletes the study and all its runs"):
        with user_errors():
            S.delete_study(task)
            st.success("Deleted.")
            return

    results = S.study_results(task)
    summary = results["summary"]
    if not summary:
        st.info("No run of this study has finished yet.")
        return

    metric = st.radio(
        "Metric",
        ["accuracy", "auc", "macro_f1"],
        format_func=METRICS.get,
        horizontal=True,
        key="study_metric",
    )
    both_labels = len({r["labels"] for r in summary}) > 1
    clean = [
        r[f"{metric}_mean"]
        for r in summary
        if r["noise"] == 0 and r["method"] == "ce" and r["labels"] == S.AS_LABELLED and r[f"{metric}_mean"]
    ]
    lines = [{**r, "method": f"{r['method']} ({r['labels']})"} for r in summary] if both_labels else summary
    st.plotly_chart(study_figure(lines, metric, baseline=clean[0] if clean else None), width="stretch")

    st.subheader("Recommended method per noise level")
    st.caption("Chosen on the validation split with labels as noisy as the training labels, never on the test split.")
    for noise, rec in results["recommended"].items():
        if rec is None:
            st.text(f"noise {noise}: none yet (no finished run with a validation split)")
            continue
        runner = rec["runner_up"]
        st.text(
            f"noise {noise}: {rec['method']} ({rec['arch']}{', ' + rec['labels'] if both_labels else ''}), "
            f"noisy-validation accuracy {pct(rec['val_noisy_acc'])} "
            f"over {rec['seeds']} seed(s); stays best in {rec['certainty']:.0%} of seed resamples"
            + (f"; runner-up {runner['method']} ({pct(runner['val_noisy_acc'])})" if runner else "")
        )

    st.subheader("Table")
    st.caption(
        f"The {METRICS[metric]} per method and noise level: mean and standard deviation over the seeds"
        + (", and a 95% bootstrap confidence interval" if metric == "accuracy" else "")
        + ". The CSV has every metric and the accuracy on the noisy validation labels."
    )
    table = pd.DataFrame(summary)
    table["ci"] = [
        f"{pct(r['accuracy_ci_low'])}-{pct(r['accuracy_ci_high'])}" if r["accuracy_ci_low"] is not None else None
        for r in summary
    ]
    mean, sd = f"{metric}_mean", f"{metric}_sd"
    show_table(
        table,
        percent=[c for c in table.columns if c.startswith("accuracy")],
        widths=_arch(summary)
        | {"method": 85, "noise": 50}
        | ({"labels": 105} if both_labels else {})
        | {"seeds": 50, mean: 70, sd: 55}
        | ({"ci": 100} if metric == "accuracy" else {}),
        headers={mean: METRICS[metric], sd: "± sd", "ci": "95% CI"},
        column_config={}
        if metric == "accuracy"
        else {c: _score(h, w) for c, h, w in ((mean, METRICS[metric], 70), (sd, "± sd", 55))},
    )
    st.download_button(
        "Download CSV", S.results_csv(results), file_name=f"study-{task.id}.csv", mime="text/csv", key="study_csv"
    )
    if both_labels:
        st.subheader("As labelled against with corrections")
        st.caption(
            "The same cells trained on the labels as given and with the label corrections (Curation page): test "
            "accuracy, mean over seeds; only the training labels differ."
        )
        pair = (
            pd.DataFrame(summary)
            .pivot_table(index=["arch", "method", "noise"], columns="labels", values="accuracy_mean")
            .reset_index()
        )
        if {S.AS_LABELLED, S.WITH_CORRECTIONS} <= set(pair.columns):
            pair["difference"] = pair[S.WITH_CORRECTIONS] - pair[S.AS_LABELLED]
        show_table(
            pair,
            percent=[c for c in pair.columns if c not in ("arch", "method", "noise")],
            widths=_arch(summary)
            | {"method": 85, "noise": 50, S.AS_LABELLED: 95, S.WITH_CORRECTIONS: 115, "difference": 85},
        )

    st.subheader("Per-class accuracy under noise")
    st.caption(
        "Which classes suffer: each class's test accuracy (the share of its tiles classified as it), mean over seeds."
    )
    per_class = pd.DataFrame(results["per_class"])
    if len(per_class):
        variants = list(dict.fromkeys(zip(per_class["arch"], per_class["method"], per_class["labels"])))
        variant = st.selectbox(
            "Method",
            range(len(variants)),
            key="study_class_method",
            format_func=lambda i: " · ".join(variants[i]),
        )
        arch, method, labels = variants[variant]
        chosen_rows = per_class[
            (per_class["arch"] == arch) & (per_class["method"] == method) & (per_class["labels"] == labels)
        ]
        grid = chosen_rows.pivot_table(index="class", columns="noise", values="accuracy_mean")
        grid.columns = [f"noise {c:g}" for c in grid.columns]
        show_table(grid.reset_index(), percent=list(grid.columns))
        st.download_button(
            "Download per-class CSV",
            S.results_csv(results, "per_class"),
            file_name=f"study-{task.id}-per-class.csv",
            mime="text/csv",
            key="study_class_csv",
        )

    st.subheader("Label-error detection against the injected flips")
    if results["detection"]:
        st.caption(
            "How well the label-error search (confident learning) finds the labels the noise flipped: precision and "
            "recall of the flagged tiles, and the average precision of the whole ranking (1 = every flip ranked first)."
        )
        detection = pd.DataFrame(results["detection"])
        show_table(
            detection,
            percent=["precision", "recall", "average_precision"],
            widths={"method": 85}
            | ({"labels": 105} if detection["labels"].nunique() > 1 else {})
            | {"noise": 50, "flagged": 65, "precision": 70, "recall": 60, "average_precision": 100},
            headers={"average_precision": "avg precision"},
        )
        st.download_button(
            "Download detection CSV",
            S.results_csv(results, "detection"),
            file_name=f"study-{task.id}-detection.csv",
            mime="text/csv",
            key="study_detection_csv",
        )
    else:
        st.caption(
            "No label-error search on this study's noisy runs yet: start the study with 'Measure the label-error "
            "search' (Train page) or `--find-errors`, or run the search on a run from the Review page."
        )

    st.subheader("Runs")
    show_table(
        pd.DataFrame(
            [
                {
                    "run": r["run"],
                    "arch": r["arch"],
                    "method": r["method"],
                    "labels": r["labels"],
                    "noise": r["noise"],
                    "seed": r["seed"],
                    "state": r["state"],
                    "test acc": (r["test"] or {}).get("accuracy"),
                }
                for r in results["runs"]
            ]
        ),
        percent=["test acc"],
        widths={"run": 140}
        | _arch(summary)
        | {"method": 80}
        | ({"labels": 100} if both_labels else {})
        | {"noise": 45, "seed": 40, "state": 75, "test acc": 65},
    )


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (the warm-up) runs nothing
    main()
