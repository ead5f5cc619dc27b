"""Downloading a dataset file into the data dir, with progress and an MD5 check (MedMNIST npz files:
`medmnist_source.download_medmnist`).

The file is streamed in chunks to a temp file next to its destination, its MD5 checked, then renamed
into place, so an interrupted or corrupt download never leaves a file that looks complete. Without
internet the download fails within `timeout` seconds with a message saying where to put the file by hand.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from histo_core.errors import DownloadError
from histo_core.fsutil import atomic_file

CHUNK = 1 << 20
DEFAULT_TIMEOUT = 10.0

Progress = Callable[[int, int], None]  # (bytes done, bytes total; 0 when the server does not say)


def download_file(
    url: str, dest: Path, md5: str | None, *, progress: Progress | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Path:
    """Stream `url` to `dest` via a temp file; check `md5` (when given) before renaming into place."""
    dest = Path(dest)
    _check_host_resolves(url, timeout)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"download from {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url} ({reason})") from None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        response.close()
        raise DownloadError(f"cannot create {dest.parent} ({exc})") from None
    total = int(response.headers.get("Content-Length") or 0)
    digest = hashlib.md5()
    done = 0
    try:
        with response, atomic_file(dest, suffix=".part") as out:
            if progress is not None:
                progress(0, total)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            # Raised inside the block: the partial file is removed and nothing is saved under `dest`.
            if total and done != total:
                raise DownloadError(f"download from {url} stopped after {done} of {total} bytes")
            if md5 and digest.hexdigest() != md5.lower():
                raise DownloadError(
                    f"download from {url} is corrupt: MD5 {digest.hexdigest()}, expected {md5}; "
                    "nothing was saved, try again"
                )
    except (OSError, TimeoutError) as exc:
        raise DownloadError(f"download from {url} failed after {done} bytes ({exc})") from None
    return dest


def _check_host_resolves(url: str, timeout: float) -> None:
    """Fail within `timeout` when the name cannot be resolved: urlopen's own timeout does not cover DNS,
    which can hang for a minute on machines without a network. Skipped behind a proxy."""
    parsed = urllib.parse.urlsplit(url)
    if not parsed.hostname or urllib.request.getproxies().get(parsed.scheme):
        return
    result: dict[str, BaseException | None] = {}

    def resolve() -> None:
        try:
            socket.getaddrinfo(parsed.hostname, parsed.port or 443)
            result["error"] = None
        except OSError as exc:
            result["error"] = exc

    worker = threading.Thread(target=resolve, daemon=True)
    worker.start()
    worker.join(timeout)
    if "error" not in result:
        raise DownloadError(f"cannot reach {url} (no answer resolving {parsed.hostname} within {timeout:g} s)")
    if result["error"] is not None:
        raise DownloadError(f"cannot reach {url} ({result['error']})")
