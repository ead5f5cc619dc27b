"""Class names across datasets: NCT-CRC-HE abbreviations (PathMNIST's source) and matching a dataset's classes to a
model's, by name, by a known abbreviation or by a user's map.

    short_name("colorectal adenocarcinoma epithelium")      # "TUM"
    parse_class_map("01_TUMOR=TUM,02_STROMA=STR")          # {"01_TUMOR": "TUM", "02_STROMA": "STR"}
    match_classes(["01_TUMOR", "03_COMPLEX"], model_classes, {"01_TUMOR": "TUM"})   # [8, None]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
