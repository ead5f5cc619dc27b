"""Tables users download: the Classify CSV, scorable against the folders the tiles came from.

frame = classify_table(results, classes, sources=["TUM/a.png", "STR/b.tif"])
# file, folder, predicted, confidence, true class, correct, unlike training score, unlike training,
# p(ADI) ... p(TUM), notes
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from histo_core.classnames import match_classes, short_names


def _folder(source: str) -> str:
    parts = PurePosixPath(str(source).replace("\\", "/")).parts
    return parts[-2] if len(parts) >= 2 else ""


def _name_prefix(source: str) -> str:
    """The leading letters of a file's name before a separator (`ADI-AAAWMSFI.tif` -> `ADI`), else ""."""
    stem = PurePosixPath(str(source).replace("\\", "/")).name
    m = re.match(r"([A-Za-z]+)[-_ .]", stem)
    return m.group(1) if m else ""


def _class_of(name: str, classes: Sequence[str]) -> str | None:
    """The class a folder or name prefix names (by name or NCT abbreviation), else None."""
    if not name:
        return None
    try:
        idx = match_classes([name], classes)[0]
    except Exception:  # a name is only a hint; never fail the table on it
        return None
    return None if idx is None else classes[idx]


def classify_table(results: Sequence, classes: Sequence[str], sources: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per uploaded file (TileResult): its path as given and folder, the predicted class, its probability,
    the true class when the folder's name is a class (by name or NCT abbreviation: TUM/ = colorectal
    adenocarcinoma epithelium) or, without such a folder, when the file's name starts with one (NCT's
    `ADI-AAAWMSFI.tif`), whether the prediction is right, the "unlike the training tiles" score (histo_core.ood:
    1.0 or more is flagged) and why it is flagged, one probability column per class, and notes.
    Unreadable files keep their row with the reason in notes; text cells are empty, never "None"."""
    classes = [str(c) for c in classes]
    short = short_names(classes)
    sources = list(sources) if sources is not None else [r.name for r in results]
    rows = []
    for r, source in zip(results, sources):
        folder = _folder(source)
        true = _class_of(folder, classes) if folder else None
        if true is None:
            true = _class_of(_name_prefix(source), classes)
        row: dict[str, Any] = {
            "file": str(source),
            "folder": folder,
            "predicted": "",
            "confidence": None,
            "true class": true or "",
            "correct": None,
            "unlike training score": None,
            "unlike training": "",
        }
        if r.ok:
            pred = int(np.argmax(r.probs))
            row.update(
                predicted=classes[pred],
                confidence=round(float(r.probs[pred]), 4),
                correct=None if true is None else classes[pred] == true,
                **{
                    "unlike training score": None if r.ood_score is None else round(float(r.ood_score), 3),
                    "unlike training": r.unlike_training or "",
                },
            )
        for s, p in zip(short, r.probs if r.ok else [None] * len(classes)):
            row[f"p({s})"] = None if p is None else round(float(p), 4)
        row["notes"] = r.error if not r.ok else "; ".join(r.notes)
        rows.append(row)
    return pd.DataFrame(
        rows,
        columns=[
            "file",
            "folder",
            "predicted",
            "confidence",
            "true class",
            "correct",
            "unlike training score",
            "unlike training",
            *[f"p({s})" for s in short],
            "notes",
        ],
    )
