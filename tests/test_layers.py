"""The declared layers (import-linter contracts in pyproject.toml) and the 500-line rule hold on the code, and each
check fails when someone breaks it: a copy of the packages with one deliberate violation is refused (slow: one
`lint-imports` process per violation, as `make lint` runs it)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy_tree(tmp_path: Path) -> Path:
    """histo_core, pages/ui and pyproject.toml copied to tmp_path (sources only)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "histo_core", tmp_path / "histo_core", ignore=ignore)
    shutil.copytree(ROOT / "pages" / "ui", tmp_path / "pages" / "ui", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_code_keeps_its_contracts(capsys, monkeypatch):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Contracts: 5 kept, 0 broken." in out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # the ground floor importing a driver: a lower layer reaching up
        ("histo_core/runs.py", "from histo_core import jobs  # noqa", "histo_core is in layers"),
        # a cycle inside one layer (jobs already imports launch), and one inside a subpackage
        ("histo_core/launch.py", "from histo_core import jobs  # noqa", "no import cycles"),
        ("histo_core/datasets/sources.py", "from histo_core.datasets import pcam  # noqa", "no import cycles"),
        # the task process importing the work it runs (a driver may import work: only this contract says no)
        ("histo_core/tasks.py", "def _run():\n    from histo_core import training  # noqa", "never imports the work"),
        # Streamlit in the core, even inside a function
        ("histo_core/errors.py", "def _show():\n    import streamlit  # noqa", "never imports Streamlit"),
        # the pages calling the command line
        ("pages/ui/common.py", "from histo_core import cli  # noqa", "independent of each other"),
    ],
)
def test_a_deliberate_violation_is_caught(tmp_path, module, line, contract):
    root = _copy_tree(tmp_path)
    _append(root / module, line)
    result = _lint_imports(root)
    assert result.returncode != 0
    broken = [chunk for chunk in result.stdout.split("\n\n") if contract in chunk and "BROKEN" in chunk]
    assert broken, result.stdout


@pytest.mark.slow
def test_a_new_module_must_be_placed_in_a_layer(tmp_path):
    root = _copy_tree(tmp_path)
    (root / "histo_core" / "unplaced.py").write_text('"""A module nobody put in a layer."""\n')
    result = _lint_imports(root)
    assert result.returncode != 0 and "histo_core.unplaced" in result.stdout


def test_the_500_line_rule_holds_and_is_checked(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("max_lines", ROOT / ".ci" / "max_lines.py")
    assert spec is not None and spec.loader is not None
    max_lines = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(max_lines)
    here = [str(ROOT / p) for p in ("histo_core", "pages", "app.py", "serve.py")]
    assert max_lines.main(["--max", "500", *here]) == 0, capsys.readouterr().err
    (tmp_path / "long.py").write_text("x = 1\n" * 501)
    (tmp_path / "short.py").write_text("x = 1\n" * 500)
    assert max_lines.main(["--max", "500", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"{tmp_path / 'long.py'}: 501 lines, over the 500-line limit: split it by concern"
    )
