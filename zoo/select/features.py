"""A candidate's pretrained features over a sample of the data: computed once, then read from a cache.

A candidate is a backbone with its default pretrained weights, or `NAME@cut:GROUP`: the features at the boundary
after GROUP. The model is cut there with the frozen-prefix machinery (`model.cut.cut_at`), the prefix runs in
onnxruntime when it agrees with torch (`training.cache.PrefixRunner`), and its output is average-pooled. For a
whole backbone whose weights keep their pretrained classifier, the head also runs on the same activations, giving
the source-label probabilities that LEEP and NCE need. The cost of one image in the engine that computed the
features is timed on the way.

The cache key is everything the features depend on: the backbone, the weights (their sha256 or URL), the boundary,
the preprocessing and the data's fingerprint (every sampled file's path, size, modification time and label). A
second rank over the same data computes only the candidates it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.core.atomic import atomic_write, write_json
from zoo.core.errors import UsageError

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when what a cached entry holds changes
HEAD = "head"  # the boundary name of a whole backbone: the features its classifier sees
CHECK_BATCH = 4  # images onnxruntime is checked on against torch eager (several times slower on the CPU)
_CUT = re.compile(r"^(?P<name>[^@]+)@cut:(?P<group>[^@]+)$")


@dataclass(frozen=True)
class Candidate:
    """What `zoo rank` scores: a backbone, whole (`cut` None) or cut after the group `cut`."""

    backbone: str
    cut: str | None = None

    @property
    def label(self) -> str:
        return f"{self.backbone}@cut:{self.cut}" if self.cut else self.backbone

    @classmethod
    def parse(cls, text: str) -> tuple[str, str | None]:
        """`NAME` or `NAME@cut:GROUP` -> (NAME, GROUP or None); NAME may be a glob."""
        text = text.strip()
        if "@" not in text:
            return text, None
        match = _CUT.match(text)
        if not match:
            raise UsageError(f"candidate {text!r}: write NAME or NAME@cut:GROUP (a group of `zoo info NAME`)")
        return match["name"], match["group"]


@dataclass
class Features:
    """Pooled features of the sampled images, and what computing them cost."""

    features: np.ndarray  # (n, d) float32
    source_probs: np.ndarray | None  # (n, Z): the pretrained classifier's softmax; None without one
    engine: str  # what computed them: onnxruntime or torch
    ms_per_image: float | None  # one image at batch size 1 in that engine, median of several runs
    seconds: float  # building, exporting and running the model
    cached: bool = False


def fingerprint(samples: list, classes: list[str]) -> str:
    """The sampled data's identity: each file's path, size, modification time and label, and the class names."""
    digest = hashlib.sha256(json.dumps(classes).encode())
    for s in samples:
        try:
            st = os.stat(s.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "?"
        digest.update(f"{os.path.abspath(s.path)}\0{stamp}\0{s.label}\n".encode())
    return digest.hexdigest()


def cache_key(spec, weights, boundary: str, pre, data_id: str) -> str:
    identity = {
        "version": CACHE_VERSION,
        "backbone": spec.name,
        "weights": weights.tag,
        "weights_id": weights.sha256 or weights.hash_prefix or weights.url,
        "boundary": boundary,
        "preprocess": pre.to_dict(),
        "data": data_id,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cache_dir() -> Path:
    from zoo.catalogue.registry import zoo_home

    return zoo_home() / "cache" / "features"


class FeatureStore:
    """Features (`KEY.npz`) and what was measured with them (`KEY.json`: cost, scores) under one folder."""

    def __init__(self, folder: Path | None):
        self.folder = folder  # None: nothing is read or kept

    def load(self, key: str) -> tuple[Features, dict[str, Any]] | None:
        if self.folder is None:
            return None
        meta_file, arrays = self.folder / f"{key}.json", self.folder / f"{key}.npz"
        try:
            meta = json.loads(meta_file.read_text())
            with np.load(arrays) as npz:
                feats = npz["features"]
                probs = npz["source_probs"] if "source_probs" in npz.files else None
        except (OSError, ValueError, KeyError) as exc:
            if meta_file.exists() or arrays.exists():
                log.info("feature cache %s unreadable (%s): computing it again", key, exc)
            return None
        found = Features(feats, probs, meta["engine"], meta.get("ms_per_image"), meta.get("seconds", 0.0), True)
        return found, meta

    def save(self, key: str, found: Features, meta: dict[str, Any]) -> None:
        if self.folder is None:
            return
        arrays = {"features": found.features}
        if found.source_probs is not None:
            arrays["source_probs"] = found.source_probs
        try:
            atomic_write(self.folder / f"{key}.npz", lambda tmp: _savez(tmp, arrays))
            record = {"engine": found.engine, "ms_per_image": found.ms_per_image, "seconds": found.seconds, **meta}
            write_json(self.folder / f"{key}.json", record)
        except OSError as exc:  # a full or read-only cache only costs the next rank time
            log.warning("cannot keep the features in %s (%s)", self.folder, exc.strerror or exc)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would add '.npz' to a name
        np.savez(f, **arrays)


def boundary_index(spec, cut: str | None) -> int:
    """How many groups the prefix holds: all but the head, or up to and including `cut`."""
    names = spec.group_names
    if cut is None:
        return len(names) - 1
    if cut not in names[:-1]:
        raise UsageError(f"{spec.name}@cut:{cut}: no such group before the head; groups: {', '.join(names[:-1])}")
    return names.index(cut) + 1


def extract(spec, choice, cut: str | None, samples: list, decoded: dict, target_fn=None, batch_size: int = 32):
    """Features of `samples` for the candidate (spec, choice, cut); raises on a model that cannot be built or cut."""
    import torch

    from zoo.data.images import decode_size
    from zoo.model.build import create_model
    from zoo.model.cut import Pool, cut_at
    from zoo.training.cache import PrefixRunner
    from zoo.training.loaders import ImageDataset, build_transform

    start = time.perf_counter()
    pre = spec.preprocess_for(choice.tag)
    model = create_model(spec, weights=choice).eval()
    k = boundary_index(spec, cut)
    prefix, suffix = cut_at(model, spec, k)
    head = cut is None and _has_source_classifier(choice.tag)
    runner = PrefixRunner(prefix, torch.device("cpu"), "onnxruntime", len(samples), atol=spec.atol)
    pool = Pool(spec.features_layout)
    loader = torch.utils.data.DataLoader(
        ImageDataset(samples, build_transform(pre, "none"), decoded, decode_size(pre), target_fn),
        batch_size=batch_size,
    )
    feats, probs = [], []
    first = None

    def batches():
        for images, _ in loader:
            if first is None:  # the runner checks onnxruntime against torch on its first batch: a small one
                yield images[:CHECK_BATCH]
                images = images[CHECK_BATCH:]
            if len(images):
                yield images

    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for images in batches():
            first = images[:1] if first is None else first
            acts = runner(images)
            if cut is not None and len(acts) != 1:
                raise UsageError(f"{spec.name}: the output of group '{cut}' is not a single tensor; cannot cut there")
            feats.append(torch.cat([pool(a.float()).flatten(1) for a in acts], dim=1))
            if head:
                logits = suffix(*acts)
                logits = logits[0] if isinstance(logits, tuple | list) else logits
                probs.append(torch.softmax(logits.float(), dim=1))
    ms = _time_one_image(runner, first) if first is not None else None
    features = torch.cat(feats).numpy().astype(np.float32)
    source = torch.cat(probs).numpy().astype(np.float32) if probs else None
    return Features(features, source, runner.engine, ms, time.perf_counter() - start)


def cached_features(
    spec,
    choice,
    cut: str | None,
    samples: list,
    classes: list[str],
    store: FeatureStore,
    decoded: dict | None = None,
    target_fn=None,
) -> Features:
    """`extract`'s features of `samples` for (spec, choice, cut), read from `store` when it has them under the key
    `zoo rank` uses (so rank and audit on the same samples share them), else computed and kept there."""
    pre = spec.preprocess_for(choice.tag)
    key = cache_key(spec, choice.tag, cut or HEAD, pre, fingerprint(samples, classes))
    hit = store.load(key)
    if hit is not None:
        return hit[0]
    found = extract(spec, choice, cut, samples, decoded or {}, target_fn)
    store.save(key, found, {})
    return found


def _has_source_classifier(weights) -> bool:
    return bool(weights is not None and (weights.categories or (weights.num_classes or 0) > 0))


def _time_one_image(runner, image, repeats: int = 7) -> float:
    """Milliseconds for one image at batch size 1 in the runner's engine: the median of `repeats` after a warm-up."""
    import torch

    def once() -> float:
        started = time.perf_counter()
        if runner.session is not None:
            runner.session.run(None, {"input": image.numpy()})
        else:
            with torch.no_grad():
                runner.prefix(image)
        return (time.perf_counter() - started) * 1000

    once()
    return round(statistics.median(once() for _ in range(repeats)), 3)
