"""One evaluation report (a run's test or validation split, or an evaluation on another dataset): the headline
metrics, then tabs for the confusion matrix, the per-class table, ROC curves and the reliability diagram. The Runs
page and the evaluation panel both show reports through `render_report`."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from histo_core.classnames import short_names
from pages.ui import charts
from pages.ui.common import WRAP, show_table
from pages.ui.formats import num, pct


def render_report(report: dict[str, Any], key: str) -> None:
    """Accuracy, AUC, loss, ECE, then tabs for what the report holds: confusion matrix (counts / row-normalised,
    short class names, long on hover), per-class table, ROC curves, reliability diagram with tiles per bin."""

    classes = report.get("classes") or []
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("accuracy", pct(report.get("accuracy")))
    c2.metric("AUC" + (f" ({report['auc_kind']})" if report.get("auc_kind") else ""), num(report.get("auc"), 4))
    c3.metric("loss", num(report.get("loss"), 4))
    c4.metric(
        "ECE",
        num(report.get("ece"), 4),
        help="expected calibration error: the gap between confidence and "
        "accuracy, averaged over confidence bins (0 is perfect)",
    )
    parts = [
        (name, part)
        for name, part in (
            ("Confusion matrix", "confusion"),
            ("Per class", "per_class"),
            ("ROC", "roc"),
            ("Reliability", "reliability"),
        )
        if report.get(part)
    ]
    if not parts:
        return
    for (_name, part), tab in zip(parts, st.tabs([p[0] for p in parts])):
        with tab:
            if part == "confusion":
                normalise = st.toggle("row-normalised (recall per class)", key=f"norm-{key}", **WRAP)
                st.plotly_chart(
                    charts.confusion_figure(report["confusion"], classes, normalize=normalise),
                    width="stretch",
                    key=f"cm-{key}",
                )
            elif part == "per_class":
                show_table(per_class_frame(report), column_config=PER_CLASS_COLUMNS)
            elif part == "roc":
                st.plotly_chart(charts.roc_figure(report["roc"]), width="stretch", key=f"roc-{key}")
            else:
                st.plotly_chart(
                    charts.reliability_figure(report["reliability"], report.get("ece")),
                    width="stretch",
                    key=f"rel-{key}",
                )


PER_CLASS_COLUMNS = {
    "class": st.column_config.TextColumn("class", help="short name; the full name is in the next column"),
    "precision": st.column_config.NumberColumn(format="%.3f"),
    "recall": st.column_config.NumberColumn(format="%.3f"),
    "F1": st.column_config.NumberColumn(format="%.3f"),
    "AUC": st.column_config.NumberColumn(format="%.3f"),
}


def per_class_frame(report: dict[str, Any]) -> pd.DataFrame:
    """Per-class metrics with short class names (NCT: ADI..TUM) first and the full name beside them."""
    rows = report.get("per_class") or []
    short = short_names([r["class"] for r in rows])
    return pd.DataFrame(
        [
            {
                "class": s,
                "full name": r["class"],
                "precision": r["precision"],
                "recall": r["recall"],
                "F1": r["f1"],
                "tiles": r["support"],
                "AUC": r.get("auc"),
            }
            for s, r in zip(short, rows)
        ]
    )
