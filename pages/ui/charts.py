"""Plotly figures for runs, built from the plain dicts of a run directory (metrics rows, reports).

No Streamlit here: every function returns a `go.Figure`, so the figures are unit-testable and the CLI or a
notebook could reuse them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from pages.ui.formats import PERCENT_AXIS, PERCENT_HOVER, num, pct

# metric key in a metrics.jsonl row -> (train key or None, val key, axis title)
CURVE_METRICS: dict[str, tuple[str | None, str, str]] = {
    "loss": ("train_loss", "val_loss", "loss"),
    "accuracy": ("train_acc", "val_acc", "accuracy"),
    "auc": (None, "val_auc", "AUC"),
}
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#d62728"


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 340) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        height=height,
        margin=dict(l=50, r=20, t=50, b=45),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "epoch" in r]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def curve_figure(rows: Sequence[Mapping[str, Any]], metric: str) -> go.Figure:
    """Train vs validation `metric` ("loss", "accuracy", "auc") per epoch."""
    train_key, val_key, label = CURVE_METRICS[metric]
    fig = go.Figure()
    train_name = "train (labels trained on)" if metric == "accuracy" else "train"
    for key, name, colour in ((train_key, train_name, TRAIN_COLOUR), (val_key, "validation", VAL_COLOUR)):
        if key is None:
            continue
        xs, ys = _series(rows, key)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, line=dict(color=colour)))
    fig.update_xaxes(dtick=1 if len(rows) <= 20 else None)
    if metric == "accuracy":
        fig.update_yaxes(tickformat=PERCENT_AXIS, hoverformat=PERCENT_HOVER)
    return _layout(fig, f"{label} per epoch", "epoch", label)


# Ten distinct colours (Plotly's qualitative palette): one per compared run, the same in every chart of the page.
RUN_COLOURS = (
    "#636EFA",
    "#EF553B",
    "#00CC96",
    "#AB63FA",
    "#FFA15A",
    "#19D3F3",
    "#FF6692",
    "#B6E880",
    "#FF97FF",
    "#FECB52",
)


def run_colours(labels: Sequence[str]) -> dict[str, str]:
    """A distinct colour per run label (cycling past ten)."""
    return {label: RUN_COLOURS[i % len(RUN_COLOURS)] for i, label in enumerate(labels)}


METRIC_LABELS = {
    "train_loss": "training loss",
    "val_loss": "validation loss",
    "train_acc": "training accuracy (on the labels trained on, noisy ones included)",
    "val_acc": "validation accuracy",
    "val_auc": "validation AUC",
    "lr": "learning rate",
    "images_per_s": "training images / s",
}


def metric_label(key: str) -> str:
    """A metrics.jsonl column in words (`train_acc` -> "training accuracy (on the labels trained on, ...)")."""
    return METRIC_LABELS.get(key, key.replace("_", " "))


def overlay_figure(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    key: str,
    title: str | None = None,
    colours: Mapping[str, str] | None = None,
) -> go.Figure:
    """One line per run: `key` (a metrics.jsonl column, e.g. "val_acc") per epoch. `series`: label -> rows."""
    colours = colours or run_colours(list(series))
    fig = go.Figure()
    for label, rows in series.items():
        xs, ys = _series(rows, key)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=label, line=dict(color=colours.get(label))))
    label = metric_label(key)
    if key.endswith("_acc"):  # accuracies are percentages everywhere in the app
        fig.update_yaxes(tickformat=PERCENT_AXIS, hoverformat=PERCENT_HOVER)
    return _layout(fig, title or f"{label} per epoch", "epoch", label, height=420)


def metrics_bar_figure(
    values: Mapping[str, Mapping[str, float | None]],
    colours: Mapping[str, str] | None = None,
    title: str = "Test metrics",
) -> go.Figure:
    """Grouped bars: one group per metric (accuracy, AUC...), one bar per run. `values`: run label -> metric -> value."""
    colours = colours or run_colours(list(values))
    fig = go.Figure()
    for label, metrics in values.items():
        names = [m for m, v in metrics.items() if isinstance(v, (int, float))]
        fig.add_trace(
            go.Bar(
                x=names,
                y=[metrics[m] for m in names],
                name=label,
                marker_color=colours.get(label),
                text=[pct(metrics[m]) if m == "accuracy" else num(metrics[m]) for m in names],
                textposition="outside",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.1])
    return _layout(fig, title, "", "value", height=380)


def count_ticks(top: float) -> dict[str, Any]:
    """Axis (or colour bar) settings for counts up to `top`: whole numbers only, never a tick at 0.5."""
    return {"dtick": 1, "tickformat": "d"} if top < 10 else {"tickformat": ",d"}


def confusion_figure(
    confusion: Sequence[Sequence[float]],
    classes: Sequence[str],
    normalize: bool = False,
    title: str = "Confusion matrix",
    clickable: bool = False,
    compact: bool = False,
) -> go.Figure:
    """Heat map, rows = true class, columns = predicted. normalize=True divides each row by its total (recall).
    `compact` (several side by side, Compare): no colour bar, cell numbers at a readable 13 px, tight margins."""
    counts = np.asarray(confusion, dtype=float)
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        text = [[f"{v:.2f}" for v in row] for row in values]
    else:
        values = counts
        text = [[f"{int(v)}" for v in row] for row in values]
    from histo_core.classnames import short_names

    full = [str(c) for c in classes]
    names = short_names(full)  # NCT abbreviations on the axes where the dataset has them; full names on hover
    hover = [[[full[i], full[j]] for j in range(len(full))] for i in range(len(full))]
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=names,
            y=names,
            text=text,
            texttemplate="%{text}",
            customdata=hover,
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalize else None,
            colorbar=None if normalize else count_ticks(float(counts.max(initial=0))),
            hovertemplate="true %{customdata[0]}<br>predicted %{customdata[1]}<br>%{text}<extra></extra>",
        )
    )
    if clickable:
        # Invisible markers on the cells: plotly's point selection reports the clicked cell. A click goes to the
        # point under the pointer's hover, so the markers carry the hover and the heat map none (with the hover
        # on the heat map, the heat map took the click and nothing was selected).
        cells = [(i, j) for i in range(len(names)) for j in range(len(names))]
        fig.update_traces(hoverinfo="skip", hovertemplate=None, selector=dict(type="heatmap"))
        fig.add_trace(
            go.Scatter(
                x=[names[j] for _, j in cells],
                y=[names[i] for i, _ in cells],
                mode="markers",
                customdata=[[i, j, full[i], full[j], text[i][j]] for i, j in cells],
                showlegend=False,
                hovertemplate="true %{customdata[2]}<br>predicted %{customdata[3]}<br>%{customdata[4]}"
                "<br>click to list these tiles<extra></extra>",
                marker=dict(size=30, opacity=0.01, symbol="square", color="#000"),
                name="cells",
            )
        )
        fig.update_layout(clickmode="event+select", dragmode=False, hovermode="closest")
    fig.update_yaxes(autorange="reversed")
    size = max(360, 60 + 38 * len(names))
    fig = _layout(fig, title + (" (row-normalised)" if normalize else " (counts)"), "predicted", "true", height=size)
    if compact:
        fig.update_traces(showscale=False, textfont=dict(size=13), selector=dict(type="heatmap"))
        fig.update_layout(margin=dict(l=45, r=5, t=50, b=40), title_font=dict(size=13))
    return fig


def selected_cell(selection: Any) -> tuple[int, int] | None:
    """(true, predicted) of the cell clicked on a clickable confusion_figure, from st.plotly_chart's selection
    state (an object or dict with "points"); None when nothing (or something else) is selected."""
    try:
        points = selection["selection"]["points"]
    except (KeyError, TypeError):
        points = getattr(getattr(selection, "selection", None), "points", None) or []
    for point in points or []:
        data = point.get("customdata") if isinstance(point, Mapping) else None
        if isinstance(data, (list, tuple)) and len(data) >= 2:
            try:
                return int(data[0]), int(data[1])
            except (TypeError, ValueError):  # a point of another trace (the heat map's names)
                continue
    return None


def roc_figure(roc: Mapping[str, Mapping[str, Any]], title: str = "ROC curves") -> go.Figure:
    """One curve per class (one-vs-rest) from a report's "roc" dict; the chance diagonal dashed."""
    fig = go.Figure()
    for cls, curve in roc.items():
        if not curve or not curve.get("fpr"):
            continue
        auc = curve.get("auc")
        label = f"{cls} (AUC {auc:.3f})" if isinstance(auc, (int, float)) else f"{cls}"
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=label))
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(dash="dash", color="grey"), showlegend=False
        )
    )
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, title, "false positive rate", "true positive rate", height=420)


def reliability_figure(
    reliability: Mapping[str, Sequence[float]], ece: float | None = None, title: str = "Reliability diagram"
) -> go.Figure:
    """Accuracy per confidence bin (bars at the bin centres; empty bins left out) against the diagonal."""
    edges = np.asarray(reliability.get("bin_edges") or [], dtype=float)
    conf = reliability.get("confidence") or []
    acc = reliability.get("accuracy") or []
    count = reliability.get("count") or []
    centres, widths, accs, confs, counts = [], [], [], [], []
    for i in range(min(len(edges) - 1, len(acc))):
        n = count[i] if i < len(count) else None
        if acc[i] is None or (n is not None and n == 0):
            continue
        centres.append((edges[i] + edges[i + 1]) / 2)
        widths.append(edges[i + 1] - edges[i])
        accs.append(acc[i])
        confs.append(conf[i] if i < len(conf) else None)
        counts.append(n)
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=centres,
            y=accs,
            width=widths,
            name="accuracy",
            marker_color=TRAIN_COLOUR,
            text=[f"{n}" if n is not None else "" for n in counts],
            textposition="outside",
            customdata=np.array([confs, counts], dtype=object).T if centres else None,
            hovertemplate=f"accuracy %{{y:{PERCENT_HOVER}}}<br>mean confidence %{{customdata[0]:.3f}}"
            "<br>%{customdata[1]} tiles<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line=dict(dash="dash", color="grey"))
    )
    fig.update_xaxes(range=[0, 1])
    label = f"{title} (ECE {ece:.3f})" if isinstance(ece, (int, float)) else title
    fig.update_yaxes(range=[0, 1.12])  # room for the tile counts above the bars
    return _layout(fig, label + "; tiles per bin above the bars", "confidence", "accuracy", height=380)


def lr_find_figure(lrs: Sequence[float], losses: Sequence[float], suggested_lr: float | None = None) -> go.Figure:
    """Loss against learning rate on a log axis, the suggested rate marked."""
    fig = go.Figure(go.Scatter(x=list(lrs), y=list(losses), mode="lines", name="loss"))
    if suggested_lr:
        # On a log axis plotly places shapes (the vline) at data values but annotations at log10 values: a vline
        # at log10(lr) (a negative number) stretched the axis down to 1e-60 and put the marker at the far left.
        fig.add_vline(x=float(suggested_lr), line_dash="dash", line_color=VAL_COLOUR)
        fig.add_annotation(
            x=float(np.log10(suggested_lr)),
            y=1,
            yref="paper",
            text=f"suggested {suggested_lr:.2g}",
            showarrow=False,
            yanchor="bottom",
        )
    tested = [float(v) for v in lrs if v and v > 0]
    if tested:  # the axis spans exactly the rates tried (log axis ranges are given in log10)
        fig.update_xaxes(range=[float(np.log10(min(tested))), float(np.log10(max(tested)))])
    fig.update_xaxes(type="log", exponentformat="power")
    return _layout(fig, "Learning-rate finder", "learning rate (log scale)", "loss", height=360)


def _ci_text(row: Mapping[str, Any], metric: str) -> str:
    """ ", 95% CI a-b (n seeds)" for accuracy rows that have a bootstrap interval, else the seed count."""
    lo, hi = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    shown = pct if metric == "accuracy" else num
    ci = f", 95% bootstrap CI {shown(lo)}-{shown(hi)}" if lo is not None and hi is not None else ""
    return f"{ci} ({row.get('seeds', '?')} seeds)"


def study_figure(
    summary: Sequence[Mapping[str, Any]], metric: str = "accuracy", baseline: float | None = None
) -> go.Figure:
    """A study's test `metric` (accuracy, auc, macro_f1) against the noise level: one line per architecture +
    method with mean ± sd over seeds as error bars (the bootstrap CI of the mean on hover), and the clean
    baseline as a dashed line."""
    fig = go.Figure()
    value = PERCENT_HOVER if metric == "accuracy" else ".3f"
    names = list(dict.fromkeys((r["arch"], r["method"]) for r in summary))
    several_archs = len({a for a, _ in names}) > 1
    for arch, method in names:
        rows = sorted((r for r in summary if (r["arch"], r["method"]) == (arch, method)), key=lambda r: r["noise"])
        rows = [r for r in rows if r.get(f"{metric}_mean") is not None]
        fig.add_trace(
            go.Scatter(
                x=[r["noise"] for r in rows],
                y=[r[f"{metric}_mean"] for r in rows],
                error_y=dict(type="data", array=[r.get(f"{metric}_sd") or 0.0 for r in rows], visible=True),
                mode="lines+markers",
                name=f"{method} ({arch})" if several_archs else method,
                customdata=[_ci_text(r, metric) for r in rows],
                hovertemplate=f"noise %{{x}}: %{{y:{value}}} ± %{{error_y.array:{value}}}%{{customdata}}"
                "<extra>%{fullData.name}</extra>",
            )
        )
    if baseline is not None:
        fig.add_hline(y=baseline, line_dash="dash", line_color="grey", annotation_text="clean baseline")
    title = {"accuracy": "test accuracy", "auc": "test AUC", "macro_f1": "test macro-F1"}.get(metric, metric)
    if metric == "accuracy":
        fig.update_yaxes(tickformat=PERCENT_AXIS)
    return _layout(fig, f"{title} against label noise (mean ± sd over seeds)", "noise level", title, height=420)
