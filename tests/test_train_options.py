"""The one table of training options (histo_core.train_options): every TrainConfig field has exactly one entry,
and the command line and the Train page's form are both made from it, so an option added there shows in both."""

from __future__ import annotations

import argparse
import ast
import io
import tokenize
from collections import Counter
from pathlib import Path

import pytest

from histo_core import config as C
from histo_core.cli import build_parser
from histo_core.config import ELSEWHERE, config_paths, field_kind
from histo_core.models import ARCHITECTURES
from histo_core.train_options import GROUPS, OPTIONS, TABLE

ROOT = Path(__file__).resolve().parent.parent


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]


def test_every_config_field_has_exactly_one_entry():
    counts = Counter(o.path for o in TABLE)
    assert sorted(p for p, n in counts.items() if n > 1) == []  # no option described twice
    assert set(counts) == set(config_paths())  # none missing, none without a field
    assert all(o.label and o.help for o in TABLE)
    assert GROUPS[0] == "" and ELSEWHERE not in GROUPS


def test_choices_come_from_the_registries_and_the_literals():
    assert OPTIONS["arch"].choices() == tuple(ARCHITECTURES)
    assert OPTIONS["loss"].choices() == C.LOSSES and OPTIONS["optimizer"].choices() == C.OPTIMIZERS
    assert OPTIONS["stain_norm"].choices() == C.STAIN_NORMS and OPTIONS["mode"].choices() == C.MODES
    assert OPTIONS["arch"].choice_label("resnet9") == "ResNet-9"  # short: the description is said under it
    assert OPTIONS["arch"].choice_caption("resnet9") == ARCHITECTURES["resnet9"].description
    backbones = [n for n, a in ARCHITECTURES.items() if a.has_backbone]
    assert all(n in OPTIONS["pretrained"].help_text() for n in backbones)
    assert "pathmnist" in OPTIONS["dataset"].help_text()
    # every choice option's Literal is the one list of allowed values (validation uses the same tuple)
    for o in TABLE:
        if o.choices is not None and o.path != "arch":
            assert o.kind is str and set(o.choice_labels) <= set(o.choices()), o.path
            assert set(o.choice_captions) <= set(o.choices()), o.path


def test_types_follow_the_dataclass_annotations():
    assert field_kind("epochs") is int and field_kind("size") is int  # "int | None"
    assert field_kind("lr") is float and field_kind("mpp") is float  # "float | None"
    assert field_kind("tta") is bool and field_kind("augment.flip") is bool
    assert field_kind("loss") is str and field_kind("dataset") is str


def test_applies_says_when_an_option_matters():
    values = {"optimizer": "adam", "loss": "sce", "noise": 0.0, "train_splits": "train+val"}
    assert not OPTIONS["momentum"].is_active(values.get)
    assert OPTIONS["sce_alpha"].is_active(values.get) and not OPTIONS["gce_q"].is_active(values.get)
    assert not OPTIONS["noise_mode"].is_active(values.get)  # no noise: its mode does not matter
    assert not OPTIONS["monitor"].is_active(values.get)  # nothing to monitor without a validation split
    assert OPTIONS["epochs"].is_active(values.get)


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_the_command_line_exposes_every_option_with_the_tables_help(command):
    actions = {a.dest: a for a in _subparser(command)._actions}
    for o in TABLE:
        action = actions[o.name]
        assert action.option_strings[0] == o.flag, o.path
        assert action.help == o.help_text(), o.path
        if o.kind is bool:
            assert isinstance(action, argparse.BooleanOptionalAction), o.path
        else:
            assert action.type is o.kind, o.path
        if o.choices is not None:
            assert action.metavar == "{" + ",".join(o.choices()) + "}", o.path


def test_the_study_command_leaves_out_only_its_grid():
    from histo_core.commands.study import GRID_FIELDS

    dests = {a.dest for a in _subparser("study")._actions}
    assert {o.name for o in TABLE} - dests == set(GRID_FIELDS)


def test_the_form_is_made_from_the_table():
    from pages.ui import train_form

    assert train_form.FORM_FIELDS == [o.path for o in TABLE if o.group != ELSEWHERE]
    assert set(train_form.FORM_FIELDS) | set(train_form.OUTSIDE_FORM) == set(config_paths())
    # the form's module spells no option: no labels, choices or rules of its own
    source = (ROOT / "pages" / "ui" / "train_form.py").read_text()
    assert not any(f'"{o.label}"' in source for o in TABLE)


def test_no_architecture_name_is_spelled_outside_the_registry():
    """An architecture's name appears as a string literal only in histo_core/models.py (the registry and the
    default picks); everything else reads the registry."""
    names = set(ARCHITECTURES)
    found = []
    for path in sorted([*(ROOT / "histo_core").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "app.py"]):
        if path == ROOT / "histo_core" / "models.py":
            continue
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type == tokenize.STRING and not tok.string.startswith(('"""', "'''", 'f"', "f'")):
                try:
                    value = ast.literal_eval(tok.string)
                except (ValueError, SyntaxError):
                    continue
                if value in names:
                    found.append(f"{path.relative_to(ROOT)}:{tok.start[0]} {tok.string}")
    assert found == []
