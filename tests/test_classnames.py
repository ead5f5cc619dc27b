"""Class-name matching: NCT abbreviations, user maps, errors."""

from __future__ import annotations

import pytest

from histo_core.classnames import match_classes, parse_class_map, short_name, short_names
from histo_core.errors import HistoError

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


def test_short_names():
    assert [short_name(c) for c in PATHMNIST] == ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
    assert short_name("tumour") == "tumour"
    assert short_names(PATHMNIST[:3]) == ["ADI", "BACK", "DEB"]
    assert short_names(["adipose", "ADI"]) == ["adipose", "ADI"]  # would collide: kept long
    assert short_names(["adipose", "tumour"]) == ["adipose", "tumour"]  # not all known: none shortened


def test_abbreviations_match_long_names_without_a_map():
    folder = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
    assert match_classes(folder, PATHMNIST) == list(range(9))
    assert match_classes(["Adipose", "tum"], PATHMNIST) == [0, 8]


def test_user_map_and_classes_without_counterpart():
    kather = ["01_TUMOR", "02_STROMA", "03_COMPLEX", "07_ADIPOSE"]
    m = parse_class_map("01_TUMOR=TUM, 02_STROMA=cancer-associated stroma,07_adipose=0")
    assert match_classes(kather, PATHMNIST, m) == [8, 7, None, 0]
    assert match_classes(["ADI", "TUM"], PATHMNIST, parse_class_map("TUM=-")) == [0, None]  # unmatched on purpose
    with pytest.raises(HistoError, match="'09_X' is not a class of the dataset"):
        match_classes(kather, PATHMNIST, {"09_X": "TUM"})
    with pytest.raises(HistoError, match="'tumor' is not a class of the model; use one of ADI"):
        match_classes(kather, PATHMNIST, {"01_TUMOR": "tumor"})
    with pytest.raises(HistoError, match="is not DATASET_CLASS=MODEL_CLASS"):
        parse_class_map("01_TUMOR")


def test_suggested_classes_for_kather_2016_and_other_namings():
    from histo_core.classnames import NCT_ABBREVIATIONS, suggest_classes

    nct = list(NCT_ABBREVIATIONS.values())
    kather = ["01_TUMOR", "02_STROMA", "03_COMPLEX", "04_LYMPHO", "05_DEBRIS", "06_MUCOSA", "07_ADIPOSE", "08_EMPTY"]
    got = [None if i is None else list(NCT_ABBREVIATIONS)[i] for i in suggest_classes(kather, nct)]
    assert got == ["TUM", "STR", None, "LYM", "DEB", "NORM", "ADI", "BACK"]
    assert suggest_classes(["benign", "malignant"], ["benign", "malignant"]) == [0, 1]
    assert suggest_classes(["cat", "dog"], ["a", "b"]) == [None, None]
    assert suggest_classes(["tumor", "tumour"], ["tumour"]) == [None, 0]  # the exact match first, one per class
