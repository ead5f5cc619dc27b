"""Shared fixtures. Tests never touch the user's ~/.medmnist or the project's runs/."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

# Imported here, before the tests' process guard, because their first import starts a process: torch runs
# ldconfig; matplotlib (imported by pytorch-grad-cam) runs fc-list when it builds its font cache, as on a fresh
# machine, so without this a test's outcome depended on which test ran first.
import matplotlib.font_manager  # noqa: F401
import pytest
import torch  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("OMP_NUM_THREADS", "2")
# The suite computes in fp32 on every CPU, so its figures do not depend on the machine; the bf16 path of CPUs
# with native bf16 has its own tests (tests/test_train.py), which set this themselves.
os.environ.setdefault("HISTO_CPU_BF16", "0")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    """Each test gets its own runs/, data and weights directories (and no shipped model unless it asks for one)."""
    base = tmp_path_factory.mktemp("histo")
    for var, sub in (
        ("HISTO_RUNS_DIR", "runs"),
        ("HISTO_DATA_DIR", "data"),
        ("HISTO_WEIGHTS_DIR", "weights"),
        ("HISTO_SHIPPED_WEIGHTS_DIR", "shipped"),
    ):
        (base / sub).mkdir()
        monkeypatch.setenv(var, str(base / sub))
    # The web app opens datasets only inside its data roots: let page tests open their tmp_path files and the
    # shared sample data. Tests of the roots themselves unset this.
    monkeypatch.setenv("HISTO_DATA_ROOTS", os.pathsep.join([str(tmp_path_factory.getbasetemp()), str(SHARED)]))
    # A page confines this process to the data roots (as the server); the next test starts unconfined again.
    monkeypatch.setenv("HISTO_CONFINE_TO_DATA_ROOTS", "0")
    # No background warm-up in tests that run app.py or serve.py (tests/test_warmup.py turns it back on).
    monkeypatch.setenv("HISTO_NO_WARMUP", "1")
    return base


@pytest.fixture(autouse=True)
def real_main_module():
    """Each test ends with the interpreter's own __main__ back. Streamlit's script runner (every AppTest) installs
    a module named __main__ whose __file__ is the page it ran, and never puts the real one back; the "spawn"
    start method of multiprocessing then runs that page again in every process it starts
    (multiprocessing.spawn._fixup_main_from_path), so the gloo-rank tests of tests/test_gpu_path.py failed after
    any page test in the same session (their ranks died in pages/6_Review.py: StopIteration)."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture
def shipped_model(monkeypatch) -> Path:
    """The model shipped in weights/ (offered as on a fresh clone); skips where it is absent."""
    pt = ROOT / "weights" / "pathmnist-resnet9.pt"
    if not pt.exists():
        pytest.skip(f"{pt} is absent")
    monkeypatch.setenv("HISTO_SHIPPED_WEIGHTS_DIR", str(ROOT / "weights"))
    return pt


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, the real sample files; tests using it skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED


@pytest.fixture
def pathmnist_mini(shared_data) -> Path:
    p = shared_data / "pathmnist-mini" / "pathmnist.npz"
    if not p.exists():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(scope="session")
def trained_pathmnist_run(tmp_path_factory):
    """A short real training run on pathmnist-mini, made once per session (about half a minute on 2 cores):
    cnn3 with the CPU defaults, 12 epochs, 10% fixed label noise (so noise.npz exists). A RunDir with best.pt,
    results.json and predictions_{val,test}.npz, living outside the per-test runs dir: link it in with
    `(paths.runs_dir() / run.id).symlink_to(run.path)` where a test needs it listed."""
    npz = SHARED / "pathmnist-mini" / "pathmnist.npz"
    if not npz.exists():
        pytest.skip(f"{npz} is absent")
    from histo_core.training import default_config, prepare_run, run_training

    cfg = default_config(str(npz), device="cpu")
    cfg.epochs, cfg.threads, cfg.noise, cfg.noise_mode, cfg.name = 12, 2, 0.1, "fixed", "fixture"
    cfg.train_splits = "train"  # keep a val split (the default trains small sets on train+val): tests read val files
    run = prepare_run(cfg, runs_root=tmp_path_factory.mktemp("trained-runs"))
    result = run_training(run)
    assert result["state"] == "completed", run.log_path.read_text() if run.log_path.exists() else result
    return run


# -- test hygiene: `make test-fast` (-m "not slow and not browser") stays fast ---------------------------------
# A test that trains a model or starts a process is marked slow. Tests using a fixture that trains are marked
# here; any other test that starts a process without the mark fails at once, saying so.
TRAINING_FIXTURES = {"trained_pathmnist_run"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# Some imports ask the platform once (h5py's runs `uname -p` through platform.processor()); asked here, before
# any test, it is cached, so the first test that imports such a library is not taken for starting a process.
platform.processor()


@pytest.fixture(autouse=True)
def processes_only_in_slow_tests(request, monkeypatch):
    if request.node.get_closest_marker("slow") or request.node.get_closest_marker("browser"):
        return

    def refuse(self, args, *rest, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process ({args!r}): mark it @pytest.mark.slow")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
