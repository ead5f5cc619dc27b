"""Where things live on disk. Every location can be overridden by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

from histo_core.fsutil import read_json

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """Dataset cache: `--data-dir`, else $HISTO_DATA_DIR, else ~/.medmnist (shared with the medmnist package)."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("HISTO_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".medmnist"


def runs_dir(override: str | os.PathLike | None = None) -> Path:
    """Run directories: `--runs-dir`, else $HISTO_RUNS_DIR, else ./runs in the project."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("HISTO_RUNS_DIR")
    return Path(env).expanduser() if env else PROJECT_ROOT / "runs"


def shipped_weights_dir() -> Path:
    """Models that come with the project (weights/ in the repository), offered even when exports go elsewhere;
    $HISTO_SHIPPED_WEIGHTS_DIR overrides it (tests, or a site that ships its own)."""
    env = os.environ.get("HISTO_SHIPPED_WEIGHTS_DIR")
    return Path(env).expanduser() if env else PROJECT_ROOT / "weights"


def weights_dir(override: str | os.PathLike | None = None) -> Path:
    """Exported models: $HISTO_WEIGHTS_DIR, else weights/ in the project."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("HISTO_WEIGHTS_DIR")
    return Path(env).expanduser() if env else PROJECT_ROOT / "weights"


# -- data roots: what the web app may open ------------------------------------------------------------

OUTSIDE_ROOTS_MESSAGE = (
    "This app opens datasets only inside its allowed folders: choose a dataset from the list or a path inside "
    "one of the folders shown under the path box (the server's owner can add folders with HISTO_DATA_ROOTS "
    "or `python -m histo_core datasets --add`)."
)


DATASETS_FILE = "histo_datasets.json"  # the datasets a user added (`datasets --add`; histo_core.datasets.catalog)


def datasets_file(data_dir_override: str | os.PathLike | None = None) -> Path:
    return data_dir(data_dir_override) / DATASETS_FILE


def added_datasets(data_dir_override: str | os.PathLike | None = None) -> list[dict]:
    """The user-added datasets as stored in DATASETS_FILE: {path, title, source, kind, channels}, in the order
    added (the catalog writes the file; the data roots read it)."""
    data = read_json(datasets_file(data_dir_override), {}) or {}
    return [e for e in data.get("datasets", []) if isinstance(e, dict) and e.get("path")]


def data_roots(data_dir_override: str | os.PathLike | None = None) -> list[Path]:
    """Folders (and single files) the web app may open datasets in: the data dir, every dataset registered
    with `python -m histo_core datasets --add`, and the os.pathsep-separated folders of $HISTO_DATA_ROOTS.
    Resolved (symlinks followed), without duplicates, in that order. The CLI is not limited by them."""
    candidates: list[str] = [str(data_dir(data_dir_override))]
    candidates += [str(e["path"]).split("?", 1)[0] for e in added_datasets(data_dir_override)]
    candidates += [p for p in os.environ.get("HISTO_DATA_ROOTS", "").split(os.pathsep) if p.strip()]
    out: list[Path] = []
    for c in candidates:
        p = Path(os.path.realpath(Path(c.strip()).expanduser()))
        if p not in out:
            out.append(p)
    return out


# A process that serves web users (the Streamlit server, and every process it starts, which inherit the
# variable) opens the files a dataset reaches only inside the roots; the command line leaves it unset.
CONFINE_ENV = "HISTO_CONFINE_TO_DATA_ROOTS"
MEMBER_REFUSAL = "not found or outside the allowed folders"  # one answer for both: no existence oracle


def confine_to_data_roots() -> None:
    """From now on this process, and every process it starts, opens dataset members only inside the roots."""
    os.environ[CONFINE_ENV] = "1"


def confined_roots(data_dir_override: str | os.PathLike | None = None) -> list[Path] | None:
    """The roots every file of a dataset must resolve inside when this process serves web users; None when it
    may open anything (the command line)."""
    return data_roots(data_dir_override) if os.environ.get(CONFINE_ENV) == "1" else None


def member_refused(path: str | os.PathLike, roots: list[Path] | None) -> bool:
    """True when a file a dataset names (a folder member, a CSV row, an .h5 of a PCam folder) must not be opened:
    with `roots`, when it resolves outside them or does not exist (the same answer, see MEMBER_REFUSAL)."""
    if roots is None:
        return False
    return not (inside_roots(path, roots) and os.path.exists(path))


def leaves_folder(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when `path`, symlinks and `..` resolved, lies outside `folder` (resolved): the command line says so."""
    return not inside_roots(path, [Path(os.path.realpath(folder))])


def inside_roots(path: str | os.PathLike, roots: list[Path]) -> bool:
    """True when `path`, with `..` and every symlink resolved, is one of `roots` or lies under one."""
    try:
        real = Path(os.path.realpath(Path(path).expanduser()))
    except (OSError, ValueError):
        return False
    return any(real == r or real.is_relative_to(r) for r in roots)
