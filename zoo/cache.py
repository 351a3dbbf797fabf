"""The frozen-prefix cache: run the frozen groups once, train the rest on their activations.

A frozen prefix needs no gradients and (with BatchNorm in eval mode and no
augmentation) gives the same output every epoch, so computing it once is exact,
not an approximation. Any inference engine may compute it: on the CPU,
onnxruntime runs the exported prefix several times faster than torch eager,
and its output is checked against torch's before it is used.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnxruntime")
MEMORY_LIMIT = 2 << 30  # activations larger than this go to a memory-mapped file on disk
ORT_MIN_IMAGES = 48  # below this, exporting the prefix (about 1.5 s) costs more than onnxruntime saves


@dataclass
class FeatureCache:
    """Activations at the freeze boundary: `copies` stacked versions of every sample."""

    tensors: list[torch.Tensor]  # one per boundary wire, each (copies * n, ...)
    labels: torch.Tensor  # (n,)
    copies: int = 1
    engine: str = "torch"
    seconds: float = 0.0
    on_disk: bool = False
    files: list[Path] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, copy: int = 0, shuffle: bool = True
    ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
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


def _ort_session(prefix, example: torch.Tensor, n_outputs: int):
    """The prefix exported to ONNX and loaded in onnxruntime, or None when it cannot be."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "prefix.onnx")
        names = [f"out{i}" for i in range(n_outputs)]
        axes = {name: {0: "batch"} for name in ["input", *names]}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # exporter chatter about constant folding and deprecations
                torch.onnx.export(
                    prefix,
                    (example,),
                    path,
                    input_names=["input"],
                    output_names=names,
                    dynamic_axes=axes,
                    opset_version=17,
                    dynamo=False,
                )
        except Exception as exc:  # an exporter gap only costs speed: torch computes the cache instead
            log.info(
                "onnxruntime cache engine unavailable (%s: %s); using torch",
                type(exc).__name__,
                str(exc).splitlines()[0][:160],
            )
            return None
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class PrefixRunner:
    """Runs a frozen prefix batch by batch: with onnxruntime where it is faster and agrees with torch."""

    def __init__(
        self, prefix, device: torch.device, engine: str = "auto", images: int = 0, channels_last: bool = False
    ):
        if engine == "auto":
            engine = "onnxruntime" if device.type == "cpu" and images >= ORT_MIN_IMAGES else "torch"
        self.prefix, self.device, self.engine, self.channels_last = prefix.eval(), device, engine, channels_last
        self.session = None
        self.checked = engine != "onnxruntime"

    def _torch(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return [o.float().cpu() for o in self.prefix(images.to(self.device, non_blocking=True))]

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        if not self.checked:  # first batch: export, then compare with torch before trusting it
            self.checked = True
            reference = self._torch(images)
            self.session = _ort_session(self.prefix, images[:2].to(self.device), len(reference))
            if self.session is not None:
                got = self.session.run(None, {"input": images.numpy()})
                if _close(got, reference):
                    return [torch.from_numpy(o) for o in got]
                log.info("onnxruntime prefix differs from torch; computing the cache with torch")
                self.session = None
            self.engine = "torch"
            return reference
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
    labels = torch.empty(n, dtype=torch.long)
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
                if c == 0:
                    labels[row : row + b] = target
                row += b
                done += b
                if progress:
                    progress(done, total)
    tensors = [torch.from_numpy(s) if isinstance(s, np.ndarray) else s for s in store or []]
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


def _close(got: list[np.ndarray], reference: list[torch.Tensor]) -> bool:
    for g, r in zip(got, reference, strict=True):
        r = r.cpu().numpy()
        if g.shape != r.shape:
            return False
        scale = max(1.0, float(np.abs(r).max()))
        if not math.isfinite(float(np.abs(g - r).max())) or float(np.abs(g - r).max()) > 1e-3 * scale:
            return False
    return True
