"""Classification metrics from labels and scores, in numpy: the same for training, `zoo evaluate` and the bench.

Single-label (one class per image, softmax scores) and multi-label (a set of
classes per image, independent sigmoid scores, one threshold per label). The
definitions are scikit-learn's, and tests hold them to scikit-learn's numbers:

- accuracy: share of images predicted right (multi-label: the whole label set right, "exact match");
- balanced accuracy: the mean recall over the classes that occur (multi-label: the mean of
  (recall + specificity) / 2 over the labels that have positives and negatives);
- macro-F1: the mean F1 over the classes that occur or are predicted; micro-F1 (multi-label) pools
  every label's counts;
- mAP: the mean over classes with at least one positive of the average precision of its scores
  (one-vs-rest for single-label), AP = sum over score thresholds of (R_n - R_n-1) * P_n.

Multi-label thresholds are tuned on the validation set (`tune_thresholds`): for each label,
the threshold that maximises that label's F1 there, ties going to the one nearest 0.5; a label
with no positive keeps 0.5.

numpy is imported in each function, on use: `METRICS` and `SELECTABLE` are read on the command line's
`--help` and listing path (zoo.training.config's help texts), which does not load numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

DEFAULT_THRESHOLD = 0.5
# the headline numbers of a report, higher is better: what summary.json's best_val and the val_* columns of
# metrics.csv keep (micro_f1 is in multi-label reports only)
METRICS = ("acc", "balanced_acc", "macro_f1", "micro_f1", "map")
# the ones every report has, single- and multi-label: what `--select-by` can name to pick the best epoch
SELECTABLE = tuple(m for m in METRICS if m != "micro_f1")


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
        rows.append({"class": name, **_prf(tp, predicted, actual), "support": actual})
    return rows


def _prf(tp: float, predicted: float, actual: float) -> dict[str, float]:
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def accuracy(matrix: list[list[int]]) -> float:
    total = sum(map(sum, matrix))
    return sum(matrix[i][i] for i in range(len(matrix))) / total if total else 0.0


def balanced_accuracy(matrix: list[list[int]]) -> float:
    """The mean recall over the classes that occur."""
    import numpy as np

    recalls = [row[i] / sum(row) for i, row in enumerate(matrix) if sum(row)]
    return float(np.mean(recalls)) if recalls else 0.0


def macro_f1(matrix: list[list[int]]) -> float:
    """The mean F1 over the classes that occur or are predicted."""
    import numpy as np

    rows = per_class(matrix, [str(i) for i in range(len(matrix))])
    used = [r["f1"] for i, r in enumerate(rows) if r["support"] or sum(m[i] for m in matrix)]
    return float(np.mean(used)) if used else 0.0


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """AP of one class's scores (None when the class has no positive)."""
    import numpy as np

    truth = np.asarray(truth, bool)
    if not truth.any():
        return None
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    ranked, hits = np.asarray(scores)[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(hits) - 1]  # the last row of each distinct score
    tps = np.cumsum(hits)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> tuple[float, list[float | None]]:
    """(mAP over the classes with a positive, AP per class) from (n, C) 0/1 targets and (n, C) scores."""
    import numpy as np

    per = [average_precision(targets[:, c], scores[:, c]) for c in range(targets.shape[1])]
    known = [ap for ap in per if ap is not None]
    return (float(np.mean(known)) if known else 0.0), per


def targets_array(labels: list, n: int, multi_label: bool) -> np.ndarray:
    """Sample labels as the metrics take them: (k,) class indices, or (k, n) 0/1 rows from tuples of classes."""
    import numpy as np

    if not multi_label:
        return np.asarray(labels, dtype=np.int64)
    out = np.zeros((len(labels), n), dtype=np.float32)
    for i, label in enumerate(labels):
        out[i, list(label)] = 1
    return out


def one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    out = np.zeros((len(labels), n), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1
    return out


def single_label_report(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Every single-label metric of (n,) true classes and (n, C) class probabilities."""
    import numpy as np

    labels = np.asarray(labels, dtype=np.int64)
    preds = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    matrix = confusion(labels.tolist(), preds.tolist(), len(classes))
    m, ap = mean_average_precision(one_hot(labels, len(classes)), probs)
    rows = per_class(matrix, classes)
    for row, value in zip(rows, ap, strict=True):
        row["ap"] = value
    return {
        "acc": accuracy(matrix),
        "balanced_acc": balanced_accuracy(matrix),
        "macro_f1": macro_f1(matrix),
        "map": m,
        "per_class": rows,
        "confusion_matrix": matrix,
        "preds": preds.tolist(),
    }


def tune_thresholds(targets: np.ndarray, scores: np.ndarray) -> list[float]:
    """Per label, the threshold that maximises its F1 on these scores (ties: nearest 0.5; no positive: 0.5).

    Candidates are 0.5 and the midpoints between consecutive distinct scores, so a label
    is predicted when its score is >= the threshold.
    """
    import numpy as np

    out = []
    for c in range(targets.shape[1]):
        truth = targets[:, c] > 0.5
        if not truth.any():
            out.append(DEFAULT_THRESHOLD)
            continue
        x = scores[:, c].astype(np.float64)
        order = np.argsort(-x, kind="mergesort")
        ranked, hits = x[order], truth[order]
        last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # each distinct score's last row
        # a threshold just below each distinct score predicts every row down to it; above the top, none
        candidates = np.r_[(ranked[last[:-1]] + ranked[last[:-1] + 1]) / 2, ranked[-1] / 2, (ranked[0] + 1) / 2]
        tp = np.r_[np.cumsum(hits)[last], 0]
        predicted = np.r_[last + 1, 0]
        at_half = x >= DEFAULT_THRESHOLD
        candidates = np.r_[DEFAULT_THRESHOLD, candidates]
        tp = np.r_[(at_half & truth).sum(), tp]
        predicted = np.r_[at_half.sum(), predicted]
        f1 = 2 * tp / (predicted + truth.sum())
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        out.append(float(candidates[best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]]))
    return out


def multi_label_report(
    targets: np.ndarray, probs: np.ndarray, thresholds: list[float], classes: list[str]
) -> dict[str, Any]:
    """Every multi-label metric of (n, C) 0/1 targets and (n, C) sigmoid probabilities, at `thresholds`."""
    import numpy as np

    truth = np.asarray(targets) > 0.5
    predicted = probs >= np.asarray(thresholds, dtype=np.float64)[None, :]
    tp, pp, ap_ = (predicted & truth).sum(0), predicted.sum(0), truth.sum(0)
    m, ap = mean_average_precision(truth, probs)
    rows = []
    for c, name in enumerate(classes):
        rows.append(
            {"class": name, **_prf(tp[c], pp[c], ap_[c]), "support": int(ap_[c]), "ap": ap[c],
             "threshold": float(thresholds[c])}
        )  # fmt: skip
    used = [r["f1"] for c, r in enumerate(rows) if ap_[c] or pp[c]]
    n = len(truth)
    balanced = [
        (tp[c] / ap_[c] + ((~predicted[:, c]) & (~truth[:, c])).sum() / (n - ap_[c])) / 2
        for c in range(len(classes))
        if 0 < ap_[c] < n
    ]
    return {
        "acc": float((predicted == truth).all(1).mean()) if n else 0.0,
        "balanced_acc": float(np.mean(balanced)) if balanced else 0.0,
        "macro_f1": float(np.mean(used)) if used else 0.0,
        "micro_f1": _prf(tp.sum(), pp.sum(), ap_.sum())["f1"],
        "map": m,
        "per_class": rows,
        "thresholds": [float(t) for t in thresholds],
        "preds": [np.flatnonzero(row).tolist() for row in predicted],
    }
