"""Outliers: images far from every class in feature space, that is, far from every other image.

An image's distance to the data is 1 - the mean cosine similarity of its pooled features to its K nearest images
(the features L2-normalised, not centred: centring made the pretrained features of noise, text and drawings look
ordinary in our measurements). The neighbours are searched among a fixed random sample of at most REFERENCE images,
so the cost grows linearly with the data. How far is far is the data's own spread: each distance becomes a robust
z-score (0.6745 (d - median) / MAD, Iglewicz and Hoaglin's modified z-score) and an image is an outlier above
MODIFIED_Z. The distances are skewed to the right, so the cut is higher than their 3.5: at 5, measured on ants/bees
photos and on digits, about 1 image in 1,000 of the data itself is above it (docs/audit.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zoo.select.duplicates import project

MODIFIED_Z = 5.0
K = 5  # neighbours
REFERENCE = 4096  # images the neighbours are searched among
DIMS = 128  # principal components the similarities are computed in
BLOCK = 4096  # rows compared at once


@dataclass(frozen=True)
class Outlier:
    index: int
    score: float  # the modified z-score of its distance to its nearest images
    distance: float  # 1 - mean cosine similarity to its K nearest images


def knn_distances(features: np.ndarray, k: int = K, seed: int = 0, exclude: np.ndarray | None = None,
                  groups: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """1 - the mean cosine similarity of each image to its k nearest images of the reference sample: not itself,
    not an `exclude`d image (blank ones: a dozen near-blank images would be each other's close neighbours, and so
    would noise images among them), and not a copy of itself (`groups`: the duplicate group of each image, -1 for
    none; an outlier copied twice would otherwise look ordinary)."""
    x = project(features, DIMS, centre=False)
    usable = np.ones(len(x), dtype=bool) if exclude is None else ~exclude
    pool = np.flatnonzero(usable)
    ref = np.sort(np.random.default_rng(seed + 1).permutation(pool)[:REFERENCE])
    k = min(k, len(ref) - 1)
    group_of = np.full(len(x), -1) if groups is None else groups
    out = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), BLOCK):
        sims = x[start : start + BLOCK] @ x[ref].T
        rows = np.arange(start, min(start + BLOCK, len(x)))
        mine = group_of[rows][:, None]
        sims[(rows[:, None] == ref[None, :]) | ((mine >= 0) & (mine == group_of[ref][None, :]))] = -np.inf
        out[rows] = 1 - np.partition(sims, -k, axis=1)[:, -k:].mean(1)
    return out


def modified_z(values: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
    """Modified z-scores of `values` against the median and MAD of `values[among]` (all of them by default)."""
    basis = values if among is None else values[among]
    median = np.median(basis)
    mad = max(float(np.median(np.abs(basis - median))), 1e-9)
    return 0.6745 * (values - median) / mad


def find_outliers(features: np.ndarray, limit: float = MODIFIED_Z, seed: int = 0, exclude: np.ndarray | None = None,
                  groups: np.ndarray | None = None) -> list[Outlier]:  # fmt: skip
    """Images (not `exclude`d) whose distance to their nearest images is a modified z-score above `limit`, the
    farthest first; the z-scores are relative to the distances of the images that are not excluded."""
    usable = np.ones(len(features), dtype=bool) if exclude is None else ~exclude
    if usable.sum() <= K + 1:
        return []
    distance = knn_distances(features, seed=seed, exclude=exclude, groups=groups)
    score = modified_z(distance, usable)
    flagged = np.flatnonzero((score > limit) & usable)
    return [Outlier(int(i), float(score[i]), float(distance[i])) for i in flagged[np.argsort(-score[flagged])]]
