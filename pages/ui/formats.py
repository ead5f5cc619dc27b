"""How the app writes numbers, one rule each: accuracies and other shares as percentages (in text, in tables and on
chart axes alike), a missing value as "-", counts with the right plural.

No Streamlit here (charts.py, which builds figures without it, uses these too); the table helpers that need
Streamlit are in pages/ui/common.py (`show_table`, `percent_column`).
"""

from __future__ import annotations

import math

MISSING = "-"  # a value that does not exist (no validation split, no AUC for one class...), never "None"
PERCENT_AXIS = ".0%"  # plotly tickformat of an axis of shares (accuracy per epoch, study curves)
PERCENT_HOVER = ".1%"  # plotly hover format of a share, the same digits as `pct`
TABLE_PERCENT = "percent"  # st.column_config.NumberColumn format of a column of shares (0-1)


def missing(value: object) -> bool:
    """None, NaN or not a number."""
    return not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)


def pct(value: object, digits: int = 1) -> str:
    """An accuracy (or any share in 0-1) as the app writes it everywhere: 0.2083 -> "20.8%"; missing -> "-"."""
    return MISSING if missing(value) else f"{float(value):.{digits}%}"  # type: ignore[arg-type]


def num(value: object, digits: int = 3) -> str:
    """A score that is not a share (AUC, loss, ECE): 0.8553 -> "0.855"; missing -> "-"."""
    return MISSING if missing(value) else f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def plural(count: int, word: str, many: str | None = None) -> str:
    """ "1 run", "3 runs" (`many`: an irregular plural)."""
    return f"{count:,} {word if count == 1 else many or word + 's'}"
