"""What the runs of one process can share: the scanned data, the built model, and the frozen-prefix activations.

`zoo tune` trains many short runs on the same data; every run whose frozen prefix, data and cache settings are
the same trains on the same activations. Inside `sharing()`, the first run that needs a thing computes it and
the later ones reuse it: the scan (every image decoded once), the model with its weights read (each run trains a
copy), and each prefix's activations (the forward pass paid once for the whole study). A run only reads them: the
prefix is frozen, its activations are inputs, and the decoded images are copied by the transforms. Outside
`sharing()`, nothing is kept and every run computes its own, as a single `zoo finetune` always has.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any

_lock = threading.Lock()
_store: dict[Hashable, Any] | None = None


@contextlib.contextmanager
def sharing() -> Iterator[dict[Hashable, Any]]:
    """Share scans and activations between the runs started inside; release the activations at the end."""
    global _store
    with _lock:
        outer = _store
        if outer is None:
            _store = {}
        store = _store
    try:
        yield store
    finally:
        if outer is None:
            with _lock:
                _store = None
            for value in store.values():
                for part in value if isinstance(value, tuple) else (value,):
                    if hasattr(part, "release"):
                        part.release()


def active() -> bool:
    return _store is not None


def shared(key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
    """(value, reused): the value kept under `key` inside `sharing()`, computed on first use; outside it, always
    computed and never kept."""
    store = _store
    if store is None:
        return compute(), False
    if key in store:
        return store[key], True
    value = compute()
    store[key] = value
    return value, False


def built_model(spec, classes: int, weights: str):
    """(model with its new head, WeightsChoice). Inside `sharing()` the model is built and its weights read once:
    each run gets a copy, and the random generators are put where the first build left them, so every trial starts
    from the same model and the same random state."""
    import copy
    import random

    import torch

    from zoo.model.build import choose_weights, create_model

    def build():
        choice = choose_weights(spec, weights)
        model = create_model(spec, num_classes=classes, weights=choice, check=False)
        return model, choice, torch.get_rng_state(), random.getstate()

    key = ("model", spec.name, classes, str(weights), torch.initial_seed())
    (model, choice, torch_state, python_state), _ = shared(key, build)
    if not active():
        return model, choice
    torch.set_rng_state(torch_state)
    random.setstate(python_state)
    return copy.deepcopy(model), choice  # the kept one stays as built
