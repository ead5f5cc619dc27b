"""The Classify CSV: one probability column per class, path and folder, predicted and (folder = class) true class."""

from __future__ import annotations

import numpy as np

from histo_core.tables import classify_table
from histo_core.uploads import TileResult

PATHMNIST = [
    "adipose",
    "background",
    "debris",
    "lymphocytes",
    "mucus",
    "smooth muscle",
    "normal colon mucosa",
    "cancer-associated stroma",
    "colorectal adenocarcinoma epithelium",
]


def test_classify_table_scorable_by_folder():
    probs = np.full(9, 0.01, np.float32)
    probs[8] = 0.92
    good = TileResult(name="a.png", tile=np.zeros((28, 28, 3), np.uint8), probs=probs, notes=["resized"])
    other = TileResult(name="b.png", tile=np.zeros((28, 28, 3), np.uint8), probs=probs)
    bad = TileResult(name="c.png", error="c.png: not an image")
    df = classify_table([good, other, bad], PATHMNIST, ["tiles/TUM/a.png", "STR/b.png", "c.png"])
    assert list(df.columns[:6]) == ["file", "folder", "predicted", "confidence", "true class", "correct"]
    assert [c for c in df.columns if c.startswith("p(")] == [
        f"p({s})" for s in ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
    ]
    first = df.iloc[0]
    assert first["file"] == "tiles/TUM/a.png" and first["folder"] == "TUM"
    assert first["predicted"] == first["true class"] == "colorectal adenocarcinoma epithelium" and first["correct"]
    assert first["p(TUM)"] == 0.92 and first["notes"] == "resized"
    assert df.iloc[1]["true class"] == "cancer-associated stroma" and not df.iloc[1]["correct"]
    assert df.iloc[2]["predicted"] == "" and df.iloc[2]["notes"] == "c.png: not an image"
    assert df.iloc[2]["true class"] == "" and df.iloc[2]["folder"] == "" and np.isnan(df.iloc[2]["p(TUM)"])
