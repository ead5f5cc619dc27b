"""Class names across datasets: NCT-CRC-HE abbreviations (PathMNIST's source) and matching a dataset's classes to a
model's, by name, by a known abbreviation or by a user's map.

    short_name("colorectal adenocarcinoma epithelium")      # "TUM"
    parse_class_map("01_TUMOR=TUM,02_STROMA=STR")          # {"01_TUMOR": "TUM", "02_STROMA": "STR"}
    match_classes(["01_TUMOR", "03_COMPLEX"], model_classes, {"01_TUMOR": "TUM"})   # [8, None]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from histo_core.errors import HistoError

# NCT-CRC-HE-100K abbreviations (Kather et al. 2019) -> PathMNIST's class names (MedMNIST v2)
NCT_ABBREVIATIONS: dict[str, str] = {
    "ADI": "adipose",
    "BACK": "background",
    "DEB": "debris",
    "LYM": "lymphocytes",
    "MUC": "mucus",
    "MUS": "smooth muscle",
    "NORM": "normal colon mucosa",
    "STR": "cancer-associated stroma",
    "TUM": "colorectal adenocarcinoma epithelium",
}
_LONG_TO_SHORT = {v.lower(): k for k, v in NCT_ABBREVIATIONS.items()}
NO_COUNTERPART = "-"  # in a class map, CLASS=- : this dataset class has no counterpart (reported apart)


def short_name(name: str) -> str:
    """The NCT abbreviation of a PathMNIST class name (ADI ... TUM); any other name unchanged."""
    return _LONG_TO_SHORT.get(str(name).strip().lower(), str(name))


def short_names(classes: Sequence[str]) -> list[str]:
    """Short names for a class list when the dataset has them (every class a PathMNIST/NCT name), else the
    names themselves (a half-abbreviated list reads worse than either)."""
    short = [short_name(c) for c in classes]
    known = all(s in NCT_ABBREVIATIONS for s in short) and len(set(short)) == len(short)
    return short if known else [str(c) for c in classes]


def _key(name: str) -> str:
    text = str(name).strip().lower()
    return _LONG_TO_SHORT.get(text, text.upper() if text.upper() in NCT_ABBREVIATIONS else text).lower()


# words a dataset's class names use for the NCT classes (Kather 2016's 01_TUMOR ... 08_EMPTY among them)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "TUM": ("tumor", "tumour", "cancer", "carcinoma", "adenocarcinoma", "malignant", "epithelium"),
    "STR": ("stroma", "stromal"),
    "LYM": ("lympho", "lymphocyte", "lymphocytes", "lymphoid", "immune"),
    "DEB": ("debris", "necrosis", "necrotic"),
    "NORM": ("mucosa", "normal"),
    "ADI": ("adipose", "fat"),
    "BACK": ("empty", "background", "blank", "glass"),
    "MUC": ("mucus", "mucin"),
    "MUS": ("muscle", "smooth muscle", "muscularis"),
}


def _words(name: str) -> str:
    """ "01_TUMOR" -> "tumor": a dataset class name without its number prefix, lower case, spaces for _ and -."""
    import re

    return re.sub(r"^\d+[\s_.-]*", "", str(name).strip()).replace("_", " ").replace("-", " ").strip().lower()


def _concept(name: str) -> str | None:
    """The NCT class a name stands for (its abbreviation, long name or a known word: "tumour", "LYMPHO",
    "lymphocytes", "empty"), else None."""
    raw = str(name).strip().lower()
    if raw in _LONG_TO_SHORT:
        return _LONG_TO_SHORT[raw]
    words = _words(name)
    if not words:
        return None
    if words.upper() in NCT_ABBREVIATIONS:
        return words.upper()
    if words in _LONG_TO_SHORT:
        return _LONG_TO_SHORT[words]
    for abbrev, syns in SYNONYMS.items():
        if words in syns or any(w in syns for w in words.split()):
            return abbrev
    return None


def suggest_classes(dataset_classes: Sequence[str], model_classes: Sequence[str]) -> list[int | None]:
    """For each dataset class, the model class it most likely is, to pre-fill a class map a person then checks:
    the automatic match (`match_classes`: same name or NCT abbreviation), else the name without a number
    prefix matched the same way, else known words for the NCT classes (TUMOR -> TUM, LYMPHO -> LYM, EMPTY ->
    BACK), else a close spelling (difflib, ratio >= 0.8) of a model class or its abbreviation. A model class
    is suggested for one dataset class at most; None where nothing fits (03_COMPLEX)."""
    import difflib

    auto = match_classes(dataset_classes, model_classes)
    taken = {m for m in auto if m is not None}
    out: list[int | None] = []
    short = [short_name(c).lower() for c in model_classes]
    full = [str(c).lower() for c in model_classes]
    for name, a in zip(dataset_classes, auto):
        if a is not None:
            out.append(a)
            continue
        words = _words(name)
        found = _model_index(words, model_classes) if words and not words.isdigit() else None
        if found is None:
            concept = _concept(words)
            found = next((i for i, c in enumerate(model_classes) if concept and _concept(str(c)) == concept), None)
        if found is None and words:
            scores = [
                max(difflib.SequenceMatcher(None, words, f).ratio(), difflib.SequenceMatcher(None, words, s).ratio())
                for f, s in zip(full, short)
            ]
            best = int(np.argmax(scores)) if scores else -1
            found = best if best >= 0 and scores[best] >= 0.8 else None
        if found is not None and found in taken:
            found = None
        if found is not None:
            taken.add(found)
        out.append(found)
    return out


def parse_class_map(text: str | None) -> dict[str, str]:
    """ "SRC=DST,SRC2=DST2" (a dataset class = a model class) -> dict. Raises HistoError on a malformed pair."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        src, sep, dst = part.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise HistoError(
                f"class map: {part.strip()!r} is not DATASET_CLASS=MODEL_CLASS (example: 01_TUMOR=TUM,02_STROMA=STR)"
            )
        out[src.strip()] = dst.strip()
    return out


def format_class_map(mapping: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in mapping.items())


def _model_index(target: str, model_classes: Sequence[str]) -> int | None:
    wanted = _key(target)
    for i, c in enumerate(model_classes):
        if _key(c) == wanted:
            return i
    text = str(target).strip()
    return int(text) if text.isdigit() and int(text) < len(model_classes) else None


def match_classes(
    dataset_classes: Sequence[str], model_classes: Sequence[str], class_map: Mapping[str, str] | None = None
) -> list[int | None]:
    """For each dataset class, the index of the model class it is (None: no counterpart).

    A class named in `class_map` maps to the model class named there (by name, NCT abbreviation or index; "-":
    none);
    the others match a model class of the same name, case-insensitively, an NCT abbreviation matching its long
    name (TUM = colorectal adenocarcinoma epithelium). Raises HistoError naming a map entry that fits nothing."""
    class_map = dict(class_map or {})
    by_key = {_key(c): c for c in dataset_classes}
    unknown = [k for k in class_map if _key(k) not in by_key]
    if unknown:
        raise HistoError(
            f"class map: {unknown[0]!r} is not a class of the dataset; its classes are "
            f"{', '.join(map(str, dataset_classes))}"
        )
    mapped = {by_key[_key(k)]: v for k, v in class_map.items()}
    out: list[int | None] = []
    for c in dataset_classes:
        if c in mapped and mapped[c].strip() == NO_COUNTERPART:
            out.append(None)
        elif c in mapped:
            idx = _model_index(mapped[c], model_classes)
            if idx is None:
                raise HistoError(
                    f"class map: {c}={mapped[c]}: {mapped[c]!r} is not a class of the model; use one of "
                    + ", ".join(f"{short_name(m)}" for m in model_classes)
                )
            out.append(idx)
        else:
            out.append(_model_index(c, model_classes) if not str(c).strip().isdigit() else None)
    return out
