"""`ConcatSplit`: several splits served as one (train+val training, "all" evaluation), beside `Split`."""

from __future__ import annotations

from typing import Any

import numpy as np

from histo_core.datasets.base import Split
from histo_core.errors import DatasetError


class ConcatSplit:
    """Several splits served as one (for --train-splits train+val); indices run through them in order."""

    def __init__(self, name: str, parts: list[Split] | list[Any]):
        self.name = name
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.labels = np.concatenate([p.labels for p in parts])
        self.lazy = any(p.lazy for p in parts)
        shapes = {p.tile_shape for p in parts}
        if len(shapes) != 1:
            raise DatasetError(f"cannot train on splits with different tile shapes: {sorted(shapes)}")
        self.tile_shape = shapes.pop()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, indices: Any) -> np.ndarray:
        idx = np.arange(len(self))[indices] if isinstance(indices, slice) else np.asarray(indices, np.int64).reshape(-1)
        h, w, c = self.tile_shape
        out = np.empty((len(idx), h, w, c), np.uint8)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        for i, p in enumerate(self.parts):
            sel = np.flatnonzero(part == i)
            if len(sel):
                out[sel] = p.get(idx[sel] - self.offsets[i])
        return out

    def load_all(self) -> np.ndarray:
        return np.concatenate([p.load_all() for p in self.parts])
