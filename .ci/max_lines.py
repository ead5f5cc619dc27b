"""The 500-line rule (docs/ARCHITECTURE.md): no Python module under the given folders is longer than the limit.
`make lint` runs it; exit 1 with one line per module over the limit.

    python .ci/max_lines.py [--max 500] histo_core pages app.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def too_long(folders: list[str], limit: int) -> list[tuple[Path, int]]:
    found = []
    for folder in folders:
        root = Path(folder)
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > limit:
                found.append((path, lines))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=500, help="most lines a module may have (default 500)")
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args(argv)
    found = too_long(args.folders, args.max)
    for path, lines in found:
        print(f"{path}: {lines} lines, over the {args.max}-line limit: split it by concern", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
