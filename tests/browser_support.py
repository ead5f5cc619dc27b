"""A real `streamlit run app.py` server on a free localhost port, and a Chromium page driven by Playwright."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def app_dirs(tmp_path: Path, monkeypatch=None, **extra: str) -> dict[str, str]:
    """The environment of a test's server: its runs, data and weights folders under `tmp_path` (created) and the
    `extra` variables; with `monkeypatch`, the three folders are this test process's too (for what the test
    writes before the server starts)."""
    dirs = {"HISTO_RUNS_DIR": "runs", "HISTO_DATA_DIR": "data", "HISTO_WEIGHTS_DIR": "weights"}
    env = {key: str(tmp_path / name) for key, name in dirs.items()}
    for folder in env.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    if monkeypatch is not None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    return env | extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(
    env: dict[str, str], log_path: Path, timeout_s: float = 90, launcher: str = "streamlit"
) -> Iterator[str]:
    """Start the app on 127.0.0.1:<free port>; yield its URL; stop the whole process group afterwards.
    `launcher`: "streamlit" (`streamlit run app.py`) or "serve" (`python serve.py`: the warm-up starts with the
    server, not with the first session)."""
    port = free_port()
    start = (
        [sys.executable, str(ROOT / "serve.py")]
        if launcher == "serve"
        else [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py")]
    )
    cmd = [
        *start,
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start in {timeout_s} s: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
