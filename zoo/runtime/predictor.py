"""Running an exported model without PyTorch: onnxruntime, numpy and Pillow only.

Everything the model needs is read from the ONNX file's metadata (`zoo.runtime.onnx_meta`):
labels, input size, resize, crop, mean, std and interpolation, and for a multi-label
model its per-label thresholds. Deploy it like this:

    from zoo.runtime.predictor import Predictor
    Predictor("model.onnx").predict(["ant.jpg"], top_k=2)

This module must never import torch: `zoo predict model.onnx` runs where torch
is not installed (a test checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zoo.core.errors import ModelFileError
from zoo.data.images import load_for_eval
from zoo.runtime import DEFAULT_TOP_K
from zoo.runtime.embedded import OUTPUTS, is_embedded, raw_pixels
from zoo.runtime.onnx_io import ort_session
from zoo.runtime.onnx_meta import ModelMetadata
from zoo.runtime.predictions import check_top_k, probabilities, read_images, results


class Predictor:
    """Top-k predictions from an exported zoo model (multi-label: also the labels over their thresholds).

    Example:
        >>> Predictor("model.onnx").predict(["ant.jpg"], top_k=2)
        [{'image': 'ant.jpg', 'top': [{'label': 'ants', 'probability': 0.97}, ...]}]
        >>> Predictor("tags.onnx").predict(["street.jpg"])[0]["labels"]      # a multi-label model
        [{'label': 'car', 'probability': 0.91}, {'label': 'person', 'probability': 0.64}]
    """

    def __init__(self, path: str | Path, threads: int | None = None, provider: str | None = None):
        """`provider`: an onnxruntime execution provider by --provider's name (cpu, cuda, tensorrt, openvino, ...);
        the CPU runs what it lacks."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such model file")
        self.path = path
        self.session = ort_session(path, threads, provider=provider)
        self.info = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.input_name = self.session.get_inputs()[0].name
        # exported with --embed-preprocessing: the graph takes decoded uint8 pixels and returns probabilities
        self.embedded = is_embedded(self.session)
        if not self.embedded:
            self._check_graph()

    def _check_graph(self) -> None:
        """The metadata must describe this graph: its input size and its number of outputs."""
        pre = self.info.preprocess
        shape = self.session.get_inputs()[0].shape  # e.g. ['batch', 3, 224, 224]
        if len(shape) == 4:
            fixed = [d if isinstance(d, int) else None for d in shape]
            want = [pre.channels, *pre.input_size]
            for got, expected, what in zip(fixed[1:], want, ("channels", "height", "width"), strict=True):
                if got is not None and got != expected:
                    raise ModelFileError(
                        f"{self.path}: the metadata says {what} {expected} but the graph takes {got}; "
                        "the metadata was edited or does not belong to this graph: export it again"
                    )
        out = self.session.get_outputs()[0].shape
        if out and isinstance(out[-1], int) and out[-1] != len(self.info.labels):
            raise ModelFileError(
                f"{self.path}: {len(self.info.labels)} labels in the metadata but the model has {out[-1]} outputs; "
                "export it again"
            )

    def logits(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.session.run(None, {self.input_name: batch.astype(np.float32)})[0]
        except Exception as exc:
            raise ModelFileError(
                f"{self.path}: onnxruntime cannot run it on {'x'.join(map(str, batch.shape))} input "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
            ) from None

    def load(self, path: str | Path) -> np.ndarray:
        """An image file as this model's input: (C, H, W) float32, or for a model with its preprocessing inside,
        the decoded (H, W, 3) uint8 pixels."""
        if self.embedded:
            return raw_pixels(path)
        return load_for_eval(path, self.info.preprocess, self.info.decode_size)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, classes) probabilities (softmax; multi-label: sigmoid) for a batch of `load`ed images of one shape."""
        if not self.embedded:
            return probabilities(self.logits(batch), self.info.multi_label)
        try:
            return self.session.run([OUTPUTS[0]], {self.input_name: batch.astype(np.uint8)})[0]
        except Exception as exc:
            raise ModelFileError(
                f"{self.path}: onnxruntime cannot run it on {'x'.join(map(str, batch.shape))} pixels "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
            ) from None

    @property
    def fixed_batch(self) -> int | None:
        """The batch size a graph exported with `--batch N` takes (exactly N); None: any."""
        first = self.session.get_inputs()[0].shape
        return first[0] if first and isinstance(first[0], int) else None

    def probabilities_of(self, arrays: list[np.ndarray]) -> np.ndarray:
        """(len(arrays), classes) probabilities for `load`ed images in any order of shapes: those of one shape run
        together (raw pixels vary in size), in batches of exactly N for a graph exported with `--batch N` (the
        last one padded)."""
        fixed = self.fixed_batch
        probs = np.zeros((len(arrays), len(self.info.labels)), np.float32)
        groups: dict[tuple, list[int]] = {}
        for i, array in enumerate(arrays):
            groups.setdefault((array.shape, array.dtype.str), []).append(i)
        for members in groups.values():
            step = fixed or len(members)
            for start in range(0, len(members), step):
                part = members[start : start + step]
                batch = np.stack([arrays[i] for i in part])
                if fixed is not None and len(part) < fixed:
                    batch = np.concatenate([batch, np.zeros((fixed - len(part), *batch.shape[1:]), batch.dtype)])
                probs[part] = self.probabilities(batch)[: len(part)]
        return probs

    def predict(
        self, images: list[str | Path], top_k: int = DEFAULT_TOP_K, batch_size: int = 16
    ) -> list[dict[str, Any]]:
        check_top_k(top_k)
        arrays = read_images(images, self.load)
        probs = np.concatenate(
            [self.probabilities_of(arrays[i : i + batch_size]) for i in range(0, len(arrays), batch_size)]
        )
        return results(images, probs, list(self.info.labels), top_k, self.info.thresholds)
