"""MedMNIST download against a local HTTP server: success with progress, wrong MD5, unreachable URL."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
import time

import numpy as np
import pytest

import histo_core.datasets.download as download
import histo_core.datasets.medmnist_source as medmnist_source
from histo_core.datasets import open_dataset
from histo_core.datasets.medmnist_source import download_medmnist, download_source  # before any monkeypatch
from histo_core.errors import DownloadError


@pytest.fixture
def served_npz(tmp_path):
    """A small MedMNIST-layout npz served on 127.0.0.1; yields (url, md5, bytes)."""
    root = tmp_path / "www"
    root.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 9).astype(np.uint8).reshape(-1, 1)
    np.savez_compressed(root / "pathmnist.npz", **arrays)
    data = (root / "pathmnist.npz").read_bytes()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/pathmnist.npz", hashlib.md5(data).hexdigest(), data
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(monkeypatch, url, md5):
    monkeypatch.setattr(medmnist_source, "download_source", lambda flag, size: (url, md5))


def test_download_success_with_progress_and_md5(served_npz, monkeypatch, tmp_path):
    url, md5, data = served_npz
    _serve(monkeypatch, url, md5)
    monkeypatch.setattr(download, "CHUNK", 4096)  # several chunks, so progress is reported along the way
    calls = []
    path = download_medmnist("pathmnist", 28, data_dir=tmp_path / "dd", progress=lambda d, t: calls.append((d, t)))
    assert path == tmp_path / "dd" / "pathmnist.npz" and path.read_bytes() == data
    assert calls[-1] == (len(data), len(data)) and len(calls) > 3
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert not [p for p in path.parent.iterdir() if p.name != "pathmnist.npz"]  # no temp files left
    ds = open_dataset("pathmnist", data_dir=tmp_path / "dd")
    assert ds.split_sizes() == {"train": 30, "val": 6, "test": 6}


def test_download_uses_the_size_specific_url(served_npz, monkeypatch, tmp_path):
    url, md5, _ = served_npz
    asked = []
    monkeypatch.setattr(medmnist_source, "download_source", lambda flag, size: asked.append((flag, size)) or (url, md5))
    path = download_medmnist("pathmnist", 64, data_dir=tmp_path)
    assert asked == [("pathmnist", 64)] and path.name == "pathmnist_64.npz"
    assert download_source("pathmnist", 64)[0].endswith("pathmnist_64.npz?download=1")
    assert download_source("pathmnist", 28)[1] == "a8b06965200029087d5bd730944a56c1"


def test_download_wrong_md5_saves_nothing(served_npz, monkeypatch, tmp_path):
    url, _, _ = served_npz
    _serve(monkeypatch, url, "0" * 32)
    with pytest.raises(DownloadError, match="is corrupt: MD5 .*expected 0{32}"):
        download_medmnist("pathmnist", 28, data_dir=tmp_path / "dd")
    assert list((tmp_path / "dd").iterdir()) == []


def test_download_unreachable_fails_fast_and_says_where_to_put_the_file(monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _serve(monkeypatch, f"http://127.0.0.1:{port}/pathmnist.npz", "x")
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download_medmnist("pathmnist", 28, data_dir=tmp_path)
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "cannot reach" in msg and f"put it at {tmp_path / 'pathmnist.npz'}" in msg
    assert list(tmp_path.iterdir()) == []


def test_download_http_error(served_npz, monkeypatch, tmp_path):
    url, md5, _ = served_npz
    _serve(monkeypatch, url.replace("pathmnist.npz", "missing.npz"), md5)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_medmnist("pathmnist", 28, data_dir=tmp_path)


def test_download_hanging_name_resolution_times_out(monkeypatch, tmp_path):
    release = threading.Event()
    monkeypatch.setattr(download.socket, "getaddrinfo", lambda *a, **k: release.wait(30))
    monkeypatch.setattr(download.urllib.request, "getproxies", lambda: {})
    _serve(monkeypatch, "https://zenodo.example/pathmnist.npz", "x")
    start = time.monotonic()
    try:
        with pytest.raises(DownloadError, match="no answer resolving zenodo.example within 0.5 s"):
            download_medmnist("pathmnist", 28, data_dir=tmp_path, timeout=0.5)
    finally:
        release.set()
    assert time.monotonic() - start < 3


def test_download_refuses_unknown_flag_and_size(tmp_path):
    with pytest.raises(DownloadError, match="organmnist3d: not a MedMNIST 2D dataset"):
        download_medmnist("organmnist3d", 28, data_dir=tmp_path)
    with pytest.raises(DownloadError, match="size must be one of 28, 64, 128, 224, got 96"):
        download_medmnist("pathmnist", 96, data_dir=tmp_path)


def test_present_file_is_not_downloaded_again(monkeypatch, tmp_path):
    (tmp_path / "pathmnist.npz").write_bytes(b"already here")
    monkeypatch.setattr(medmnist_source, "download_file", lambda *a, **k: pytest.fail("downloaded again"))
    assert download_medmnist("pathmnist", 28, data_dir=tmp_path) == tmp_path / "pathmnist.npz"
