"""What the frozen-prefix cache keeps between processes, under ZOO_HOME/cache: the prefix exported to ONNX, and the
activations it computed over a run's data.

A second run with the same backbone, weights and boundary reuses the prefix's ONNX file (no export), on any data; a
second run on the same data and split reuses the activations too (no forward pass at all). Each entry's key is
everything its content depends on (`identity`): the backbone and its groups, the weights' identity, the boundary,
the preprocessing, the engine asked for, the device kind, and for activations each train and val file (path, size,
modification time, label, in order) with the seed and the augmented copies. An entry that cannot be read is
computed again; one that cannot be written only costs the next run time. Activations larger than ENTRY_LIMIT are not
kept, and the folder is held under FOLDER_LIMIT by removing the entries least recently used.

`--cache memory` keeps the activations in the run only (nothing is read or written here); `--cache off` caches
nothing. Removing ZOO_HOME/cache at any time is safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from zoo.core.atomic import atomic_write, write_json

log = logging.getLogger(__name__)

VERSION = 1  # bump when what an entry holds, or how its key is made, changes
ENTRY_LIMIT = 1 << 30  # activations above 1 GiB are recomputed rather than kept
FOLDER_LIMIT = 4 << 30  # the activations folder's size, least recently used entries removed first


def cache_root() -> Path:
    from zoo.catalogue.registry import zoo_home

    return zoo_home() / "cache"


def key_of(identity: dict[str, Any]) -> str:
    text = json.dumps({"version": VERSION, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def weights_identity(choice) -> str | None:
    """What names these exact weights: a registered tag's digest or URL, a local file's path, size and time. None
    for random initialisation, which no other run shares."""
    tag = getattr(choice, "tag", None)
    if tag is not None:
        return f"{tag.tag}:{tag.sha256 or tag.hash_prefix or tag.url}"
    path = getattr(choice, "path", None)
    if path is not None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"
    return None


def files_identity(samples: list) -> str:
    """The samples, in order: each file's path, size, modification time and label."""
    digest = hashlib.sha256()
    for s in samples:
        try:
            st = os.stat(s.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "?"
        digest.update(f"{os.path.abspath(s.path)}\0{stamp}\0{s.label}\n".encode())
    return digest.hexdigest()


def stores_for(setup) -> tuple[PrefixStore, ActivationStore] | None:
    """Where a run's frozen prefix and its activations are kept for later runs (`--cache auto`), or None: with
    `--cache memory` or off, in a distributed run (each rank caches its own shard), or for weights no other run
    shares (random initialisation)."""
    cfg, choice = setup.cfg, setup.choice
    weights = weights_identity(choice.weights)
    if cfg.cache != "auto" or setup.dist.enabled or weights is None:
        return None
    import onnxruntime
    import torch

    groups = [(g.name, list(g.members)) for g in choice.spec.groups]
    prefix = {"backbone": choice.spec.name, "groups": groups, "weights": weights, "preprocess": choice.pre.to_dict(),
              "input": setup.loaders.train_size, "channels_last": setup.channels_last, "torch": torch.__version__,
              "onnxruntime": onnxruntime.__version__}  # fmt: skip
    augmented = bool(cfg.cache_augmented) and setup.augment != "none"  # only augmented copies depend on the seed
    activations = {**prefix, "engine": cfg.cache_engine, "device": setup.device.type,
                   "decode": setup.loaders.short_side, "classes": setup.classes,
                   "multi_label": setup.data.task.multi_label, "seed": cfg.seed if augmented else None,
                   "augment": setup.augment}  # fmt: skip
    return PrefixStore(prefix), ActivationStore(activations)


def keep_file(path: Path, stored: Path) -> None:
    """Copy a new export into the store (whole or not at all); a store that cannot take it only costs time."""
    try:
        atomic_write(stored, lambda tmp: shutil.copyfile(path, tmp))
    except OSError as exc:
        log.info("cannot keep the prefix in %s (%s)", stored.parent, exc.strerror or exc)


class PrefixStore:
    """The frozen prefix of one (backbone, weights, boundary, input) as an ONNX file, shared by every run."""

    def __init__(self, identity: dict[str, Any], folder: Path | None = None):
        self.identity = identity
        self.folder = folder or cache_root() / "prefix"

    def path(self, boundary: int) -> Path:
        return self.folder / f"{key_of({**self.identity, 'boundary': boundary, 'kind': 'prefix'})}.onnx"


class ActivationStore:
    """A run's train and val activations at a boundary, kept as KEY.npz (arrays) and KEY.json (what they are)."""

    def __init__(self, identity: dict[str, Any], folder: Path | None = None):
        self.identity = identity
        self.folder = folder or cache_root() / "activations"

    def key(self, boundary: int, train: list, val: list, copies: int) -> str:
        return key_of({
            **self.identity, "boundary": boundary, "copies": copies, "kind": "activations",
            "train": files_identity(train), "val": files_identity(val),
        })  # fmt: skip

    def read(self, key: str, copies: int):
        """The (train, val) `FeatureCache`s kept under `key`, or None (absent, unreadable or not what was asked)."""
        import torch

        from zoo.training.cache import FeatureCache

        start = time.perf_counter()
        found = self.load(key)
        if found is None:
            return None
        meta, arrays = found
        try:
            caches = []
            for part, n_copies in (("train", copies), ("val", 1)):
                tensors = [torch.from_numpy(arrays[f"{part}{i}"]) for i in range(meta["wires"])]
                labels = torch.from_numpy(arrays[f"{part}_labels"])
                if any(len(t) != n_copies * len(labels) for t in tensors):
                    raise ValueError(f"{part}: {[len(t) for t in tensors]} rows for {len(labels)} labels")
                caches.append(FeatureCache(tensors, labels, n_copies, meta["engine"], 0.0, stored=True))
        except (KeyError, ValueError, TypeError) as exc:
            log.info("stored activations %s unusable (%s): computing them again", key, exc)
            return None
        caches[0].seconds = time.perf_counter() - start
        log.info("activations read from %s in %.2f s", self.folder, caches[0].seconds)
        return caches[0], caches[1]

    def keep(self, key: str, train, val, boundary: str) -> bool:
        """Keep a run's (train, val) `FeatureCache`s under `key` for later runs."""
        arrays = {}
        for part, cache in (("train", train), ("val", val)):
            arrays.update({f"{part}{i}": t.numpy() for i, t in enumerate(cache.tensors)})
            arrays[f"{part}_labels"] = cache.labels.numpy()
        meta = {"engine": train.engine, "boundary": boundary, "wires": len(train.tensors), "copies": train.copies,
                "train": train.n, "val": val.n, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        return self.save(key, meta, arrays)

    def has(self, key: str) -> bool:
        return (self.folder / f"{key}.npz").is_file() and (self.folder / f"{key}.json").is_file()

    def load(self, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        meta_file, arrays_file = self.folder / f"{key}.json", self.folder / f"{key}.npz"
        try:
            meta = json.loads(meta_file.read_text())
            with np.load(arrays_file) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, KeyError, EOFError) as exc:
            if meta_file.exists() or arrays_file.exists():
                log.info("stored activations %s unreadable (%s): computing them again", key, exc)
            return None
        now = time.time()
        try:
            os.utime(arrays_file, (now, now))  # recently used: the last to be removed
        except OSError:
            pass
        return meta, arrays

    def save(self, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bool:
        size = sum(a.nbytes for a in arrays.values())
        if size > ENTRY_LIMIT:
            log.info("activations of %.0f MB not kept between runs (over %d MB)", size / 1e6, ENTRY_LIMIT >> 20)
            return False
        try:
            atomic_write(self.folder / f"{key}.npz", lambda tmp: _savez(tmp, arrays))
            write_json(self.folder / f"{key}.json", meta)
        except OSError as exc:  # a full or read-only cache only costs the next run its forward pass
            log.warning("cannot keep the activations in %s (%s)", self.folder, exc.strerror or exc)
            return False
        self.prune()
        return True

    def prune(self, limit: int = FOLDER_LIMIT) -> None:
        """Remove the least recently used entries until the folder holds at most `limit` bytes."""
        try:
            entries = sorted(self.folder.glob("*.npz"), key=lambda p: p.stat().st_mtime)
            sizes = {p: p.stat().st_size for p in entries}
        except OSError:
            return
        total = sum(sizes.values())
        for path in entries:
            if total <= limit:
                break
            for f in (path, path.with_suffix(".json")):
                f.unlink(missing_ok=True)
            total -= sizes[path]


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would add '.npz' to a name
        np.savez(f, **arrays)
