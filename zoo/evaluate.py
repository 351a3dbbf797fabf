"""`zoo evaluate` and `zoo predict` with a fine-tuned torch checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.checkpoint import load_model, preprocess_of
from zoo.data import eval_samples
from zoo.errors import DataError
from zoo.images import load_for_eval
from zoo.metrics import accuracy, confusion, per_class
from zoo.models import split_outputs
from zoo.predictions import check_top_k, read_images, softmax, top_k_results


def _logits(model, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return split_outputs(model(batch))[0].float()


def evaluate(run: str | Path, data: str | Path, batch_size: int = 32) -> dict[str, Any]:
    """Accuracy, per-class precision and recall, and the confusion matrix of a checkpoint on DATA."""
    model, ckpt = load_model(run)
    classes = list(ckpt["classes"])
    samples = eval_samples(Path(data), classes)
    pre = preprocess_of(ckpt)
    preds: list[int] = []
    labels: list[int] = []
    skipped: list[str] = []
    batch: list[np.ndarray] = []
    pending: list[int] = []

    def flush() -> None:
        if batch:
            preds.extend(_logits(model, torch.from_numpy(np.stack(batch))).argmax(1).tolist())
            labels.extend(pending)
            batch.clear()
            pending.clear()

    for sample in samples:
        try:
            array = load_for_eval(sample.path, pre)
        except Exception as exc:
            skipped.append(f"{sample.path} ({type(exc).__name__})")
            continue
        batch.append(array)
        pending.append(sample.label)
        if len(batch) == batch_size:
            flush()
    flush()
    if not labels:
        raise DataError(f"{data}: none of the images could be read")
    matrix = confusion(labels, preds, len(classes))
    return {
        "checkpoint": str(run),
        "data": str(data),
        "images": len(labels),
        "accuracy": accuracy(matrix),
        "per_class": per_class(matrix, classes),
        "classes": classes,
        "confusion_matrix": matrix,
        "skipped": skipped,
    }


def predict(run: str | Path, images: list[str | Path], top_k: int = 5) -> list[dict[str, Any]]:
    """Top-k labels and probabilities for each image, with the same preprocessing as `zoo.runtime`."""
    check_top_k(top_k)
    model, ckpt = load_model(run)
    pre = preprocess_of(ckpt)
    arrays = read_images(images, lambda path: load_for_eval(path, pre))
    logits = _logits(model, torch.from_numpy(np.stack(arrays))).numpy()
    return top_k_results(images, softmax(logits), list(ckpt["classes"]), top_k)
