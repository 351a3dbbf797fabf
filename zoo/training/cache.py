"""The frozen-prefix cache: run the frozen groups once, train the rest on their activations.

A frozen prefix needs no gradients and (with BatchNorm in eval mode and no
augmentation) gives the same output every epoch, so computing it once is exact,
not an approximation. Any inference engine may compute it: on the CPU,
onnxruntime runs the exported prefix several times faster than torch eager,
and its output is checked against torch's before it is used.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.core.check import all_close
from zoo.core.errors import CutError
from zoo.core.timing import phase
from zoo.training.shared import active as sharing_active
from zoo.training.shared import shared

log = logging.getLogger(__name__)

MEMORY_LIMIT = 2 << 30  # activations larger than this go to a memory-mapped file on disk
ORT_MIN_IMAGES = 48  # below this, exporting the prefix (about 1.5 s) costs more than onnxruntime saves
CHECK_BATCH = 4  # images onnxruntime is checked on against torch eager (several times slower on the CPU)


@dataclass
class FeatureCache:
    """Activations at the freeze boundary: `copies` stacked versions of every sample."""

    tensors: list[torch.Tensor]  # one per boundary wire, each (copies * n, ...)
    labels: torch.Tensor  # (n,) classes, or (n, C) multi-hot targets
    copies: int = 1
    engine: str = "torch"
    seconds: float = 0.0
    on_disk: bool = False
    files: list[Path] = field(default_factory=list)
    stored: bool = False  # read from an earlier run's store (zoo.training.store), not computed

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        copy: int = 0,
        shuffle: bool = True,
        weights: torch.Tensor | None = None,
    ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        """Every sample once, shuffled or in order; with `weights`, n draws with replacement in proportion to them
        (`--balance sampler` on cached activations)."""
        if weights is not None:
            order = torch.multinomial(weights, self.n, replacement=True, generator=generator)
        else:
            order = torch.randperm(self.n, generator=generator) if shuffle else torch.arange(self.n)
        offset = copy * self.n
        for start in range(0, self.n, batch_size):
            idx = order[start : start + batch_size]
            rows = idx + offset
            if self.on_disk:  # a memory-mapped file reads fastest in order
                rows, _ = rows.sort()
                idx = rows - offset
            yield [t[rows] for t in self.tensors], self.labels[idx]

    def release(self) -> None:
        self.tensors = []
        for f in self.files:
            f.unlink(missing_ok=True)


def _ort_session(prefix, example: torch.Tensor, n_outputs: int, stored: Path | None = None):
    """The prefix exported to ONNX and loaded in onnxruntime, or None when it cannot be. With `stored` (the
    store's file for this prefix), an earlier run's export is loaded instead, and a new export is kept there.

    Any failure means None, not only zoo's ExportError (write_onnx) and ModelFileError (ort_session): onnx reading
    the file back, a full temp folder or an exporter bug also only cost speed, since torch computes the same cache.
    """
    from zoo.runtime.onnx_io import ort_session, write_onnx

    threads = torch.get_num_threads()
    if stored is not None and stored.is_file():
        try:
            return ort_session(stored, threads=threads)  # checked against torch by the caller, as a new export
        except Exception as exc:
            log.info("stored prefix %s unusable (%s): exporting it again", stored, exc)
    with phase("export"), tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prefix.onnx"
        try:
            # TorchScript first: it exports a prefix in a fraction of the dynamo exporter's time
            write_onnx(
                prefix,
                (example,),
                path,
                output_names=tuple(f"out{i}" for i in range(n_outputs)),
                exporter="torchscript",
            )
            session = ort_session(path, threads=threads)
            if stored is not None:
                from zoo.training.store import keep_file

                keep_file(path, stored)
            return session
        except Exception as exc:  # an exporter gap only costs speed: torch computes the cache
            log.info(
                "onnxruntime cache engine unavailable (%s: %s); using torch",
                type(exc).__name__,
                str(exc).splitlines()[0][:160] if str(exc) else "",
            )
            return None


class PrefixRunner:
    """Runs a frozen prefix batch by batch: with onnxruntime where it is faster and agrees with torch."""

    def __init__(
        self,
        prefix,
        device: torch.device,
        engine: str = "auto",
        images: int = 0,
        channels_last: bool = False,
        atol: float = 1e-4,
        prefix_file: Path | None = None,
    ):
        if engine == "auto":
            engine = "onnxruntime" if device.type == "cpu" and images >= ORT_MIN_IMAGES else "torch"
        self.prefix, self.device, self.engine, self.channels_last = prefix.eval(), device, engine, channels_last
        self.atol = atol  # the backbone's tolerance, as for its export check
        self.prefix_file = prefix_file  # where the store keeps this prefix's export, or None
        self.session = None
        self.checked = engine != "onnxruntime"

    def _torch(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return [o.float().cpu() for o in self.prefix(images.to(self.device, non_blocking=True))]

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        if not self.checked:  # first batch: export, then compare with torch (on a few images) before trusting it
            self.checked = True
            check = images[:CHECK_BATCH]
            reference = self._torch(check)
            self.session = _ort_session(self.prefix, images[:2].to(self.device), len(reference), self.prefix_file)
            if self.session is not None:
                got = self.session.run(None, {"input": check.numpy()})
                if all_close([r.numpy() for r in reference], got, self.atol):
                    if len(images) > len(check):
                        got = self.session.run(None, {"input": images.numpy()})
                    return [torch.from_numpy(o) for o in got]
                log.info("onnxruntime prefix differs from torch; computing the cache with torch")
                self.session = None
                if self.prefix_file is not None:
                    self.prefix_file.unlink(missing_ok=True)  # a stored export that disagrees is not used again
            self.engine = "torch"
            return reference if len(images) == len(check) else self._torch(images)
        if self.session is not None:
            return [torch.from_numpy(o) for o in self.session.run(None, {"input": images.numpy()})]
        return self._torch(images)


def compute_cache(
    runner: PrefixRunner,
    loader,
    copies: int = 1,
    memory_limit: int | None = None,
    disk_dir: Path | None = None,
    progress=None,
) -> FeatureCache:
    """Run the prefix over `loader` `copies` times and keep every activation.

    `loader` yields (images, labels) in a fixed order; with augmentation its transforms are
    random, so each pass is a different augmented copy.
    """
    start = time.perf_counter()
    memory_limit = MEMORY_LIMIT if memory_limit is None else memory_limit
    n = len(loader.sampler) if loader.sampler is not None else len(loader.dataset)  # a rank's shard, if sharded
    store: list[np.ndarray | torch.Tensor] | None = None
    labels: torch.Tensor | None = None
    files: list[Path] = []
    on_disk = False
    total = n * copies
    done = 0
    with torch.no_grad():  # not inference_mode: the activations are trained on later
        for c in range(copies):
            row = c * n
            for images, target in loader:
                outs = runner(images)
                if store is None:
                    per_sample = sum(o[0].numel() * 4 for o in outs)
                    on_disk = per_sample * total > memory_limit and disk_dir is not None
                    store = []
                    for o in outs:
                        shape = (total, *o.shape[1:])
                        if on_disk:
                            disk_dir.mkdir(parents=True, exist_ok=True)
                            fd, name = tempfile.mkstemp(prefix="activations-", suffix=".npy", dir=disk_dir)
                            os.close(fd)
                            f = Path(name)
                            files.append(f)
                            store.append(np.lib.format.open_memmap(f, mode="w+", dtype=np.float32, shape=shape))
                        else:
                            store.append(torch.empty(shape, dtype=torch.float32))
                b = len(target)
                for buf, o in zip(store, outs, strict=True):
                    buf[row : row + b] = o.numpy() if on_disk else o
                if labels is None:
                    labels = torch.empty((n, *target.shape[1:]), dtype=target.dtype)
                if c == 0:
                    labels[row : row + b] = target
                row += b
                done += b
                if progress:
                    progress(done, total)
    tensors = [torch.from_numpy(s) if isinstance(s, np.ndarray) else s for s in store or []]
    labels = labels if labels is not None else torch.empty(0, dtype=torch.long)
    cache = FeatureCache(tensors, labels, copies, runner.engine, time.perf_counter() - start, on_disk, files)
    log.info(
        "cached %d x %d activations (%.1f MB, %s) with %s in %.1f s",
        copies,
        n,
        cache.nbytes / 1e6,
        "disk" if on_disk else "memory",
        runner.engine,
        cache.seconds,
    )
    return cache


class BoundaryCache:
    """The frozen-prefix cache of one run: computed at the freeze boundary, recomputed when it moves, dropped
    when the boundary is 0 or the train images are augmented (unless augmented copies are cached).

    `batches()` then yields the suffix's inputs instead of images.
    """

    def __init__(
        self,
        model,
        spec,
        groups,
        device: torch.device,
        loaders,
        train_samples: list,
        val_samples: list,
        *,
        mode: str = "auto",
        engine: str = "auto",
        augmented_copies: int = 0,
        augment: str = "none",
        train_bn: bool = False,
        channels_last: bool = False,
        seed: int = 0,
        disk_dir: Path | None = None,
        progress=None,
        sample_weights=None,
        share_key=None,
        stores=None,
    ):
        self.model, self.spec, self.groups, self.device, self.loaders = model, spec, groups, device, loaders
        self.sample_weights = sample_weights  # train labels -> draw weights (`--balance sampler`), or None
        self.train_samples, self.val_samples = train_samples, val_samples  # this rank's val share
        self.mode, self.engine, self.augmented_copies, self.augment = mode, engine, augmented_copies, augment
        self.train_bn, self.channels_last, self.seed, self.disk_dir = train_bn, channels_last, seed, disk_dir
        self.progress = progress  # progress(phase, done, total)
        self.share_key = share_key  # with the boundary, the key of these activations inside `shared.sharing()`
        self.shared = False  # the activations belong to `shared.sharing()`: never released by this run
        # (zoo.training.store's PrefixStore, ActivationStore): kept between processes; None: this run only
        self.prefix_store, self.activation_store = stores or (None, None)
        self.train: FeatureCache | None = None
        self.val: FeatureCache | None = None
        self.suffix = None
        self.k = 0
        self.info: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self.train is not None

    def wanted(self, k: int) -> bool:
        if self.mode == "off" or k == 0 or self.train_bn:
            return False
        return self.augment == "none" or self.augmented_copies > 0

    @property
    def copies(self) -> int:
        return self.augmented_copies if self.augmented_copies and self.augment != "none" else 1

    def stored(self, k: int) -> bool:
        """Whether an earlier run kept this run's activations at boundary k (then no image need be decoded)."""
        if not self.wanted(k) or self.activation_store is None:
            return False
        key = self.activation_store.key(k, self.train_samples, self.val_samples, self.copies)
        return self.activation_store.has(key)

    def ensure(self, k: int) -> None:
        """Compute (or recompute, when the boundary moved) the train and val activations at group boundary k."""
        if not self.wanted(k):
            self.drop()
            return
        if self.active and self.k == k:
            return
        self.drop()
        from zoo.model.cut import cut_at

        try:
            prefix, suffix = cut_at(self.model, self.spec, k, self.groups)
        except CutError as exc:
            log.info("frozen-prefix cache off: %s", exc)
            return
        self.model.eval()
        copies = self.copies
        train_aug = self.augment if copies > 1 else "none"
        gen = torch.Generator().manual_seed(self.seed + 1000 * k)
        images = len(self.train_samples) * copies + len(self.val_samples)
        boundary = self.spec.groups[k - 1].name

        def progress(done: int, total: int) -> None:
            if self.progress:
                self.progress(f"caching {boundary}", done, total)

        stored_key = None
        if self.activation_store is not None:
            stored_key = self.activation_store.key(k, self.train_samples, self.val_samples, copies)

        def compute() -> tuple[FeatureCache, FeatureCache]:
            stored = self.activation_store.read(stored_key, copies) if stored_key else None
            if stored is not None:
                return stored
            prefix_file = self.prefix_store.path(k) if self.prefix_store is not None else None
            # its own RNG stream: a resumed run recomputes the cache without shifting the training's random numbers
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + 1000 * k)
                runner = PrefixRunner(prefix, self.device, self.engine, images, self.channels_last, self.spec.atol,
                                      prefix_file)  # fmt: skip
                train_loader = self.loaders.loader(self.train_samples, train_aug, False, gen, epoch=0)  # its shard
                train = compute_cache(runner, train_loader, copies, disk_dir=self.disk_dir, progress=progress)
                val = compute_cache(runner, self.loaders.loader(self.val_samples), 1, disk_dir=self.disk_dir)
            if stored_key and not train.on_disk and not val.on_disk:
                self.activation_store.keep(stored_key, train, val, boundary)
            return train, val

        key = None if self.share_key is None else ("activations", self.share_key, k, copies)
        (train, val), reused = shared(key, compute) if key is not None else (compute(), False)
        self.shared = key is not None and sharing_active()  # kept by `sharing()`, which releases it
        self.train, self.val, self.suffix, self.k = train, val, suffix, k
        self.info = {
            "boundary": boundary,
            "engine": train.engine,
            "copies": copies,
            "megabytes": round((train.nbytes + val.nbytes) / 1e6, 1),
            "seconds": round(train.seconds + val.seconds, 2),
            "on_disk": train.on_disk,
            "shared": reused,  # computed by an earlier run of this process (zoo tune's trials)
            "stored": train.stored,  # read from what an earlier run kept (zoo.training.store)
        }

    def batches(self, train: bool, epoch: int, batch_size: int, generator: torch.Generator | None):
        cache = self.train if train else self.val
        copy = epoch % cache.copies if train else 0
        weights = self.sample_weights(cache.labels) if train and self.sample_weights else None
        for tensors, target in cache.batches(batch_size, generator if train else None, copy, train, weights):
            yield [t.to(self.device, non_blocking=True) for t in tensors], target.to(self.device)

    def drop(self) -> None:
        if self.train is not None and not self.shared:  # shared activations are released by `sharing()`
            self.train.release()
            self.val.release()
        self.shared = False
        self.train = self.val = self.suffix = None
        if self.disk_dir is not None:
            folders = [self.disk_dir] + ([self.disk_dir.parent] if self.disk_dir.name.startswith("rank") else [])
            for folder in folders:
                try:
                    folder.rmdir()  # only when empty; another rank may still be using the parent
                except OSError:
                    pass
