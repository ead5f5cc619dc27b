"""The server's background warm-up (histo_core.warmup): once per process, imports and the default model."""

from __future__ import annotations

import sys
from pathlib import Path

from histo_core import model_cache, warmup


def fresh(monkeypatch) -> None:
    monkeypatch.setattr(warmup, "_thread", None)
    monkeypatch.setattr(
        warmup, "_state", {"started": None, "imports_s": None, "model": None, "model_s": None, "errors": []}
    )


def test_warmup_loads_the_default_model_once(shipped_model, monkeypatch):
    fresh(monkeypatch)
    monkeypatch.delenv("HISTO_NO_WARMUP", raising=False)
    model_cache.clear_cache()
    thread = warmup.start(modules=("json", "histo_core.ood", "no_such_module_xyz"))
    assert thread is not None and warmup.start() is None  # once per process
    thread.join(180)
    done = warmup.state()
    from histo_core.model_catalog import list_models

    default = Path(list_models()[0].ref).resolve()  # what the Classify page selects first
    assert default.parent == shipped_model.parent.resolve() and Path(done["model"]).resolve() == default
    assert done["imports_s"] is not None and done["model_s"] is not None
    assert done["errors"] and "no_such_module_xyz" in done["errors"][0]  # recorded, the rest went on
    assert "histo_core.ood" in sys.modules
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
