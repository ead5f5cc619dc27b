"""One lock per model object, held for every forward pass and while Grad-CAM hooks are attached: a prediction
in one thread (a page session) must never run through the hooks another thread attached (inference, explain,
ood, embeddings and faithfulness all take it)."""

from __future__ import annotations

import threading
import weakref

from torch import nn

_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """One lock per model object: held for every forward pass and while Grad-CAM hooks are attached."""
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock
