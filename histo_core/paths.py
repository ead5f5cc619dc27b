"""Where things live on disk. Every location can be overridden by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

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
