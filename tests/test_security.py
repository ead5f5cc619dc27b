"""Safe to share with a team (issue 10): data roots, limits, run identity, bounded inputs, clean failures and
optional sign-in. Pages are driven by AppTest, the CLI as a subprocess; each case is refused with its message
and nothing else is disturbed."""

from __future__ import annotations

import errno
import gzip
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from histo_core import jobs, liveness, paths, procs
from histo_core.errors import ConfigError, DatasetError, HistoError
from histo_core.paths import OUTSIDE_ROOTS_MESSAGE
from tests.conftest import ROOT
from tests.runfiles import write_run

DATASETS_PAGE = str(ROOT / "pages" / "1_Datasets.py")
RUNS_PAGE = str(ROOT / "pages" / "3_Runs.py")
TRAIN_PAGE = str(ROOT / "pages" / "2_Train.py")
SECRET_VALUE = "s3cr3t-token-value"
SECRET_COLUMN = "aws_secret_access_key"


def cli(*argv: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "histo_core", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def page_text(at: AppTest) -> str:
    """Everything the page rendered (every element's protobuf, widgets' values included) plus the URL."""
    parts, stack = [], [at._tree]
    while stack:
        node = stack.pop()
        stack.extend(getattr(node, "children", {}).values())
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
    return "\n".join(parts) + "\n" + repr(dict(at.query_params))


def as_shown(markdown: str) -> str:
    """A message as the browser shows it: Markdown's backslash escapes removed (pages escape user text)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def secret_csv(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "credentials.csv"
    csv.write_text(f"user,{SECRET_COLUMN}\nalice,{SECRET_VALUE}\nbob,{SECRET_VALUE}2\n")
    return csv


def tiny_npz(path: Path, labels=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.arange(12) % 2 if labels is None else np.asarray(labels)
    np.savez(path, train_images=np.zeros((len(labels), 8, 8, 3), np.uint8), train_labels=labels)
    return path


@pytest.fixture
def no_extra_roots(monkeypatch):
    """A fresh data dir and no HISTO_DATA_ROOTS: the data dir is the only root."""
    monkeypatch.delenv("HISTO_DATA_ROOTS", raising=False)


# -- data roots ------------------------------------------------------------------------------------------


def open_datasets_page(dataset: str | None = None, tab: str | None = None) -> AppTest:
    at = AppTest.from_file(DATASETS_PAGE, default_timeout=60)
    if dataset is not None:
        at.query_params["dataset"] = dataset
    if tab is not None:  # only the open tab is built
        at.query_params["datasets_tab"] = tab
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_url_naming_a_csv_outside_the_roots_shows_nothing_of_it(no_extra_roots, tmp_path):
    csv = secret_csv(tmp_path / "private")
    at = open_datasets_page(str(csv))
    assert [e.value for e in at.error] == [OUTSIDE_ROOTS_MESSAGE]
    text = page_text(at)
    for leak in (SECRET_VALUE, SECRET_COLUMN, "credentials", "private"):
        assert leak not in text
    assert at.query_params.get("dataset") == "synthetic"  # the link is replaced by the default, not kept


@pytest.mark.slow
def test_outside_paths_all_get_the_same_message(no_extra_roots, tmp_path):
    hidden = tmp_path / ".dotfile"
    hidden.write_text("x")
    errors = {}
    for target in ("/etc", "/", str(hidden), str(tmp_path / "no-such-file.npz"), "/etc/passwd"):
        at = open_datasets_page(target)
        errors[target] = [e.value for e in at.error]
        assert "dotfile" not in page_text(at) and "passwd" not in page_text(at)
    assert all(v == [OUTSIDE_ROOTS_MESSAGE] for v in errors.values()), errors


@pytest.mark.slow
def test_symlink_and_dotdot_out_of_a_root_are_refused_inside_ones_open(no_extra_roots, tmp_path):
    outside = tiny_npz(tmp_path / "outside" / "x.npz")
    data = paths.data_dir()
    (data / "link.npz").symlink_to(outside)
    (data / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    for spec in (
        str(data / "link.npz"),
        str(data / "linkdir" / "x.npz"),
        str(data / ".." / ".." / "outside"),
        f"{data}/../{outside.relative_to(data.parent.parent)}",
    ):
        at = open_datasets_page(spec)
        assert [e.value for e in at.error] == [OUTSIDE_ROOTS_MESSAGE], spec
    inside = tiny_npz(data / "mine" / "x.npz")
    at = open_datasets_page(str(inside))
    assert not at.error and at.subheader[0].value.startswith("x.npz")


def test_typed_path_outside_is_refused_and_the_box_offers_the_roots(no_extra_roots, tmp_path, monkeypatch):
    extra = tmp_path / "team-data"
    tiny_npz(extra / "ok.npz")
    monkeypatch.setenv("HISTO_DATA_ROOTS", str(extra))
    at = open_datasets_page()
    at.run()  # the first run put ?dataset=synthetic in the URL; the second applies it, as a browser reload does
    at.selectbox(key="datasets_page_choice").set_value("__path__").run()
    caption = " ".join(c.value for c in at.caption)
    assert str(paths.data_dir().resolve()) in caption and str(extra) in caption
    at.text_input(key="datasets_page_path").input(str(secret_csv(tmp_path / "p"))).run()
    assert [e.value for e in at.error] == [OUTSIDE_ROOTS_MESSAGE] and SECRET_COLUMN not in page_text(at)
    at.text_input(key="datasets_page_path").input(str(extra / "ok.npz")).run()
    assert not at.error and at.subheader[0].value.startswith("ok.npz")


def test_adding_a_path_outside_the_roots_from_the_page_is_refused(no_extra_roots, tmp_path):
    from histo_core.datasets.catalog import local_datasets

    at = open_datasets_page()
    at.session_state["datasets_page_add_open"] = True  # the section is built while open
    at.run()
    at.text_input(key="datasets_page_add_path").input(str(tiny_npz(tmp_path / "o" / "x.npz"))).run()
    at.button(key="datasets_page_add").click().run()
    assert OUTSIDE_ROOTS_MESSAGE in [as_shown(e.value) for e in at.error]
    assert local_datasets() == []


@pytest.mark.slow
def test_datasets_registered_with_the_cli_become_roots(no_extra_roots, tmp_path):
    npz = tiny_npz(tmp_path / "registered" / "x.npz")
    assert cli("datasets", "--add", str(npz)).returncode == 0
    at = open_datasets_page(str(npz))
    assert not at.error and at.subheader[0].value.startswith("x.npz")


@pytest.mark.slow
def test_the_cli_still_opens_any_path(no_extra_roots, tmp_path):
    proc = cli("datasets", "--info", str(tiny_npz(tmp_path / "anywhere" / "x.npz")))
    assert proc.returncode == 0, proc.stderr


def test_dataset_readme_is_shown_as_plain_text(tmp_path):
    from tests.test_datasets_sources import make_class_folders

    make_class_folders(tmp_path / "kather")
    folder = tmp_path / "kather"
    (folder / "README.md").write_text("# Heading\n[click](javascript:alert(1)) <b>bold</b>\n")
    at = open_datasets_page(str(folder), tab="Citation & licence")
    assert not at.error
    assert any("# Heading" in t.value for t in at.text)
    assert not any("click" in m.value for m in at.markdown)


def test_csv_messages_quote_line_numbers_never_cells(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text(f"path,label,split\n{SECRET_VALUE}.png,a,train\n")
    with pytest.raises(DatasetError) as err:
        from histo_core.datasets import open_dataset

        open_dataset(csv)
    assert SECRET_VALUE not in str(err.value) and "lines 2" in str(err.value)


# -- limits -----------------------------------------------------------------------------------------------


def test_queue_cap_refuses_a_new_run_and_creates_nothing(monkeypatch):
    from histo_core.training import default_config

    monkeypatch.setenv("HISTO_MAX_QUEUED", "2")
    monkeypatch.setattr(jobs, "_start_training_process", lambda run, resume: 1)
    live = [write_run("running", pid=os.getpid()), write_run("queued", epochs_done=0, pid=os.getpid())]

    def run_folders() -> list[str]:  # runs, not the queue's lock folder
        return sorted(p.name for p in paths.runs_dir().iterdir() if not p.name.startswith("."))

    before = run_folders()
    with pytest.raises(
        HistoError,
        match=r"2 background processes \(runs, evaluations, page tasks\) are already queued or running .*HISTO_MAX_QUEUED=2",
    ):
        jobs.submit(default_config("synthetic", device="cpu"))
    assert run_folders() == before
    assert [liveness.refresh_status(r).state for r in live] == ["running", "queued"]
    monkeypatch.setenv("HISTO_MAX_QUEUED", "3")
    assert jobs.submit(default_config("synthetic", device="cpu")).exists()


def test_bad_limit_values_get_a_clear_message(monkeypatch):
    from histo_core.slots import max_concurrent
    from histo_core.training import default_config

    monkeypatch.setattr(jobs, "_start_training_process", lambda run, resume: 1)
    monkeypatch.setenv("HISTO_MAX_RUNS_CPU", "abc")
    with pytest.raises(ConfigError, match=r"HISTO_MAX_RUNS_CPU='abc' is not a whole number"):
        max_concurrent("cpu")
    with pytest.raises(ConfigError, match="HISTO_MAX_RUNS_CPU"):
        jobs.submit(default_config("synthetic", device="cpu"))
    assert list(paths.runs_dir().iterdir()) == []
    monkeypatch.setenv("HISTO_MAX_RUNS_CPU", "2")
    monkeypatch.setenv("HISTO_MAX_QUEUED", "0")
    with pytest.raises(ConfigError, match="HISTO_MAX_QUEUED='0' must be at least 1"):
        jobs.submit(default_config("synthetic", device="cpu"))


# -- run identity -----------------------------------------------------------------------------------------


def _project_beside_the_runs_dir() -> tuple[Path, list[str]]:
    project = paths.runs_dir().parent / "myproject"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    (project / "src" / "code.py").write_text("print(1)\n")
    return project, sorted(str(p) for p in project.rglob("*"))


@pytest.mark.slow
def test_runs_cancel_and_delete_refuse_paths_and_touch_nothing():
    project, before = _project_beside_the_runs_dir()
    for verb in (["cancel"], ["delete", "--yes"]):
        proc = cli("runs", verb[0], "../myproject", *verb[1:])
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "'../myproject': not a run id" in proc.stderr
    assert sorted(str(p) for p in project.rglob("*")) == before


@pytest.mark.parametrize("verb", [["cancel"], ["delete", "--yes"], ["show"], ["resume"], ["export", "--name", "n"]])
def test_every_runs_verb_refuses_ids_that_are_paths(capsys, verb):
    from histo_core.cli import main

    project, before = _project_beside_the_runs_dir()
    for run_id in ("../myproject", str(project), "..", ".", "a/b"):
        assert main(["runs", verb[0], run_id, *verb[1:]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a run id" in err
    assert sorted(str(p) for p in project.rglob("*")) == before


def _sleeper(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])


@pytest.mark.slow
def test_cancel_checks_the_process_start_time_not_the_command_line():
    run = write_run("running")
    proc = _sleeper(run.id, "histo_core")  # its command line even names the run
    try:
        run.update_status(pid=proc.pid, pid_start=procs.proc_start_time(proc.pid) + 1)  # another process's time
        status = liveness.refresh_status(run)
        assert status.state == "failed" and "ended unexpectedly" in status.error
        assert proc.poll() is None  # never signalled
        run2 = write_run("running")
        run2.update_status(pid=proc.pid, pid_start=procs.proc_start_time(proc.pid))
        assert liveness.refresh_status(run2).state == "running"
        jobs.cancel(run2)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.kill()


@pytest.mark.slow
def test_trainer_records_its_pid_and_start_time(tmp_path):
    from histo_core.training import default_config, prepare_run, run_training

    cfg = default_config("synthetic", device="cpu")
    cfg.epochs, cfg.max_train_samples, cfg.threads = 1, 64, 1
    run = prepare_run(cfg)
    assert run_training(run)["state"] == "completed"
    status = run.status()
    assert status.pid == os.getpid() and status.pid_start == procs.proc_start_time(os.getpid())


def test_atomic_writers_never_create_missing_folders_and_follow_the_umask(tmp_path):
    from histo_core.fsutil import savez_atomic, torch_save_atomic, write_json_atomic

    gone = tmp_path / "deleted-run"
    for write in (
        lambda: write_json_atomic(gone / "status.json", {}),
        lambda: savez_atomic(gone / "a.npz", a=1),
        lambda: torch_save_atomic(gone / "last.pt", {}),
    ):
        with pytest.raises(FileNotFoundError):
            write()
    assert not gone.exists()
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "shared.json", {})
        os.umask(0o077)
        write_json_atomic(tmp_path / "private.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_deleting_a_running_runs_folder_stops_it_and_it_stays_gone():
    from histo_core.training import default_config

    cfg = default_config("synthetic", device="cpu")
    cfg.epochs, cfg.threads, cfg.size = 200, 1, 64
    run = jobs.submit(cfg)
    pid = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = run.status()
            if status.state == "running" and status.step > 0:
                pid = status.pid
                break
            assert status.state in liveness.ACTIVE_STATES, (status, liveness.log_tail(run))
            time.sleep(0.5)
        assert pid, "the run never started training"
        shutil.rmtree(run.path)
        deadline = time.monotonic() + 60
        while procs.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not procs.pid_alive(pid), "the trainer kept going after its folder was deleted"
        time.sleep(2)
        assert not run.path.exists()
    finally:
        if pid and procs.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- bounded inputs ---------------------------------------------------------------------------------------


def _npy_header(shape, descr="|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def huge_declared_npz(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train_images.npy", _npy_header((10**7, 224, 224, 3)))
        zf.writestr("train_labels.npy", _npy_header((10**7,), "<i8"))
    return path


@pytest.mark.slow
def test_npz_with_a_huge_declared_shape_or_label_is_refused_in_seconds(tmp_path):
    big_label = tiny_npz(tmp_path / "label.npz", labels=[0, 1, 30_000_000, 1])
    for path, needle in (
        (huge_declared_npz(tmp_path / "huge.npz"), "declares shape (10000000, 224, 224, 3)"),
        (big_label, "label 30000000 is beyond the limit of 10000 classes"),
    ):
        started = time.monotonic()
        proc = cli("datasets", "--info", str(path), timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert str(path) in proc.stderr and needle in proc.stderr
        assert time.monotonic() - started < 60


@pytest.mark.slow
def test_npz_limits(tmp_path, monkeypatch):
    from histo_core.datasets import open_dataset

    with pytest.raises(DatasetError, match=r"64.0 GB \(HISTO_MAX_DATASET_BYTES\)"):
        open_dataset(huge_declared_npz(tmp_path / "huge.npz"))
    lying = tmp_path / "lying.npz"
    with zipfile.ZipFile(lying, "w") as zf:
        zf.writestr("train_images.npy", _npy_header((1000, 28, 28, 3)))
        zf.writestr("train_labels.npy", _npy_header((1000,), "<i8"))
    with pytest.raises(DatasetError, match="but holds only .*the file is damaged"):
        open_dataset(lying)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("train_images.npy", "w", force_zip64=True) as fh:
            fh.write(_npy_header((300, 1000, 1000)))
            for _ in range(300):
                fh.write(bytes(1 << 20))
        zf.writestr("train_labels.npy", _npy_header((300,), "<i8"))
    with pytest.raises(DatasetError, match=r"expands \d+x .*beyond the limit of 100x"):
        open_dataset(bomb)
    ok = tiny_npz(tmp_path / "ok.npz")
    assert open_dataset(ok).split_sizes() == {"train": 12}
    monkeypatch.setenv("HISTO_MAX_DATASET_BYTES", "100")
    with pytest.raises(DatasetError, match=r"more than 100 bytes \(HISTO_MAX_DATASET_BYTES\)"):
        open_dataset(ok)


def test_csv_integer_labels_beyond_the_limit(tmp_path):
    from histo_core.datasets import open_dataset
    from tests.test_datasets_sources import write_manifest

    csv = write_manifest(tmp_path)
    lines = csv.read_text().splitlines()
    csv.write_text(
        "path,label\n"
        + "\n".join(f"{ln.split(',')[0]},{i % 2}" for i, ln in enumerate(lines[1:]))
        + f"\n{lines[1].split(',')[0]},30000000\n"
    )
    with pytest.raises(DatasetError, match="label 30000000 is beyond the limit of 10000 classes"):
        open_dataset(csv)


def _pcam_gz(folder: Path) -> Path:
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    for xy, arr in (("x", np.zeros((4, 96, 96, 3), np.uint8)), ("y", np.zeros((4, 1, 1, 1), np.uint8))):
        h5 = folder / f"camelyonpatch_level_2_split_test_{xy}.h5"
        with h5py.File(h5, "w") as f:
            f.create_dataset(xy, data=arr)
        with open(h5, "rb") as src, gzip.open(str(h5) + ".gz", "wb") as dst:
            dst.write(src.read())
        h5.unlink()
    return folder


def test_h5_gz_is_not_decompressed_beyond_free_space_or_the_limit(tmp_path, monkeypatch):
    from histo_core.datasets import open_dataset, pcam

    folder = _pcam_gz(tmp_path / "pcam")
    real = shutil.disk_usage
    monkeypatch.setattr(pcam.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(DatasetError, match=r"camelyonpatch_level_2_split_test_x.h5.gz: not enough free disk space"):
        open_dataset(folder)
    assert not list(folder.glob("*.h5")) and not list(folder.glob(".*tmp"))
    monkeypatch.setattr(pcam.shutil, "disk_usage", real)
    monkeypatch.setenv("HISTO_MAX_DATASET_BYTES", "1000")
    with pytest.raises(DatasetError, match=r"decompresses to more than 1.0 KB \(HISTO_MAX_DATASET_BYTES\)"):
        open_dataset(folder)
    monkeypatch.delenv("HISTO_MAX_DATASET_BYTES")
    assert open_dataset(folder).split_sizes() == {"test": 4}


def test_pcam_folder_with_only_an_unexpected_split(tmp_path):
    from histo_core.datasets import open_dataset

    folder = tmp_path / "pcam"
    folder.mkdir()
    (folder / "camelyonpatch_level_2_split_extra_x.h5").write_bytes(b"")
    with pytest.raises(
        DatasetError, match="no PatchCamelyon split found; expected files named camelyonpatch_level_2_split_train_x.h5"
    ):
        open_dataset(folder)


# -- clean failures ---------------------------------------------------------------------------------------

TORCH_WRITE_ERROR = (
    "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed"
)


def test_torch_write_failure_on_a_full_disk_says_disk_full(tmp_path, monkeypatch):
    import torch

    from histo_core import fsutil
    from histo_core.liveness import error_line

    def failing_save(obj, fh):
        raise RuntimeError(TORCH_WRITE_ERROR)

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError) as err:
        fsutil.torch_save_atomic(tmp_path / "last.pt", {})
    assert err.value.errno == errno.ENOSPC
    assert error_line(err.value).startswith("disk full while writing the run")
    assert "inline_container" not in error_line(err.value)
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


@pytest.mark.slow
def test_training_on_a_full_disk_fails_with_disk_full(monkeypatch):
    import torch

    from histo_core import fsutil
    from histo_core.training import default_config, prepare_run, run_training

    cfg = default_config("synthetic", device="cpu")
    cfg.epochs, cfg.max_train_samples, cfg.threads = 1, 64, 1
    run = prepare_run(cfg)
    monkeypatch.setattr(torch, "save", lambda obj, fh: (_ for _ in ()).throw(RuntimeError(TORCH_WRITE_ERROR)))
    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    result = run_training(run)
    assert result["state"] == "failed" and result["error"].startswith("disk full while writing the run")
    assert run.status().error.startswith("disk full") and "inline_container" not in run.status().error


def test_export_on_a_full_disk_says_disk_full(monkeypatch):
    import torch

    from histo_core import fsutil
    from histo_core.export import export_run

    run = write_run("completed")
    monkeypatch.setattr(torch, "save", lambda obj, fh: (_ for _ in ()).throw(RuntimeError(TORCH_WRITE_ERROR)))
    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(HistoError, match=r"cannot write the export \(disk full: free space and export again\)"):
        export_run(run, "m")


def _read_only_runs(monkeypatch):
    from histo_core.runs import RunDir

    def refuse(self, status):
        raise OSError(errno.EROFS, "Read-only file system", str(self.status_path))

    monkeypatch.setattr(RunDir, "write_status", refuse)


def test_read_only_runs_dir_lists_runs_with_a_note(monkeypatch, capsys):
    from histo_core.cli import main

    done = write_run("completed")
    dead = write_run("running", pid=2**22 + 99)  # its process is gone: shown failed, not recorded
    _read_only_runs(monkeypatch)
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if mode == os.W_OK else True)
    assert main(["runs", "list"]) == 0
    out = capsys.readouterr()
    assert done.id in out.out and f"{dead.id}  failed" in out.out
    assert "read-only" in out.err and out.err.count("\n") == 1
    assert dead.status().state == "running"  # not written

    at = AppTest.from_file(RUNS_PAGE, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("read-only" in c.value for c in list(at.caption) + list(at.warning))


def test_unreadable_runs_dir_is_one_line(monkeypatch):
    from histo_core.runs import list_runs

    def refuse(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    write_run("completed")
    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(HistoError, match="cannot read the runs directory \\(Permission denied\\)"):
        list_runs()


def test_checkpoint_needing_code_is_refused_without_torchs_advice(tmp_path):
    import torch

    from histo_core.checkpoint import load_checkpoint
    from histo_core.errors import ModelFileError

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    p = tmp_path / "evil.pt"
    torch.save({"format": "histo-explorer", "payload": Evil()}, p)
    with pytest.raises(ModelFileError) as err:
        load_checkpoint(p)
    msg = str(err.value)
    assert "refused: loading it would run code stored in the file" in msg and "system" in msg
    assert "weights_only" not in msg and "Re-running" not in msg


# -- optional sign-in -------------------------------------------------------------------------------------

AUTH = {
    "auth": {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "x",
        "client_id": "x",
        "client_secret": "x",
        "server_metadata_url": "https://example.org/.well-known/openid-configuration",
    }
}


def test_without_auth_nothing_changes():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception and at.title[0].value == "Histo Explorer"
    assert not [b for b in at.button if b.key == "_histo_sign_in"]


@pytest.mark.parametrize("page", ["app.py", "pages/1_Datasets.py", "pages/2_Train.py", "pages/3_Runs.py"])
def test_with_auth_every_page_requires_sign_in(page):
    at = AppTest.from_file(str(ROOT / page), default_timeout=60)
    at.secrets = dict(AUTH)
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [b.label for b in at.button] == ["Sign in"]
    assert "requires sign-in" in at.info[0].value
    assert not at.selectbox and not at.dataframe  # nothing of the app is shown


def test_signed_in_user_is_recorded_on_the_run_and_shown(monkeypatch):
    monkeypatch.setattr(jobs, "_start_training_process", lambda run, resume: 1)
    at = AppTest.from_file(TRAIN_PAGE, default_timeout=120)
    at.secrets = dict(AUTH)
    at.user = {"is_logged_in": True, "email": "ana@lab.example", "name": "Ana"}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Signed in as ana@lab.example" in c.value for c in at.sidebar.caption)
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception, [e.value for e in at.exception]
    next(b for b in at.button if b.label == "Start training").click().run()  # a double click: still one run
    assert any("already started" in i.value for i in at.info)
    from histo_core.runs import list_runs

    (run,) = list_runs()
    assert run.config()["started_by"] == "ana@lab.example"
    from histo_core.config import TrainConfig

    assert TrainConfig.from_dict(run.config()).started_by == "ana@lab.example"  # the trainer reads it back

    runs_page = AppTest.from_file(RUNS_PAGE, default_timeout=60)
    runs_page.secrets = dict(AUTH)
    runs_page.user = {"is_logged_in": True, "email": "ana@lab.example"}
    runs_page.run()
    table = runs_page.dataframe[0].value
    assert list(table["started by"]) == ["ana@lab.example"]
