"""`zoo evaluate` and `zoo predict` with a fine-tuned torch checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zoo.checkpoint import load_model, preprocess_of
from zoo.data import (
    DataError,
    Sample,
    class_dirs,
    decode_size,
    image_files,
    load_for_eval,
)
from zoo.errors import ZooError
from zoo.models import split_outputs
from zoo.plots import confusion


def _eval_samples(data: Path, classes: list[str]) -> list[Sample]:
    """Labelled images of DATA (its val/ part when it has one), labelled with the checkpoint's classes."""
    data = Path(data).expanduser()
    if not data.is_dir():
        raise DataError(f"{data}: no such folder")
    root = data / "val" if (data / "val").is_dir() else data
    folders = class_dirs(root)
    if not folders:
        raise DataError(f"{root}: no class folders; expected {root}/<class>/*.jpg")
    unknown = [f.name for f in folders if f.name not in classes]
    if unknown:
        raise DataError(
            f"{root}: class(es) {', '.join(unknown)} are not among the model's classes ({', '.join(classes)})"
        )
    samples = [Sample(p, classes.index(f.name)) for f in folders for p in image_files(f)]
    if not samples:
        raise DataError(f"{root}: no images")
    return samples


def _logits(model, batch: torch.Tensor) -> torch.Tensor:
    return split_outputs(model(batch))[0]


def evaluate(run: str | Path, data: str | Path, batch_size: int = 32) -> dict[str, Any]:
    """Accuracy, per-class precision and recall, and the confusion matrix of a checkpoint on DATA."""
    model, ckpt = load_model(run)
    classes = list(ckpt["classes"])
    samples = _eval_samples(Path(data), classes)
    pre = preprocess_of(ckpt)
    preds: list[int] = []
    labels: list[int] = []
    skipped: list[str] = []
    batch: list[torch.Tensor] = []
    pending: list[int] = []

    def flush() -> None:
        if batch:
            with torch.no_grad():
                preds.extend(_logits(model, torch.stack(batch)).argmax(1).tolist())
            labels.extend(pending)
            batch.clear()
            pending.clear()

    for sample in samples:
        try:
            array = load_for_eval(
                sample.path, pre.input_size, pre.resize_size, pre.mean, pre.std, pre.interpolation, decode_size(pre)
            )
        except Exception as exc:
            skipped.append(f"{sample.path} ({type(exc).__name__})")
            continue
        batch.append(torch.from_numpy(array))
        pending.append(sample.label)
        if len(batch) == batch_size:
            flush()
    flush()
    if not labels:
        raise DataError(f"{data}: none of the images could be read")
    matrix = confusion(labels, preds, len(classes))
    per_class = []
    for i, name in enumerate(classes):
        tp = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        actual = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": actual})
    return {
        "checkpoint": str(run),
        "data": str(data),
        "images": len(labels),
        "accuracy": sum(matrix[i][i] for i in range(len(classes))) / len(labels),
        "per_class": per_class,
        "classes": classes,
        "confusion_matrix": matrix,
        "skipped": skipped,
    }


def predict(run: str | Path, images: list[str | Path], top_k: int = 5) -> list[dict[str, Any]]:
    """Top-k labels and probabilities for each image, with the same preprocessing as `zoo.runtime`."""
    import numpy as np

    from zoo.runtime import read_images, softmax, top_k_results

    if top_k < 1:
        raise ZooError(f"--top-k {top_k}: must be >= 1")
    model, ckpt = load_model(run)
    pre = preprocess_of(ckpt)
    arrays = read_images(
        images,
        lambda path: load_for_eval(
            path, pre.input_size, pre.resize_size, pre.mean, pre.std, pre.interpolation, decode_size(pre)
        ),
    )
    with torch.no_grad():
        logits = _logits(model, torch.from_numpy(np.stack(arrays))).float().numpy()
    return top_k_results(images, softmax(logits), list(ckpt["classes"]), top_k)
