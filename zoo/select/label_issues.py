"""Likely label errors: confident learning (Northcutt, Jiang and Chuang, JAIR 2021) on out-of-fold probabilities.

The probabilities come from `zoo advise`'s linear probe, cross-validated (`training.advise.out_of_fold_logits`):
each image is judged by a probe that never saw it. Then, as cleanlab's `find_label_issues` with its default
`filter_by="prune_by_noise_rate"`:

1. Each class's threshold is its average self-confidence: the mean probability of class k over the images
   labelled k.
2. The confident joint C[i, j] counts the images labelled i whose confident class is j: the one class whose
   probability reaches its threshold, or the most probable class when several do. Each row is calibrated to the
   number of images labelled i, and the whole to the number of images.
3. For every i != j, the C[i, j] images labelled i with the largest margin p_j - p_i are issues (keeping at least
   one image per class), unless the probe's top class is the given label.

Issues are ranked by self-confidence (the probability of the given label), lowest first; an issue's score is
1 - self-confidence and its suggested label the probe's top class. Multi-label data is checked label by label,
each as a two-class problem (absent, present), as cleanlab's multi-label filter does.

Written here rather than imported (cleanlab 2.9.0, well kept): cleanlab needs scikit-learn, scipy and pandas at
run time (about 60 MB of wheels) and 1.9 s to import, for about 80 lines of numpy. bench/audit_validation.py
compares the two on the same probabilities when cleanlab is installed (docs/audit.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelIssue:
    index: int  # into the judged images
    score: float  # 1 - the probability of the given label (of the flagged label, multi-label)
    suggested: tuple[int, ...]  # the probe's class (single-label: one); multi-label: the corrected label set
    given_prob: float
    details: str = ""


def _round_rows(matrix: np.ndarray) -> np.ndarray:
    """Round each row to integers that keep its rounded total: rounded, then the entries rounded the most the
    wrong way moved by one until the total is right (cleanlab's round_preserving_row_totals)."""
    out = np.empty(matrix.shape, dtype=np.int64)
    for r, row in enumerate(matrix):
        ints, total = row.round(), round(float(row.sum()))
        while (diff := round(float(total - ints.sum()))) != 0:
            step = 1 if diff > 0 else -1
            ints[np.argsort(row - ints)[::-step][: min(abs(diff), len(row))]] += step
        out[r] = ints
    return out


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """C[i, j]: images labelled i confidently in class j, calibrated to the label counts (steps 1 and 2)."""
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    thresholds = np.array([probs[labels == c, c].mean() if counts[c] else 1.0 for c in range(k)])
    above = probs >= thresholds - 1e-6
    confident = np.where(above.sum(1) > 1, probs.argmax(1), above.argmax(1))
    has = above.any(1)
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[has], confident[has]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    joint = joint / np.maximum(joint.sum(1, keepdims=True), 1e-9) * counts[:, None]
    joint = joint / max(joint.sum(), 1e-9) * counts.sum()
    return _round_rows(joint)


def _keep_one_per_class(prune: np.ndarray) -> np.ndarray:
    """cleanlab's _keep_at_least_n_per_class(n=1) on the transposed joint (rows: true class, columns: given)."""
    diagonal = prune.diagonal()
    new_diagonal = np.maximum(diagonal, 1)
    per_column = np.maximum(np.count_nonzero(prune, axis=0) - 1.0, 1.0)
    out = prune - (new_diagonal - diagonal) / per_column
    out[out < 0] = 0
    np.fill_diagonal(out, new_diagonal)
    return _round_rows(out)


def issue_mask(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Which images are label issues (step 3): a boolean per image."""
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    prune = _keep_one_per_class(confident_joint(labels, probs).T)  # [true j, given i]
    mask = np.zeros(len(labels), dtype=bool)
    for given in range(k):
        if counts[given] <= 1:
            continue
        mine = labels == given
        for true in range(k):
            n = int(prune[true, given])
            if true == given or n <= 0:
                continue
            margin = probs[mine, true] - probs[mine, given]
            mask[np.flatnonzero(mine)[np.argsort(-margin)[:n]]] = True
    nudged = probs.copy()
    nudged[np.arange(len(labels)), labels] += 1e-6  # a tie with the given label is no issue
    return mask & (nudged.argmax(1) != labels)


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> list[LabelIssue]:
    """Single-label issues, ranked (lowest self-confidence first)."""
    labels = np.asarray(labels, dtype=np.int64)
    flagged = np.flatnonzero(issue_mask(labels, probs))
    given = probs[flagged, labels[flagged]]
    order = flagged[np.argsort(given, kind="stable")]
    return [
        LabelIssue(int(i), float(1 - probs[i, labels[i]]), (int(probs[i].argmax()),), float(probs[i, labels[i]]))
        for i in order
    ]


def find_multilabel_issues(targets: np.ndarray, probs: np.ndarray, names: list[str]) -> list[LabelIssue]:
    """Multi-label issues: per label, confident learning on (absent, present); an image with any flagged label is
    an issue, scored by its most doubtful flagged label, suggested the label set with the flagged ones flipped."""
    n, k = targets.shape
    flipped = np.zeros((n, k), dtype=bool)
    for c in range(k):
        y = targets[:, c].astype(np.int64)
        if y.min() == y.max():  # every image has it, or none: nothing to compare with
            continue
        flipped[:, c] = issue_mask(y, np.stack([1 - probs[:, c], probs[:, c]], axis=1))
    doubt = np.where(targets > 0, 1 - probs, probs)  # the probability that the given state is wrong
    found = []
    for i in np.flatnonzero(flipped.any(1)):
        cols = np.flatnonzero(flipped[i])
        worst = cols[np.argmax(doubt[i, cols])]
        suggested = tuple(int(c) for c in np.flatnonzero((targets[i] > 0) ^ flipped[i]))
        said = [f"{names[c]} {'given, probably absent' if targets[i, c] else 'missing'} (p={probs[i, c]:.2f})"
                for c in cols]  # fmt: skip
        found.append(LabelIssue(int(i), float(doubt[i, worst]), suggested, float(1 - doubt[i, worst]), "; ".join(said)))
    return sorted(found, key=lambda x: -x.score)
