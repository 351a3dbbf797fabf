"""Where a model fails, from its per-image predictions: the confusion matrix (counts and normalised by true class),
the most-confused pairs, the images with the highest loss, and calibration (a reliability diagram and the
expected calibration error). numpy only.

Calibration follows Guo et al. 2017, "On Calibration of Modern Neural Networks": single-label, the top-1
probability against top-1 accuracy in equal-width bins; multi-label, every (image, label) probability against
the share of those pairs that are positive. ECE = sum over bins of (pairs in bin / all) * |accuracy - confidence|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo.report.predictions import ImagePredictions

BINS = 10


def confusion(preds: ImagePredictions) -> list[list[int]]:
    """Counts: rows are the true class, columns the predicted one (single-label)."""
    import numpy as np

    n = len(preds.classes)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (preds.targets.astype(np.int64), preds.predicted().astype(np.int64)), 1)
    return matrix.tolist()


def normalised(matrix: list[list[int]]) -> list[list[float | None]]:
    """Each row divided by its true class's images (a row without images: None)."""
    import numpy as np

    counts = np.asarray(matrix, dtype=np.float64).reshape(len(matrix), -1)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    return [row if total else [None] * len(row) for row, total in zip(shares.tolist(), totals[:, 0], strict=True)]


@dataclass(frozen=True)
class Pair:
    true: str
    predicted: str
    count: int
    share: float  # of the true class's images


def most_confused(matrix: list[list[int]], classes: list[str], limit: int = 10) -> list[Pair]:
    """The off-diagonal cells with the most images, largest first (fastai's `most_confused`)."""
    import numpy as np

    counts = np.asarray(matrix, dtype=np.int64).reshape(len(matrix), -1)
    totals = counts.sum(axis=1)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    true, predicted = np.nonzero(off)
    pairs = [
        Pair(classes[t], classes[p], int(off[t, p]), float(off[t, p] / totals[t]))
        for t, p in zip(true.tolist(), predicted.tolist(), strict=True)
    ]
    return sorted(pairs, key=lambda x: (-x.count, -x.share, x.true, x.predicted))[:limit]


def top_losses(preds: ImagePredictions, limit: int) -> list[int]:
    """The indices of the `limit` images with the highest loss, highest first."""
    import numpy as np

    return np.argsort(-preds.losses(), kind="stable")[:limit].tolist()


@dataclass(frozen=True)
class Reliability:
    """The reliability diagram's bins and the expected calibration error."""

    bins: list[dict[str, Any]]  # lo, hi, count, confidence (mean probability), accuracy (share right / positive)
    ece: float
    pairs: int  # what was binned: images (single-label) or (image, label) pairs (multi-label)
    what: str


def reliability(preds: ImagePredictions, bins: int = BINS) -> Reliability:
    import numpy as np

    if preds.multi_label:
        confidence = preds.probs.astype(np.float64).ravel()
        right = preds.targets.astype(np.float64).ravel()
        what = "every (image, label) probability against the share of positives"
    else:
        confidence = preds.top_probs[:, 0].astype(np.float64)
        right = (preds.top_classes[:, 0] == preds.targets).astype(np.float64)
        what = "the top-1 probability against top-1 accuracy"
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece, total = [], 0.0, max(1, len(confidence))
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        conf = float(confidence[inside].mean()) if count else None
        acc = float(right[inside].mean()) if count else None
        if count:
            ece += count / total * abs(acc - conf)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count, "confidence": conf,
                     "accuracy": acc})  # fmt: skip
    return Reliability(rows, ece, len(confidence), what)
