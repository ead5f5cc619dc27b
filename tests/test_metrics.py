"""classification_report: values checked against hand computations and sklearn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from histo_core.metrics import classification_report, per_sample_loss, reliability

CLASSES = ["a", "b", "c"]


def _onehotish(labels, k, p=0.8):
    probs = np.full((len(labels), k), (1 - p) / (k - 1))
    probs[np.arange(len(labels)), labels] = p
    return probs


def test_report_has_every_key_and_exact_values():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    probs = _onehotish(preds, 3)
    r = classification_report(probs, labels, CLASSES)
    assert set(r) >= {
        "n",
        "loss",
        "accuracy",
        "auc",
        "auc_kind",
        "ece",
        "classes",
        "per_class",
        "confusion",
        "roc",
        "reliability",
    }
    assert r["n"] == 6 and r["accuracy"] == pytest.approx(4 / 6)
    assert r["auc_kind"] == "macro-ovr"
    assert r["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    b = r["per_class"][1]
    assert b["class"] == "b" and b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0 and b["support"] == 2
    assert r["loss"] == pytest.approx(float(np.mean(-np.log(probs[np.arange(6), labels]))))
    expected_auc = np.mean([roc_auc_score(labels == k, probs[:, k]) for k in range(3)])
    assert r["auc"] == pytest.approx(expected_auc)
    # every prediction has confidence 0.8 and 4/6 are right: one populated bin, ECE = |0.8 - 0.667|
    assert r["ece"] == pytest.approx(abs(0.8 - 4 / 6))
    rel = r["reliability"]
    assert len(rel["bin_edges"]) == 16 and len(rel["count"]) == 15 and sum(rel["count"]) == 6


def test_missing_class_gives_none_auc_and_macro_over_present():
    labels = np.array([0, 0, 1, 1])  # class c absent
    probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    r = classification_report(probs, labels, CLASSES)
    assert r["per_class"][2]["auc"] is None and r["per_class"][2]["support"] == 0
    present = [roc_auc_score(labels == k, probs[:, k]) for k in (0, 1)]
    assert r["auc"] == pytest.approx(np.mean(present))
    assert "c" not in r["roc"] and set(r["roc"]) == {"a", "b"}


def test_binary_reports_positive_class_auc():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    score = np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1)
    probs = np.stack([1 - score, score], 1)
    r = classification_report(probs, labels, ["normal", "tumour"])
    assert r["auc_kind"] == "positive-class"
    assert r["auc"] == pytest.approx(roc_auc_score(labels, score))
    assert list(r["roc"]) == ["tumour"]
    roc = r["roc"]["tumour"]
    assert len(roc["fpr"]) <= 200 and roc["fpr"][0] == 0.0 and roc["fpr"][-1] == 1.0 and roc["tpr"][-1] == 1.0


def test_single_class_split_and_empty_split_do_not_crash():
    r = classification_report(_onehotish(np.array([1, 1, 1]), 3), np.array([1, 1, 1]), CLASSES)
    assert r["auc"] is None and r["accuracy"] == 1.0
    e = classification_report(np.zeros((0, 3)), np.zeros(0, int), CLASSES)
    assert e["n"] == 0 and e["accuracy"] is None and e["confusion"] == [[0] * 3] * 3


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        classification_report(np.zeros((4, 2)), np.zeros(4, int), CLASSES)


def test_reliability_perfectly_calibrated_has_zero_ece():
    # 10 predictions at confidence 0.7 of which 7 are right
    probs = np.tile([[0.7, 0.3]], (10, 1))
    labels = np.array([0] * 7 + [1] * 3)
    assert reliability(probs, labels)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_per_sample_loss_is_cross_entropy():
    probs = np.array([[0.25, 0.75], [0.5, 0.5]])
    assert per_sample_loss(probs, np.array([1, 0])) == pytest.approx([-np.log(0.75), -np.log(0.5)])


@pytest.mark.parametrize("seed", range(6))
def test_numpy_metrics_equal_sklearn(seed):
    """The report's numpy metrics (no scikit-learn in a training process) give scikit-learn's values, ties included."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_curve

    from histo_core.metrics import binary_roc, confusion, precision_recall_f1

    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(5, 400)), int(rng.integers(2, 6))
    labels = rng.integers(0, k, n)
    labels[:k] = np.arange(k)
    probs = rng.dirichlet(np.ones(k), n).round(int(rng.integers(1, 4)))  # rounding makes ties
    preds = probs.argmax(1)
    for c in range(k):
        fpr, tpr, _ = roc_curve(labels == c, probs[:, c], drop_intermediate=True)
        ours = binary_roc(labels == c, probs[:, c])
        np.testing.assert_allclose(ours[0], fpr)
        np.testing.assert_allclose(ours[1], tpr)
        assert float(np.trapezoid(ours[1], ours[0])) == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
    cm = confusion(labels, preds, k)
    np.testing.assert_array_equal(cm, confusion_matrix(labels, preds, labels=list(range(k))))
    expected = precision_recall_fscore_support(labels, preds, labels=list(range(k)), zero_division=0)
    for ours, theirs in zip(precision_recall_f1(cm), expected):
        np.testing.assert_allclose(ours, theirs)


@pytest.mark.slow
def test_metrics_do_not_import_sklearn():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from histo_core.metrics import classification_report as r; "
        "r(np.array([[.9,.1],[.2,.8],[.6,.4]]), np.array([0,1,1]), ['a','b']); print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
