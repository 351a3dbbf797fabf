"""Classification metrics from labels and predictions: plain Python, the same for training and `zoo evaluate`."""

from __future__ import annotations

from typing import Any


def confusion(labels: list[int], preds: list[int], n: int) -> list[list[int]]:
    """n x n counts: rows are the true class, columns the predicted one."""
    matrix = [[0] * n for _ in range(n)]
    for t, p in zip(labels, preds, strict=True):
        matrix[t][p] += 1
    return matrix


def per_class(matrix: list[list[int]], classes: list[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class."""
    rows = []
    for i, name in enumerate(classes):
        tp = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        actual = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": actual})
    return rows


def accuracy(matrix: list[list[int]]) -> float:
    total = sum(map(sum, matrix))
    return sum(matrix[i][i] for i in range(len(matrix))) / total if total else 0.0
