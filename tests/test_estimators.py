"""zoo.select.estimators held to the definitions of LogME, LEEP, NCE, H-score and GBC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zoo.core.errors import UsageError
from zoo.select.estimators import ESTIMATES, _logme_columns, gbc, hscore, ledoit_wolf, leep, logme, nce


def _blobs(rng, n=150, d=16, classes=3, spread=4.0):
    """Class-separable Gaussian blobs (the good features) and labels."""
    labels = np.arange(n) % classes
    centres = rng.normal(size=(classes, d)) * spread
    return centres[labels] + rng.normal(size=(n, d)), labels


def _softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _direct_evidence(f, y, alpha, beta):
    """log N(y; 0, I / beta + F F^T / alpha): the marginal likelihood of y = F w + e, w ~ N(0, I / alpha),
    e ~ N(0, I / beta), from its n x n covariance."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y))


def _reference_logme(f, labels):
    """thuml/LogME's LogME._fit_fixed_point (LogME.py) for classification labels, line for line."""
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    s = s.reshape(-1, 1)
    sigma = s**2
    evidences = []
    for i in range(int(labels.max() + 1)):
        y_ = (labels == i).astype(np.float64).reshape(-1, 1)
        x = u.T @ y_
        x2 = x**2
        res_x2 = (y_**2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        evidence = (
            d / 2.0 * np.log(alpha)
            + n / 2.0 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * sigma))
            - beta / 2.0 * res2
            - alpha / 2.0 * m2
            - n / 2.0 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


# --- LogME ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, d, rank", [(40, 6, 6), (40, 9, 6), (12, 30, 12)])  # n > d, rank-deficient, n < d
def test_logme_is_the_marginal_likelihood_at_its_alpha_beta(n, d, rank):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d))
    labels = np.arange(n) % 3
    targets = np.eye(3)[labels]
    alpha, beta, evidence = _logme_columns(f, targets)
    for j in range(3):
        direct = _direct_evidence(f, targets[:, j], alpha[j], beta[j]) / n
        assert evidence[j] == pytest.approx(direct, rel=1e-6)
    assert logme(f, labels) == pytest.approx(evidence.mean(), rel=1e-12)


def test_logme_alpha_beta_maximise_the_evidence():
    rng = np.random.default_rng(1)
    f, labels = _blobs(rng, n=60, d=8, spread=1.0)
    y = (labels == 0).astype(np.float64)
    (alpha,), (beta,), (evidence,) = _logme_columns(f, y[:, None])
    grid = np.exp(np.linspace(-1.5, 1.5, 31))
    best = max(_direct_evidence(f, y, alpha * a, beta * b) for a in grid for b in grid) / len(y)
    assert evidence >= best - 1e-6 * abs(best)  # the fixed point is the maximum, to its 1e-3 tolerance
    assert evidence == pytest.approx(best, rel=1e-4)


def test_logme_follows_the_reference_code():
    rng = np.random.default_rng(2)
    labels = np.arange(80) % 4
    f = rng.normal(size=(80, 10)) + labels[:, None] * 0.3
    # n > d: the same, but for the reference's last m, one lambda behind its alpha, beta (here < 1e-5)
    assert logme(f, labels) == pytest.approx(_reference_logme(f, labels), rel=1e-5)
    # n < d: the reference drops d - n eigenvalues (alpha) of A from log|A| (thuml/LogME issue #23)
    wide, labels = _blobs(np.random.default_rng(20), n=20, d=50, classes=2, spread=2.0)
    alpha, _, _ = _logme_columns(wide, np.eye(2)[labels])
    dropped = np.mean((50 - 20) / 2.0 * np.log(alpha)) / 20
    assert dropped > 1.0
    assert logme(wide, labels) == pytest.approx(_reference_logme(wide, labels) - dropped, rel=1e-5)


def test_logme_linear_target_beats_random_target():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(100, 5))
    linear = f @ rng.normal(size=5)
    random = rng.normal(size=100) * linear.std()
    _, _, evidence = _logme_columns(f, np.stack([linear, random], 1))
    assert evidence[0] > evidence[1] + 1.0


def test_logme_multi_hot_is_the_mean_of_its_columns():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(50, 7)).astype(np.float32)
    multi = (rng.random((50, 3)) < 0.4).astype(np.int64)
    per_column = [logme(f, multi[:, [j]]) for j in range(3)]
    assert logme(f, multi) == pytest.approx(np.mean(per_column), rel=1e-12)
    labels = np.arange(50) % 3
    assert logme(f, labels) == pytest.approx(logme(f, np.eye(3, dtype=int)[labels]), rel=1e-12)  # one-hot


def test_float32_input_scores_as_its_float64_values():
    rng = np.random.default_rng(5)
    f, labels = _blobs(rng)
    f32 = f.astype(np.float32)
    for name in ("logme", "hscore", "gbc"):
        score = ESTIMATES[name].fn(f32, labels)
        assert type(score) is float and score == pytest.approx(ESTIMATES[name].fn(f32.astype(np.float64), labels))
    probs = _softmax(rng.normal(size=(len(labels), 4))).astype(np.float32)
    assert leep(probs, labels) == pytest.approx(leep(probs.astype(np.float64), labels))


# --- LEEP ---------------------------------------------------------------------------------------------------
def test_leep_by_hand():
    theta = np.array(
        [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1], [0.5, 0, 0.5]], dtype=np.float64
    )  # theta_z(x_i): 6 samples, 3 source classes
    y = np.array([0, 0, 1, 1, 0, 1])
    # 6 P(y=0, z) = [1 + .5, .5, 1] = [1.5, .5, 1];  6 P(y=1, z) = [.5, 1 + .5, .5 + .5] = [.5, 1.5, 1]
    # 6 P(z) = [2, 2, 2], so P(y=0 | z) = [.75, .25, .5] and P(y=1 | z) = [.25, .75, .5]
    # sum_z P(y_i | z) theta_z(x_i) per sample:
    per_sample = [
        0.75,  # x1, y=0: 1 * .75
        0.5 * 0.75 + 0.5 * 0.25,  # x2, y=0
        0.75,  # x3, y=1: 1 * .75
        0.5 * 0.75 + 0.5 * 0.5,  # x4, y=1
        0.5,  # x5, y=0: 1 * .5
        0.5 * 0.25 + 0.5 * 0.5,  # x6, y=1
    ]
    expected = sum(math.log(p) for p in per_sample) / 6
    assert leep(theta, y) == pytest.approx(expected, abs=1e-9)


def test_leep_rejects_logits():
    with pytest.raises(UsageError, match="softmax"):
        leep(np.random.default_rng(0).normal(size=(10, 4)), np.arange(10) % 2)


# --- NCE ----------------------------------------------------------------------------------------------------
def test_nce_by_hand():
    z = np.array([0, 0, 0, 1, 1, 1])
    y = np.array([0, 0, 1, 1, 1, 1])
    # z=0 (P = 1/2): y = 0, 0, 1, so P(y|z) = 2/3, 1/3;  z=1 (P = 1/2): y is always 1, no entropy
    h = 0.5 * -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert nce(z, y) == pytest.approx(-h, abs=1e-12)


def test_nce_extremes():
    y = np.repeat(np.arange(3), 6)
    assert nce((y + 1) % 3 * 10, y) == pytest.approx(0.0, abs=1e-12)  # a relabelling of y predicts it perfectly
    independent = np.tile(np.arange(6), 3)  # every (z, y) pair equally often
    assert nce(independent, y) == pytest.approx(-math.log(3), abs=1e-12)
    probs = np.eye(6)[independent] * 0.9 + 0.1 / 6
    assert nce(probs, y) == nce(independent, y)  # source probabilities: their argmax


# --- H-score ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, d, scale", [(50, 8, True), (10, 25, True), (30, 1, True), (200, 5, False), (2, 4, True)])
def test_ledoit_wolf_matches_sklearn(n, d, scale):  # (200, 5) unscaled: shrinkage clipped to 1; n = 2: 0
    from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

    x = np.random.default_rng(6).normal(size=(n, d)) @ np.diag(np.arange(1, d + 1) if scale else np.ones(d)) + 3.0
    cov, shrinkage = ledoit_wolf(x)
    expected_cov, expected_shrinkage = sklearn_ledoit_wolf(x)
    assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-10, abs=1e-15)
    np.testing.assert_allclose(cov, expected_cov, rtol=1e-10, atol=1e-12)


def test_hscore_matches_the_authors_formula():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(7)
    f, labels = _blobs(rng, n=40, d=30, classes=4, spread=1.0)  # d near n: the plain H-score is unstable here
    centred = f - f.mean(0)
    lw = LedoitWolf().fit(centred)
    g = np.zeros_like(centred)
    for c in range(4):
        g[labels == c] = centred[labels == c].mean(0)
    expected = np.trace(np.linalg.pinv(lw.covariance_, rcond=1e-15) @ ((1 - lw.shrinkage_) * np.cov(g, rowvar=False)))
    assert hscore(f, labels) == pytest.approx(expected, rel=1e-8)


def test_hscore_separable_above_shuffled():
    rng = np.random.default_rng(8)
    f, labels = _blobs(rng)
    assert hscore(f, labels) > hscore(f, rng.permutation(labels)) + 1.0


# --- GBC ------------------------------------------------------------------------------------------------------
def test_gbc_by_hand():
    f = np.array([[0.0], [2.0], [3.0], [7.0]])  # class 0: mean 1, variance 1; class 1: mean 5, variance 4
    y = np.array([0, 0, 1, 1])
    distance = (1 - 5) ** 2 / 2.5 / 8 + 0.5 * math.log(2.5 / math.sqrt(1 * 4))  # average variance 2.5
    assert gbc(f, y) == pytest.approx(-2 * math.exp(-distance), rel=1e-12)  # the pairs (0, 1) and (1, 0)


def _authors_gbc(z, labels):
    """GBC, diagonal, as google-research/stable_transfer/transferability/gbc.py, on given (PCA'd) features."""
    stats = {}
    for c in np.unique(labels):
        part = z[labels == c]
        stats[c] = part.mean(0), np.maximum(part.var(0), 1e-4)
    total = 0.0
    for c1 in stats:
        for c2 in stats:
            if c1 != c2:
                (mu1, s1), (mu2, s2) = stats[c1], stats[c2]
                avg = (s1 + s2) / 2
                second = np.log(avg).sum() - 0.5 * np.log(s1).sum() - 0.5 * np.log(s2).sum()
                total += np.exp(-(((mu1 - mu2) ** 2 / avg).sum() / 8 + 0.5 * second))
    return -total


@pytest.mark.parametrize("n, d", [(100, 80), (30, 100), (50, 10)])  # PCA to 64, to n - 1 and to d dimensions
def test_gbc_matches_the_authors_code_after_pca(n, d):
    rng = np.random.default_rng(14)
    f, labels = _blobs(rng, n=n, d=d, classes=3, spread=0.4)
    centred = f - f.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(64, d, n - 1)
    assert gbc(f, labels) == pytest.approx(_authors_gbc(u[:, :k] * s[:k], labels), rel=1e-8)


def test_gbc_separated_near_zero_overlapping_negative():
    rng = np.random.default_rng(9)
    far, labels = _blobs(rng, spread=20.0)
    near, _ = _blobs(rng, spread=0.2)
    assert -1e-6 < gbc(far, labels) <= 0
    assert gbc(near, labels) < -1.0


# --- every estimate: good features above bad ones -------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ESTIMATES))
def test_good_features_rank_above_noise(name):
    rng = np.random.default_rng(10)
    good, labels = _blobs(rng, n=150, d=16, classes=3)
    bad = rng.normal(size=good.shape) * good.std(0)
    spec = ESTIMATES[name]
    if spec.needs == "source":  # a source classifier whose classes track the target's, and one that does not
        good = _softmax(3.0 * np.eye(5)[labels + 1] + rng.normal(size=(150, 5)))
        bad = _softmax(rng.normal(size=(150, 5)))
    assert spec.fn(good, labels) > spec.fn(bad, labels)


# --- inputs that cannot be scored ------------------------------------------------------------------------------
def _inputs(name, n=20):
    rng = np.random.default_rng(11)
    return _softmax(rng.normal(size=(n, 4))) if ESTIMATES[name].needs == "source" else rng.normal(size=(n, 5))


@pytest.mark.parametrize("name", ["leep", "nce", "hscore", "gbc"])
def test_multi_label_refused(name):
    assert not ESTIMATES[name].multi_label_ok
    multi = np.random.default_rng(12).random((20, 3)) < 0.5
    with pytest.raises(UsageError, match="scores single-label data only"):
        ESTIMATES[name].fn(_inputs(name), multi)


@pytest.mark.parametrize("name", sorted(ESTIMATES))
def test_bad_inputs_refused(name):
    fn, x = ESTIMATES[name].fn, _inputs(name)
    with pytest.raises(UsageError, match="at least 2 classes"):
        fn(x, np.zeros(20, dtype=int))
    with pytest.raises(UsageError, match="shape"):
        fn(x, np.arange(19) % 2)
    x[3, 1] = np.nan
    with pytest.raises(UsageError, match="NaN"):
        fn(x, np.arange(20) % 2)


def test_logme_leaves_out_constant_label_columns():
    f = np.random.default_rng(13).normal(size=(20, 5))
    multi = np.zeros((20, 3), dtype=int)
    multi[::2, 0] = 1
    multi[:, 2] = 1
    assert ESTIMATES["logme"].multi_label_ok and ESTIMATES["logme"].multi_label
    assert logme(f, multi) == logme(f, multi[:, [0]])
    with pytest.raises(UsageError, match="every label column is the same"):
        logme(f, multi[:, 1:])
    with pytest.raises(UsageError, match="only 0 and 1"):
        logme(f, multi * 2)


def test_degenerate_features_refused_or_finite():
    labels = np.arange(20) % 2
    constant = np.ones((20, 4))
    with pytest.raises(UsageError, match="all zero"):
        logme(np.zeros((20, 4)), labels)
    with pytest.raises(UsageError, match="same for every sample"):
        hscore(constant, labels)
    assert ledoit_wolf(constant)[1] == 0.0
    assert gbc(constant, labels) == pytest.approx(-2.0)  # identical classes: BC = 1 for both ordered pairs
