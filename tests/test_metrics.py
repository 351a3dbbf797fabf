"""zoo.core.metrics against scikit-learn's definitions, and the label-threshold rule."""

from __future__ import annotations

import numpy as np
import pytest

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from zoo.core import metrics  # noqa: E402
from zoo.data.balance import choose, select_metric  # noqa: E402


@pytest.mark.parametrize("seed", range(5))
def test_single_label_metrics_are_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    n, c = 60, 4
    labels = rng.choice(c, n, p=[0.6, 0.25, 0.1, 0.05])
    logits = rng.normal(0, 1, (n, c)) + 1.5 * np.eye(c)[labels] * rng.random((n, 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = metrics.single_label_report(labels, probs, ["a", "b", "c", "d"])
    preds = probs.argmax(1)
    assert report["acc"] == pytest.approx(sklearn_metrics.accuracy_score(labels, preds))
    assert report["balanced_acc"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(labels, preds))
    assert report["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(labels, preds, average="macro"))
    present = [k for k in range(c) if (labels == k).any()]
    ap = [sklearn_metrics.average_precision_score(labels == k, probs[:, k]) for k in present]
    assert report["map"] == pytest.approx(np.mean(ap))
    assert report["confusion_matrix"] == sklearn_metrics.confusion_matrix(labels, preds, labels=range(c)).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_multi_label_metrics_are_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    n, c = 50, 5
    targets = (rng.random((n, c)) < [0.5, 0.3, 0.2, 0.1, 0.05]).astype(np.float32)
    targets[:, 4] = 0 if seed == 0 else targets[:, 4]  # a label without a positive
    probs = np.clip(0.35 * targets + rng.random((n, c)) * 0.7, 0, 1).round(2)  # ties included
    thresholds = metrics.tune_thresholds(targets, probs)
    report = metrics.multi_label_report(targets, probs, thresholds, list("abcde"))
    predicted = (probs >= np.asarray(thresholds)).astype(int)
    truth = targets.astype(int)
    assert report["acc"] == pytest.approx(sklearn_metrics.accuracy_score(truth, predicted))
    assert report["micro_f1"] == pytest.approx(sklearn_metrics.f1_score(truth, predicted, average="micro"))
    used = [k for k in range(c) if truth[:, k].any() or predicted[:, k].any()]
    assert report["macro_f1"] == pytest.approx(
        sklearn_metrics.f1_score(truth, predicted, average="macro", labels=used, zero_division=0)
    )
    present = [k for k in range(c) if truth[:, k].any()]
    assert report["map"] == pytest.approx(
        np.mean([sklearn_metrics.average_precision_score(truth[:, k], probs[:, k]) for k in present])
    )
    for k, row in enumerate(report["per_class"]):
        assert row["precision"] == pytest.approx(sklearn_metrics.precision_score(truth[:, k], predicted[:, k],
                                                                                zero_division=0))  # fmt: skip
        assert row["recall"] == pytest.approx(sklearn_metrics.recall_score(truth[:, k], predicted[:, k],
                                                                          zero_division=0))  # fmt: skip
        assert (row["ap"] is None) == (k not in present)
    both = [k for k in range(c) if 0 < truth[:, k].sum() < n]
    expected = np.mean([sklearn_metrics.balanced_accuracy_score(truth[:, k], predicted[:, k]) for k in both])
    assert report["balanced_acc"] == pytest.approx(expected)
    assert report["preds"][0] == np.flatnonzero(predicted[0]).tolist()


@pytest.mark.parametrize("seed", range(8))
def test_each_threshold_maximises_its_labels_f1(seed):
    rng = np.random.default_rng(seed)
    targets = (rng.random((40, 3)) < 0.3).astype(np.float32)
    probs = np.clip(0.3 * targets + rng.random((40, 3)) * 0.8, 0, 1).round(2)
    thresholds = metrics.tune_thresholds(targets, probs)
    for k, t in enumerate(thresholds):
        truth = targets[:, k].astype(bool)
        if not truth.any():
            assert t == 0.5
            continue

        def f1(at, truth=truth, k=k):
            predicted = probs[:, k] >= at
            return 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())

        best = max(f1(x) for x in np.linspace(0, 1.01, 2021))  # brute force over a fine grid
        assert f1(t) == pytest.approx(best)
        assert f1(t) == pytest.approx(sklearn_metrics.f1_score(truth, probs[:, k] >= t))
        assert 0 <= t <= 1


def test_a_label_without_positives_keeps_half_and_ties_go_nearest_half():
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0]], dtype=np.float32)
    probs = np.array([[0.9, 0.2], [0.8, 0.7], [0.1, 0.3], [0.2, 0.1]])
    low, none = metrics.tune_thresholds(targets, probs)
    assert none == 0.5
    assert 0.2 < low <= 0.8  # every threshold in (0.2, 0.8] gives F1 1; the one chosen is the nearest 0.5
    assert low == 0.5


def test_balance_rules_and_weights():
    flat = choose("auto", [50, 45, 40], 135, False)
    assert flat.mode == "none" and "balanced enough" in flat.reason and flat.class_weights is None
    skewed = choose("auto", [100, 20, 5], 125, False)
    assert skewed.mode == "loss" and skewed.skew == 20.0
    assert skewed.class_weights == pytest.approx([125 / (3 * 100), 125 / (3 * 20), 125 / (3 * 5)])
    sampler = choose("sampler", [100, 20, 5], 125, False)
    assert sampler.sample_weights_per_class == pytest.approx([0.01, 0.05, 0.2]) and sampler.class_weights is None
    multi = choose("loss", [30, 3], 40, True)
    assert multi.class_weights == pytest.approx([10 / 30, 37 / 3])  # (N - p) / p: torch's pos_weight
    assert select_metric("auto", flat) == "acc"
    assert select_metric("auto", skewed) == "balanced_acc"
    assert select_metric("auto", multi) == "map"
    assert select_metric("macro_f1", skewed) == "macro_f1"
