"""Transferability estimates: how well pretrained features (or a pretrained classifier) fit a labelled target set.

Each estimate scores one candidate from a single forward pass, without fine-tuning; higher is better for all of
them. Plain numpy, float64 inside; float32 input is fine. An input an estimate cannot score raises `UsageError`.

| name | input | paper |
|---|---|---|
| logme | features (n, d) | You et al., "LogME: Practical Assessment of Pre-trained Models ...", ICML 2021 |
| leep | source softmax (n, Z) | Nguyen et al., "LEEP: A New Measure to Evaluate Transferability ...", ICML 2020 |
| nce | source argmax (n,) or softmax | Tran et al., "Transferability and Hardness of Supervised ...", ICCV 2019 |
| hscore | features (n, d) | Ibrahim et al., "Newer is not always better: rethinking transferability ...", ICLR 2022 |
| gbc | features (n, d) | Pándy et al., "Transferability Estimation using Bhattacharyya Class Separability", CVPR 2022 |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np

from zoo.core.errors import UsageError

__all__ = ["ESTIMATES", "EstimateSpec", "gbc", "hscore", "ledoit_wolf", "leep", "logme", "nce"]


# --- inputs ------------------------------------------------------------------------------------------------------
def _matrix(x, what: str) -> np.ndarray:
    """`x` as a finite float64 (n, k) matrix with n >= 2."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1:
        raise UsageError(f"{what} must be a 2-D array (samples, values) with at least 2 samples; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise UsageError(f"{what} contain NaN or infinite values")
    return a


def _class_codes(labels, n: int, estimate: str, what: str = "labels") -> tuple[np.ndarray, int]:
    """Single-label class indices (n,) as codes 0..C-1 of the classes present, and C (at least 2)."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] > 1:
        raise UsageError(f"{estimate} scores single-label data only; got {what} of shape {y.shape} (multi-label)")
    y = y.reshape(-1) if y.ndim == 2 else y
    if y.ndim != 1 or len(y) != n:
        raise UsageError(f"{what} must have shape ({n},) to match the other input; got {np.shape(labels)}")
    if y.dtype.kind not in "biu":
        if y.dtype.kind != "f" or not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise UsageError(f"{what} must be integer class indices; got dtype {y.dtype}")
    classes, codes = np.unique(y, return_inverse=True)
    if what == "labels" and len(classes) < 2:
        raise UsageError(f"{estimate} needs at least 2 classes; the labels hold {len(classes)}")
    return codes.reshape(-1), len(classes)


def _class_sums(codes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(C, k): the sum of the rows of `x` (n, k) per class code, every code 0..C-1 present."""
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    return np.add.reduceat(x[order], starts, axis=0)


def _finite(value: float, estimate: str) -> float:
    if not np.isfinite(value):
        raise UsageError(f"{estimate} is not finite for this input (degenerate features or labels)")
    return float(value)


# --- LogME -------------------------------------------------------------------------------------------------------
def _logme_targets(labels, n: int) -> np.ndarray:
    """(n, C) float64 targets: one-hot of the classes present, or the columns of the multi-hot 0/1 matrix
    that are not the same for every sample."""
    y = np.asarray(labels)
    if y.ndim == 1:
        codes, c = _class_codes(y, n, "LogME")
        return np.eye(c)[codes]
    if y.ndim != 2 or y.shape[0] != n or y.shape[1] < 1:
        raise UsageError(f"labels must be ({n},) class indices or a ({n}, C) multi-hot matrix; got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise UsageError("multi-hot labels must hold only 0 and 1")
    # a label column that is the same for every sample says nothing of the features (and all-zero targets are
    # fitted exactly, an evidence only the reference's 1e-5 guards keep finite): scored without it
    varies = y.min(0) != y.max(0)
    if not varies.any():
        raise UsageError("every label column is the same for every sample: LogME cannot score them")
    return y[:, varies].astype(np.float64)


def _logme_columns(features, targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """alpha, beta and the evidence log p(y|F, alpha, beta) / n per target column of `targets` (n, C).

    Follows LogME._fit_fixed_point of thuml/LogME (LogME.py, https://github.com/thuml/LogME; fixed-point
    iteration of You et al., "Ranking and Tuning Pre-trained Models", arXiv:2110.10545), with its updates,
    its 1e-5 guards, 11 iterations at most and the 1e-3 relative tolerance on lambda = alpha / beta.
    """
    f = _matrix(features, "features")
    y = np.asarray(targets, dtype=np.float64).reshape(f.shape[0], -1)
    n, d = f.shape
    if not f.any():
        raise UsageError("features are all zero: LogME cannot score them")
    # The spectrum of F from the smaller Gram matrix: the reference's truncated_svd for n > d (eigenvectors of
    # F^T F, u = F v / s); for n <= d the left singular vectors directly (eigenvectors of F F^T). eigh, not svd,
    # of the Gram matrix (the same, faster); its rank is numpy's matrix_rank tolerance, not an absolute 1e-10.
    if n > d:
        sigma, v = np.linalg.eigh(f.T @ f)
        keep = sigma > sigma[-1] * max(n, d) * np.finfo(np.float64).eps  # the rank of F
        sigma, v = sigma[keep], v[:, keep]
        x = (v.T @ (f.T @ y)) / np.sqrt(sigma)[:, None]  # u^T y without forming u
    else:
        sigma, u = np.linalg.eigh(f @ f.T)
        sigma = np.where(sigma > sigma[-1] * max(n, d) * np.finfo(np.float64).eps, sigma, 0.0)
        x = u.T @ y
    k = len(sigma)
    s2 = sigma[:, None]  # (k, 1): squared singular values, against x2 (k, C)
    x2 = x**2
    res_x2 = np.maximum((y**2).sum(0) - x2.sum(0), 0.0)  # the part of y outside the column space of F

    def m2_res2(t):  # |m|^2 and |y - F m|^2 for the posterior mean m at lambda = t
        return (s2 * x2 / (t + s2) ** 2).sum(0), (x2 / (1 + s2 / t) ** 2).sum(0) + res_x2

    columns = y.shape[1]
    alpha, beta, todo = np.ones(columns), np.ones(columns), np.ones(columns, dtype=bool)
    for _ in range(11):  # each column stops at its own convergence, as the reference's per-column loop
        t = alpha / beta
        gamma = (s2 / (s2 + t)).sum(0)
        m2, res2 = m2_res2(t)
        new_alpha, new_beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
        alpha, beta = np.where(todo, new_alpha, alpha), np.where(todo, new_beta, beta)
        todo &= ~(np.abs(new_alpha / new_beta - t) / t <= 1e-3)
        if not todo.any():
            break
    # Deviations from the reference, both in its evidence formula: (1) m is recomputed at the final alpha / beta
    # (the reference keeps the m of the previous lambda), so this is exactly log p(y | F, alpha, beta); (2) log|A|
    # counts all d eigenvalues of A = alpha I + beta F^T F, d - k of them alpha (thuml/LogME issue #23, PR #24:
    # the reference drops them when n < d or F is rank-deficient; its _fit_icml counts them).
    m2, res2 = m2_res2(alpha / beta)
    log_det_a = np.log(alpha + beta * s2).sum(0) + (d - k) * np.log(alpha)
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * log_det_a
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * np.log(2 * np.pi)
    )
    return alpha, beta, evidence / n


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., ICML 2021): the Bayesian linear-regression evidence of the targets given the
    features, per sample, averaged over target columns (one-hot classes, or multi-hot label columns; a label
    column the same for every sample is left out)."""
    f = _matrix(features, "features")
    _, _, evidence = _logme_columns(f, _logme_targets(labels, f.shape[0]))
    return _finite(evidence.mean(), "LogME")


# --- LEEP and NCE: from the source classifier's predictions ----------------------------------------------------
def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP (Nguyen et al., ICML 2020): the mean log-likelihood of the labels under the empirical
    predictor P(y|x) = sum_z P(y|z) theta_z(x), theta the source classifier's softmax (n, Z)."""
    theta = _matrix(source_probs, "source_probs")
    n = theta.shape[0]
    codes, _ = _class_codes(labels, n, "LEEP")
    if theta.min() < 0 or not np.allclose(theta.sum(1), 1.0, rtol=0, atol=1e-3):
        raise UsageError("source_probs must be softmax probabilities (each row non-negative and summing to 1)")
    joint = _class_sums(codes, theta) / n  # joint[y, z] = sum_i theta_z(x_i) [y_i = y] / n: the empirical P(y, z)
    p_z = joint.sum(0)
    conditional = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)  # P(y | z)
    predicted = (theta * conditional[codes]).sum(1)  # sum_z P(y_i | z) theta_z(x_i) > 0 for every i
    return _finite(np.log(predicted).mean(), "LEEP")


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE (Tran et al., ICCV 2019): the negative conditional entropy -H(Y|Z) of the target labels given
    the source classifier's predicted classes Z (n,), from their empirical joint distribution.

    `source_labels` may also be the source probabilities (n, Z): their argmax is taken."""
    z = np.asarray(source_labels)
    if z.ndim == 2 and z.shape[1] > 1:
        z = _matrix(z, "source_labels").argmax(1)
    n = len(z) if z.ndim >= 1 else 0
    z_codes, zc = _class_codes(z, n, "NCE", what="source_labels")
    codes, c = _class_codes(labels, n, "NCE")
    joint = np.bincount(z_codes * c + codes, minlength=zc * c).reshape(zc, c) / n  # P(z, y)
    p_z = joint.sum(1, keepdims=True)
    nonzero = joint > 0
    return _finite((joint[nonzero] * np.log((joint / p_z)[nonzero])).sum(), "NCE")  # sum P(z,y) log P(y|z)


# --- H-score --------------------------------------------------------------------------------------------------
def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit–Wolf shrunk covariance of the rows of `x` (centred here) and its shrinkage: the same as
    sklearn.covariance.ledoit_wolf(x) (Ledoit & Wolf, "A well-conditioned estimator for large-dimensional
    covariance matrices", 2004): (1 - s) * emp_cov + s * trace(emp_cov) / d * I."""
    x = _matrix(x, "features")
    x = x - x.mean(0)
    n, d = x.shape
    emp_cov = x.T @ x / n
    if d == 1:  # one feature: nothing to shrink
        return emp_cov, 0.0
    mu = np.trace(emp_cov) / d
    delta_ = (emp_cov**2).sum()  # sum of the squared coefficients of X^T X, / n^2
    beta_ = ((x**2).sum(1) ** 2).sum()  # sum of the coefficients of X2^T X2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * np.trace(emp_cov) + d * mu**2) / d
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else float(beta / delta)
    shrunk = (1.0 - shrinkage) * emp_cov
    shrunk.flat[:: d + 1] += shrinkage * mu
    return shrunk, shrinkage


def hscore(features: np.ndarray, labels: np.ndarray) -> float:
    """The shrinkage-regularised H-score (Ibrahim, Ponomareva & Mazumder, ICLR 2022):
    tr(cov_a(f)^-1 (1 - a) cov(E[f|y])), cov_a the Ledoit–Wolf covariance of the centred features and a its
    shrinkage. The original H-score (Bao et al., ICIP 2019) inverts the plain covariance with a
    pseudo-inverse, which is unstable when d is near or above n; this one is not."""
    f = _matrix(features, "features")
    n = f.shape[0]
    codes, c = _class_codes(labels, n, "H-score")
    f = f - f.mean(0)
    if not f.any():
        raise UsageError("features are the same for every sample: H-score cannot score them")
    cov, shrinkage = ledoit_wolf(f)
    counts = np.bincount(codes, minlength=c).astype(np.float64)
    means = _class_sums(codes, f) / counts[:, None]  # E[f | y]; their weighted mean is 0, f being centred
    # cov(E[f|y]) = sum_y n_y m_y m_y^T / (n - 1) (np.cov of the per-sample class means, as the authors' code),
    # so tr(cov_a^-1 cov(E[f|y])) = sum_y n_y m_y^T cov_a^-1 m_y / (n - 1)
    try:
        solved = np.linalg.solve(cov, means.T)
    except np.linalg.LinAlgError as e:
        raise UsageError("the features' covariance is singular: H-score cannot score them") from e
    score = (1.0 - shrinkage) * (counts * (means.T * solved).sum(0)).sum() / (n - 1)
    return _finite(score, "H-score")


# --- GBC ---------------------------------------------------------------------------------------------------------
def _pca(x: np.ndarray, k: int) -> np.ndarray:
    """The centred rows of `x` projected on their first k principal components (eigenvectors of the smaller
    Gram matrix: the SVD of the centred data without its cost)."""
    x = x - x.mean(0)
    n, d = x.shape
    if n > d:
        _, v = np.linalg.eigh(x.T @ x)
        return x @ v[:, ::-1][:, :k]
    sigma, u = np.linalg.eigh(x @ x.T)
    return u[:, ::-1][:, :k] * np.sqrt(np.maximum(sigma[::-1][:k], 0.0))


def gbc(features: np.ndarray, labels: np.ndarray) -> float:
    """GBC (Pándy et al., CVPR 2022), the diagonal variant: -sum over class pairs i != j of the Bhattacharyya
    coefficient exp(-D_B) between per-class diagonal Gaussians, on the features reduced by PCA to
    min(64, d, n - 1) dimensions (as the paper). 0 is perfect separation; more negative is more overlap."""
    f = _matrix(features, "features")
    n, d = f.shape
    codes, c = _class_codes(labels, n, "GBC")
    z = _pca(f, min(64, d, n - 1))
    counts = np.bincount(codes, minlength=c).astype(np.float64)[:, None]
    means = _class_sums(codes, z) / counts
    squares = _class_sums(codes, (z - means[codes]) ** 2)
    # per-class (biased) variances, floored at 1e-4 for constant features, as the authors' code
    # (google-research/stable_transfer/transferability/gbc.py)
    var = np.maximum(squares / counts, 1e-4)
    log_var = np.log(var)
    total = 0.0
    for i in range(c):  # D_B of N(mu_i, S_i), N(mu_j, S_j) for diagonal S; S = (S_i + S_j) / 2
        avg = (var[i] + var) / 2
        distance = ((means[i] - means) ** 2 / avg).sum(1) / 8 + 0.5 * (
            np.log(avg).sum(1) - 0.5 * log_var[i].sum() - 0.5 * log_var.sum(1)
        )
        bc = np.exp(-distance)
        total += bc.sum() - bc[i]  # pairs i != j
    return _finite(-total, "GBC")


# --- the registry ----------------------------------------------------------------------------------------------
class EstimateSpec(NamedTuple):
    """One estimate: its function (input, labels) -> float, higher is better."""

    fn: Callable[[np.ndarray, np.ndarray], float]
    needs: Literal["features", "source"]  # penultimate features (n, d), or the source classifier's softmax (n, Z)
    multi_label_ok: bool  # whether (n, C) multi-hot labels can be scored
    description: str

    @property
    def multi_label(self) -> bool:
        """The same as `multi_label_ok` (the name zoo.select.rank reads)."""
        return self.multi_label_ok


ESTIMATES: dict[str, EstimateSpec] = {
    "logme": EstimateSpec(logme, "features", True, "LogME: Bayesian linear model evidence (You et al., ICML 2021)"),
    "leep": EstimateSpec(leep, "source", False, "LEEP: log expected empirical prediction (Nguyen et al., ICML 2020)"),
    "nce": EstimateSpec(nce, "source", False, "NCE: -H(target | source argmax class) (Tran et al., ICCV 2019)"),
    "hscore": EstimateSpec(hscore, "features", False, "H-score, Ledoit–Wolf shrinkage (Ibrahim et al., ICLR 2022)"),
    "gbc": EstimateSpec(gbc, "features", False, "GBC: Bhattacharyya class overlap (Pándy et al., CVPR 2022)"),
}
