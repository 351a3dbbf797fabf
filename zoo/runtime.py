"""Running an exported model without PyTorch: onnxruntime, numpy and Pillow only.

Everything the model needs is read from the ONNX file's metadata: labels, input
size, resize, crop, mean, std and interpolation. Deploy it like this:

    import onnxruntime as ort, numpy as np, json
        session = ort.InferenceSession("model.onnx")
    meta = session.get_modelmeta().custom_metadata_map
    labels = json.loads(meta["zoo.labels"])
    ...  # or simply: from zoo.runtime import Predictor

This module must never import torch: `zoo predict model.onnx` runs where torch
is not installed (a test checks it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ZooError


class RuntimeModelError(ZooError):
    """An ONNX file that zoo's runtime cannot use."""


@dataclass(frozen=True)
class ModelInfo:
    labels: list[str]
    input_size: tuple[int, int]
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    decode_size: int
    metadata: dict[str, str]


def read_metadata(meta: dict[str, str], where: str = "model") -> ModelInfo:
    try:
        return ModelInfo(
            labels=json.loads(meta["zoo.labels"]),
            input_size=tuple(json.loads(meta["zoo.input_size"])),
            resize_size=int(meta["zoo.resize_size"]),
            mean=tuple(json.loads(meta["zoo.mean"])),
            std=tuple(json.loads(meta["zoo.std"])),
            interpolation=meta.get("zoo.interpolation", "bilinear"),
            decode_size=int(meta.get("zoo.decode_size", meta["zoo.resize_size"])),
            metadata=dict(meta),
        )
    except (KeyError, ValueError) as exc:
        raise RuntimeModelError(f"{where}: no zoo metadata ({exc}); export it with `zoo export`") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """Top-k predictions from an exported zoo model.

    Example:
        >>> Predictor("model.onnx").predict(["ant.jpg"], top_k=2)
        [{'image': 'ant.jpg', 'top': [{'label': 'ants', 'probability': 0.97}, ...]}]
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise RuntimeModelError(f"{path}: no such model file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise RuntimeModelError(
                f"{path}: onnxruntime cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
            ) from None
        self.info = read_metadata(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch.astype(np.float32)})[0]

    def load(self, path: str | Path) -> np.ndarray:
        """An image file as this model's input, (C, H, W) float32."""
        from zoo.data import load_for_eval

        i = self.info
        return load_for_eval(path, i.input_size, i.resize_size, i.mean, i.std, i.interpolation, i.decode_size)

    def predict(self, images: list[str | Path], top_k: int = 5, batch_size: int = 16) -> list[dict[str, Any]]:
        if top_k < 1:
            raise ZooError(f"--top-k {top_k}: must be >= 1")
        arrays = read_images(images, self.load)
        probs = [softmax(self.logits(np.stack(arrays[i : i + batch_size]))) for i in range(0, len(arrays), batch_size)]
        return top_k_results(images, np.concatenate(probs), self.info.labels, top_k)


def read_images(images: list[str | Path], load) -> list[np.ndarray]:
    """`load(path)` for each image file; a missing or unreadable file is a one-line ZooError."""
    arrays = []
    for path in map(Path, images):
        if not path.is_file():
            raise ZooError(f"{path}: no such image file")
        try:
            arrays.append(load(path))
        except ZooError:
            raise
        except Exception as exc:
            raise ZooError(f"{path}: cannot read it as an image ({type(exc).__name__}: {exc})") from None
    return arrays


def top_k_results(images: list[str | Path], probs: np.ndarray, labels: list[str], k: int) -> list[dict[str, Any]]:
    """[{"image": ..., "top": [{"label": ..., "probability": ...}, ...]}, ...], most probable first."""
    k = min(k, len(labels))
    results = []
    for path, row in zip(images, probs, strict=True):
        order = np.argsort(-row, kind="stable")[:k]
        results.append(
            {"image": str(path), "top": [{"label": labels[i], "probability": round(float(row[i]), 6)} for i in order]}
        )
    return results
