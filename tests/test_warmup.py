"""The server's background warm-up (histo_core.warmup): once per process, imports (every page's module among them), the
default dataset and the default model."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest

from histo_core import model_cache, warmup


@pytest.fixture(autouse=True)
def unfreeze():
    """The warm-up freezes the heap (gc.freeze); the next test starts with a collector that sees everything."""
    yield
    gc.unfreeze()


def fresh(monkeypatch) -> None:
    monkeypatch.setattr(warmup, "_thread", None)
    monkeypatch.setattr(
        warmup,
        "_state",
        {"started": None, "imports_s": None, "dataset": None, "dataset_s": None, "frozen": None, "model": None}
        | {"model_s": None, "errors": []},
    )


def test_warmup_loads_the_default_model_once(shipped_model, monkeypatch):
    fresh(monkeypatch)
    monkeypatch.delenv("HISTO_NO_WARMUP", raising=False)
    model_cache.clear_cache()
    thread = warmup.start(modules=("json", "histo_core.ood", "no_such_module_xyz"), dataset=False)
    assert thread is not None and warmup.start() is None  # once per process
    thread.join(180)
    done = warmup.state()
    from histo_core.model_catalog import list_models

    default = Path(list_models()[0].ref).resolve()  # what the Classify page selects first
    assert default.parent == shipped_model.parent.resolve() and Path(done["model"]).resolve() == default
    assert done["imports_s"] is not None and done["model_s"] is not None
    assert done["errors"] and "no_such_module_xyz" in done["errors"][0]  # recorded, the rest went on
    assert "histo_core.ood" in sys.modules
    assert done["frozen"] and done["frozen"] > 10_000  # the modules' objects, out of the full collections
    assert any(Path(k[0]) == default for k in model_cache._cache)  # the page's load is a cache hit


def test_warmup_can_be_turned_off(monkeypatch):
    fresh(monkeypatch)
    monkeypatch.setenv("HISTO_NO_WARMUP", "1")
    assert warmup.start() is None


def test_the_app_starts_the_warmup(monkeypatch):
    from streamlit.testing.v1 import AppTest

    fresh(monkeypatch)
    calls = []
    monkeypatch.setattr(warmup, "start", lambda *a, **k: calls.append(1))
    AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60).run()
    assert calls


def test_serve_starts_the_warmup_before_the_server(monkeypatch):
    """`streamlit run app.py` runs app.py only when the first session connects; serve.py warms at server start."""
    import pytest
    from streamlit.web import cli as stcli

    import serve

    order: list[str] = []
    monkeypatch.setattr(warmup, "start", lambda *a, **k: order.append("warmup"))
    monkeypatch.setattr(stcli, "main", lambda: order.append(" ".join(sys.argv[:1] + sys.argv[2:])) or 0)
    monkeypatch.setattr(sys, "argv", ["serve.py"])
    with pytest.raises(SystemExit):
        serve.main(["--server.port", "1234"])
    assert order[0] == "warmup" and order[1].endswith("app.py --server.port 1234")


def test_serve_switches_the_pages_folder_mode_off_before_the_first_visit(monkeypatch):
    """Issue 24: with a pages/ folder beside app.py, Streamlit ran the first page a server was asked for (a shared
    link, the first visit) without app.py's navigation, and the page reran itself under it: a second script run on
    that first view. serve.py switches the mode off before the server starts."""
    import pytest
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli as stcli

    import serve

    seen: list[object] = []
    monkeypatch.setattr(PagesManager, "uses_pages_directory", None)  # a fresh process: not decided yet
    monkeypatch.setattr(warmup, "start", lambda *a, **k: None)
    monkeypatch.setattr(stcli, "main", lambda: seen.append(PagesManager.uses_pages_directory) or 0)
    monkeypatch.setattr(sys, "argv", ["serve.py"])
    with pytest.raises(SystemExit):
        serve.main([])
    assert seen == [False]


def test_warmup_generates_the_default_dataset_when_it_is_the_synthetic_demo(monkeypatch):
    """The Datasets and Train pages open the synthetic demo first on a fresh install: its tiles are generated in
    the background, so the page's open is a cache hit."""
    from histo_core.datasets import synthetic

    fresh(monkeypatch)
    monkeypatch.delenv("HISTO_NO_WARMUP", raising=False)
    synthetic._generate.cache_clear()
    thread = warmup.start(modules=(), model=False)
    assert thread is not None
    thread.join(180)
    done = warmup.state()
    assert done["dataset"] == "synthetic" and done["dataset_s"] is not None and not done["errors"]
    assert synthetic._generate.cache_info().currsize == 1
    synthetic.open_synthetic()
    assert synthetic._generate.cache_info().hits == 1


def test_the_app_warms_every_page_module(monkeypatch):
    """serve.py and app.py warm every page's module as well as the heavy imports."""
    from pages.ui import navigation

    calls = []
    monkeypatch.setattr(warmup, "start", lambda modules=warmup.MODULES, **k: calls.append(modules))
    navigation.start_warmup()
    (modules,) = calls
    assert set(warmup.MODULES) <= set(modules)
    assert {f"pages.{Path(spec.file).stem}" for spec in navigation.PAGES} <= set(modules)
    assert "streamlit.emojis" in modules  # the first page icon compiles its table (1-2 s) otherwise


def test_importing_a_page_runs_nothing(monkeypatch):
    """A page runs main() only as __main__ (as Streamlit runs it): importing it, as the warm-up does, only runs its
    imports and definitions."""
    import importlib

    import pages.ui.common as common
    from pages.ui.navigation import page_modules

    ran: list[str] = []
    monkeypatch.setattr(common, "page_setup", lambda page_file: ran.append(page_file))
    for name in page_modules():
        monkeypatch.delitem(sys.modules, name, raising=False)
        assert callable(importlib.import_module(name).main)
    assert ran == []


@pytest.mark.slow  # a fresh interpreter: the suite's own has torch imported
def test_pages_that_show_no_model_do_not_import_torch():
    """A design rule: torch is imported where a model is built or run. Home, Datasets, Runs, Compare, Studies and
    Curation show none, so they open at once even before the background warm-up has imported torch (1-3 s)."""
    import subprocess

    light = ["pages.0_Home", "pages.1_Datasets", "pages.3_Runs", "pages.4_Compare", "pages.9_Studies"]
    light += ["pages.10_Curation"]
    code = f"import importlib, sys\nfor n in {light!r}: importlib.import_module(n)\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:5])"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_frozen_heap_is_left_out_of_full_collections():
    """What Streamlit runs after every script run (gc.collect(2)) no longer walks what the warm-up froze."""
    gc.collect()
    frozen = warmup.freeze_heap()
    assert frozen == gc.get_freeze_count() > 10_000
    tracked_before = len(gc.get_objects())
    assert tracked_before < frozen  # frozen objects are no longer among those a collection walks
    gc.unfreeze()
    assert len(gc.get_objects()) >= frozen


def test_the_server_does_not_walk_every_module_for_each_new_session():
    """With a source watcher, each new browser session walked sys.modules (~4,400 modules with torch) on the
    server's event loop before its page was sent: 1.3 s per first visit of a tab on a busy machine."""
    import tomllib

    config = tomllib.loads((Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "none"
