"""Feature map page (AppTest): the map of the 240 real PathMNIST tiles of a trained run, colourings, a selection
showing its tiles, suspected label errors, the faithfulness table, runs without embeddings; and the Classify
page's most similar training tiles and faithfulness note."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from histo_core import paths

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "7_Feature_map.py")
CLASSIFY = str(ROOT / "pages" / "5_Classify.py")


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [w.value for w in at.warning] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


def _count(values) -> int:
    if isinstance(values, dict):  # plotly's binary encoding: {"dtype": "f4", "bdata": base64}
        import base64

        return len(np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"])))
    return len(values)


def chart_points(at: AppTest, name_prefix: str = "") -> int:
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    return sum(_count(t.get("x", [])) for t in spec["data"] if t.get("name", "").startswith(name_prefix))


@pytest.fixture
def linked_run(trained_pathmnist_run):
    (paths.runs_dir() / trained_pathmnist_run.id).symlink_to(trained_pathmnist_run.path)
    return trained_pathmnist_run


def test_no_model_yet():
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and "No completed run or exported model yet" in at.info[0].value


def test_map_of_real_tiles_and_selection(linked_run, monkeypatch):
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="fm_run").value == linked_run.id
    assert chart_points(at) == 240
    assert "train 160, val 40, test 40 tiles" in texts(at) and "of all 240 tiles" in texts(at)
    from histo_core.label_errors import load_label_errors

    searched = load_label_errors(linked_run) is not None  # the shared run may have been searched by another test
    assert ("suspected label error" in at.selectbox(key="fm_colour").options) == searched
    assert "Select points on the map" in texts(at)

    at.multiselect(key="fm_splits").set_value(["test"]).run()
    assert chart_points(at) == 40
    for colour in ("predicted class", "correct / wrong", "confidence"):
        at.selectbox(key="fm_colour").select(colour).run()
        assert not at.exception, colour

    # a lasso selection of three points: their tiles appear with labels and predictions
    real_chart = st.plotly_chart

    def selecting(fig, **kwargs):
        real_chart(fig, **kwargs)
        pts = [{"customdata": ["test", r]} for r in (0, 5, 5, 7)]
        return {"selection": {"points": pts, "point_indices": [0, 5, 7], "box": [], "lasso": []}}

    monkeypatch.setattr(st, "plotly_chart", selecting)
    at.run()
    assert not at.exception, at.exception
    assert "**3 tile(s) selected**" in texts(at)
    caps = [c for img in at.get("image") for c in img.captions]
    assert len(caps) == 3 and caps[0].startswith("test #0 · true ") and " · pred " in caps[0]
    with np.load(linked_run.predictions_path("test")) as z:
        labels = z["labels"]
    from histo_core.review import run_classes

    assert f"true {run_classes(linked_run)[labels[5]]}" in caps[1]
    assert len(at.dataframe[0].value) == 3


def test_label_error_colouring_and_quality_table(linked_run):
    from histo_core.faithfulness import explain_quality
    from histo_core.label_errors import LabelErrorReport, save_label_errors

    n = 160
    flagged = np.zeros(n, bool)
    flagged[[1, 2, 3]] = True
    report = LabelErrorReport(
        classes=[f"c{i}" for i in range(9)],
        indices=np.arange(n),
        given=np.zeros(n, np.int64),
        probs=np.full((n, 9), 1 / 9, np.float32),
        flagged=flagged,
        thresholds=np.ones(9),
        info={
            "folds": 2,
            "epochs": 1,
            "arch": "resnet9",
            "seconds": 1.0,
            "sampled": False,
            "training_tiles": n,
            "computed_at": "now",
        },
    )
    save_label_errors(linked_run, report)
    explain_quality(linked_run, tiles=3, methods=["GradCAM", "EigenCAM"])
    try:
        at = AppTest.from_file(PAGE, default_timeout=120).run()
        at.selectbox(key="fm_colour").select("suspected label error").run()
        assert not at.exception, at.exception
        spec = json.loads(at.get("plotly_chart")[0].proto.spec)
        names = {t["name"].split(",")[0] for t in spec["data"]}
        assert {"suspected", "not flagged"} <= names
        assert chart_points(at, "suspected") == 3
        table = at.dataframe[0].value
        assert set(table["method"]) == {"GradCAM", "EigenCAM"} and list(table["rank"]) == [1, 2]
        assert "Recompute the table" in [b.label for b in at.button]
    finally:
        linked_run.file("label_errors.npz").unlink()
        linked_run.file("faithfulness.json").unlink()


def test_run_without_embeddings_offers_the_background_job():
    from tests.runfiles import write_run

    run = write_run("completed", seed=1)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, at.exception
    assert "No feature map for" in at.info[0].value
    assert "Compute the feature map" in [b.label for b in at.button]
    assert "SYNTHETIC" not in run.id  # sanity: a write_run run, not the real one


def test_frozen_model_on_another_dataset(linked_run):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.radio(key="fm_source").set_value("Any dataset, with a frozen model").run()
    assert not at.exception, at.exception
    at.selectbox(key="fm_dataset").select("synthetic").run()
    assert not at.exception, at.exception
    assert "No feature map for" in at.info[0].value and "on synthetic" in at.info[0].value


def test_classify_shows_similar_training_tiles(linked_run, pathmnist_mini):
    import io

    from PIL import Image

    with np.load(pathmnist_mini) as z:
        tile = z["train_images"][12]
    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="PNG")
    at = AppTest.from_file(CLASSIFY, default_timeout=120).run()
    at.file_uploader(key="classify_files").set_value([("train12.png", buf.getvalue(), "image/png")])
    at.run(timeout=180)
    assert not at.exception, at.exception
    body = texts(at)
    assert "k-NN vote of the 8 nearest of 160 training tiles" in body
    assert "Faithfulness: " in body and "ROAD score" in body or "Flat GradCAM map" in body
    caps = [c for img in at.get("image") for c in img.captions]
    neighbours = [c for c in caps if " · d=" in c]
    assert len(neighbours) == 8 and neighbours[0].endswith("train #12")
    assert float(neighbours[0].split("d=")[1].split(" ")[0]) < 1e-3


def test_quality_table_shows_shares_in_percent():
    """Bug: the unfaithful/flat shares (0-1) were formatted with %.0f%%, so 25% read "0%"."""
    from pages.ui.feature_map import quality_frame

    doc = {
        "methods": [
            {
                "rank": 1,
                "method": "GradCAM",
                "road_mean": 0.01,
                "road_median": 0.0,
                "unfaithful_share": 0.25,
                "flat_share": 0.5,
                "seconds_per_tile": 0.1,
            }
        ]
    }
    rows, config = quality_frame(doc)
    for col, shown in (("unfaithful_share", "25%"), ("flat_share", "50%")):
        tc = config[col]["type_config"]
        assert tc["format"] % rows[col].iloc[0] == shown
        assert tc["min_value"] <= rows[col].iloc[0] <= tc["max_value"]
    assert doc["methods"][0]["unfaithful_share"] == 0.25  # the document is left as it was


def test_map_legend_lists_each_class_once():
    """Colour by class and a symbol per split made 27 legend entries for 9 classes; the legend lists each colour
    once (toggling it in every split) and the title names the split symbols."""
    import pandas as pd

    from pages.ui.feature_map import scatter

    classes = [f"class {k}" for k in range(9)]
    rows = [(c, s) for c in classes for s in ("train", "val", "test") for _ in range(2)]
    df = pd.DataFrame(
        {
            "x": np.arange(len(rows), dtype=float),
            "y": np.arange(len(rows), dtype=float),
            "split": [s for _, s in rows],
            "row": np.arange(len(rows)),
            "true": [c for c, _ in rows],
            "predicted": [c for c, _ in rows],
            "confidence": np.full(len(rows), 0.9),
            "outcome": "correct",
            "label_error": "not checked",
        }
    )
    fig = scatter(df, "true class", "54 tiles")
    shown = [t.name for t in fig.data if t.showlegend is not False]
    assert shown == classes and len(fig.data) == 27
    assert {t.legendgroup for t in fig.data} == set(classes)
    assert "● train ◆ val ■ test" in fig.layout.title.text
    assert {t.marker.symbol for t in fig.data if t.name == "class 0"} == {"circle", "diamond", "square"}
