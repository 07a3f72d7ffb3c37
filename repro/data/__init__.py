"""Data: manifests, fetch/verify/prepare, the packed store, built-in ``mini``, videos, face filter, loader.

The API training and evaluation code uses::

    from repro.data import open_store, Loader, resolve_dataset, require_store, ensure_mini
    paths = ensure_mini("data")                   # {"train": Path, "test": Path}, built if absent
    store = require_store("mini", "train", "data")  # or open_store(path)
    loader = Loader(store, batch_size=64, seed=0, replica=0, n_replicas=1)

Store format: see ``repro.data.store``. Manifest schema: see ``repro.data.manifest``.
"""
from __future__ import annotations

from repro.data.builtin import ensure_mini
from repro.data.loader import Loader
from repro.data.prepare import require_store, resolve_dataset
from repro.data.store import Store, open_store

__all__ = ["Loader", "Store", "ensure_mini", "open_store", "require_store", "resolve_dataset"]
