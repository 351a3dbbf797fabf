"""Predictions as results: probabilities from logits, top-k rows, label sets, and reading the images asked about.

Shared by `zoo predict` on a checkpoint (torch) and on an exported model (`zoo.runtime.predictor`, no torch).
Single-label models give softmax probabilities and the top k; multi-label models give
independent sigmoid probabilities, the set of labels at or above their thresholds ("labels"),
and the top k as well.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zoo.core.errors import DataError, UsageError


def check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: must be >= 1")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -80, 80)))


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    return sigmoid(logits) if multi_label else softmax(logits)


def read_images(images: list[str | Path], load: Callable[[Path], np.ndarray]) -> list[np.ndarray]:
    """`load(path)` for each image file; a missing or unreadable file is a one-line error."""
    if not images:
        raise UsageError("no image given: pass one or more image files")
    arrays = []
    for path in map(Path, images):
        if path.is_dir():
            raise UsageError(f"{path}: is a folder; pass image files (e.g. {path}/*.jpg)")
        if not path.is_file():
            raise DataError(f"{path}: no such image file")
        try:
            arrays.append(load(path))
        except Exception as exc:
            raise DataError(f"{path}: cannot read it as an image ({type(exc).__name__}: {exc})") from None
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


def results(
    images: list[str | Path], probs: np.ndarray, labels: list[str], k: int, thresholds: list[float] | None = None
) -> list[dict[str, Any]]:
    """Top-k rows; with `thresholds` (multi-label), each row also has "labels": every label at or above its
    threshold, most probable first (possibly none)."""
    rows = top_k_results(images, probs, labels, k)
    if thresholds is not None:
        for row, p in zip(rows, probs, strict=True):
            chosen = [i for i in np.argsort(-p, kind="stable") if p[i] >= thresholds[i]]
            row["labels"] = [{"label": labels[i], "probability": round(float(p[i]), 6)} for i in chosen]
    return rows
