"""Exact and near-duplicate images, grouped, without comparing every pair of images.

- Exact: the same decoded pixels. The scan already hashes every decoded image (`DataSplit.digests`); equal
  hashes are one group, found with a dictionary.
- Near, by pixels: a 64-bit perceptual hash (pHash: the 8x8 lowest frequencies of the DCT of a 32x32 grey
  image, each bit whether its coefficient is above their median) within `PHASH_RADIUS` bits. Resizing,
  re-encoding and small colour changes move it by a few bits; two different photos differ in about half of them.
  The search is multi-index hashing: the 64 bits are cut into `PHASH_RADIUS + 1` chunks, and two hashes within
  the radius agree on at least one whole chunk (pigeonhole), so only hashes that share a chunk are compared.
- Near, by features (when a model gives them): crops move every pixel, so pHash misses them, but the backbone's
  pooled features barely change. Pairs whose centred features have cosine similarity >= `FEATURE_COSINE` (and a
  pHash still within `FEATURE_PHASH_GUARD` bits: the same layout) are near-duplicates. Candidates come from
  random-hyperplane LSH (SimHash): `TABLES` tables of `BITS` sign bits each; only images in one bucket of one
  table are compared, in a PCA projection of the features.

The candidates are verified and grouped by `zoo.select.copies`.

The cost is linear in the images plus the pairs that share a bucket.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

HASH_SIDE = 32  # pHash: the grey image is HASH_SIDE x HASH_SIDE before the DCT
PHASH_RADIUS = 6  # bits: measured on ants/bees photos, resized/re-encoded copies <= 6, different photos >= 12
FEATURE_COSINE = 0.85  # centred features: 5%-cropped copies >= 0.84, different photos <= 0.75 (docs/audit.md)
FEATURE_PHASH_GUARD = 16  # bits: 95% of 5%-crops are within it, 99.9% of pairs of different photos are not
TABLES, BITS = 32, 12  # SimHash: a pair at cosine 0.85 shares a bucket in some table with probability 0.96
PCA_DIMS = 128  # features are compared in this many principal components
BLOCK = 1024  # rows of a large bucket compared at once (memory: BLOCK x bucket size)
SMALL = 32  # buckets up to this size are paired all at once
MAX_BUCKET, MAX_REFINE = 1024, 3  # a feature bucket over MAX_BUCKET gets BITS more bits, up to MAX_REFINE times
PCA_SAMPLE = 4096  # images the principal components are computed from

_k = np.arange(HASH_SIDE)
_DCT = np.sqrt(2 / HASH_SIDE) * np.cos(np.pi * (2 * _k[None, :] + 1) * _k[:, None] / (2 * HASH_SIDE))
_DCT[0] /= np.sqrt(2)  # orthonormal DCT-II


def phashes(grey: np.ndarray) -> np.ndarray:
    """(n, 32, 32) grey images -> (n,) uint64 perceptual hashes."""
    coeffs = (_DCT @ grey.astype(np.float64) @ _DCT.T)[:, :8, :8].reshape(len(grey), 64)
    bits = coeffs > np.median(coeffs, axis=1, keepdims=True)
    return pack_bits(bits)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(n, 64) booleans -> (n,) uint64, the first column the most significant bit."""
    return np.packbits(bits, axis=1).view(">u8").reshape(-1).astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b))


def _candidates(
    keys: np.ndarray,
    close: Callable[[np.ndarray, np.ndarray], np.ndarray],
    refine: Callable[[np.ndarray, int], np.ndarray] | None = None,
    level: int = 0,
    max_bucket: int = MAX_BUCKET,
) -> np.ndarray:
    """(k, 2) pairs i < j with equal keys for which close(i_indices, j_indices) holds (element-wise, or broadcast
    over a block). Buckets of up to SMALL images are paired all at once (offset by offset in the sorted keys); a
    bucket over `max_bucket` is split by `refine(members, level)` (more hash bits) while it can be, so that
    near-identical data does not make the search quadratic; other buckets are compared block by block."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    big = sizes > SMALL
    found = []
    in_small = np.repeat(~big, sizes)  # per sorted position: its bucket is small
    for offset in range(1, min(SMALL, len(keys))):
        same = (sorted_keys[offset:] == sorted_keys[:-offset]) & in_small[offset:]
        if not same.any():
            break
        a, b = order[:-offset][same], order[offset:][same]
        found.append(np.stack([a, b], axis=1)[close(a, b)])
    for start, size in zip(starts[big], sizes[big], strict=True):
        members = order[start : start + size]
        if refine is not None and size > max_bucket and level < MAX_REFINE:
            local = _candidates(refine(members, level), lambda a, b, m=members: close(m[a], m[b]), refine_of(
                refine, members), level + 1, max_bucket)  # fmt: skip
            found.append(members[local])
            continue
        for first in range(0, size, BLOCK):
            rows = members[first : first + BLOCK]
            r, c = np.nonzero(close(rows[:, None], members[None, :]))
            keep = first + r < c  # each unordered pair once, no self-pairs
            found.append(np.stack([rows[r[keep]], members[c[keep]]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def refine_of(refine, members: np.ndarray):
    """`refine` for a sub-problem whose indices are positions in `members`."""
    return lambda local, level: refine(members[local], level)


def unique_pairs(pairs: list[np.ndarray]) -> np.ndarray:
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    both = np.sort(np.concatenate(pairs), axis=1).astype(np.int64)
    if not len(both):
        return both.reshape(0, 2)
    width = int(both.max()) + 1
    codes = np.unique(both[:, 0] * width + both[:, 1])  # one integer a pair: a 1-D sort, not a row sort
    return np.stack([codes // width, codes % width], axis=1)


def phash_pairs(hashes: np.ndarray, radius: int = PHASH_RADIUS) -> np.ndarray:
    """(k, 2) pairs of distinct hash values' indices within `radius` bits, by multi-index hashing: only hashes
    that agree on one of `radius + 1` chunks are compared. Pass unique hashes (`np.unique`)."""
    chunks = radius + 1
    edges = np.linspace(0, 64, chunks + 1).astype(int)
    pairs = []
    for lo, hi in itertools.pairwise(edges):
        keys = (hashes >> np.uint64(64 - hi)) & np.uint64((1 << (hi - lo)) - 1)
        pairs.append(_candidates(keys, lambda a, b: hamming(hashes[a], hashes[b]) <= radius))
    return unique_pairs(pairs)


def leading_directions(x: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    """(d, dims): the leading right singular vectors of a sample of PCA_SAMPLE rows of x, by a randomized range
    finder with two power iterations (Halko, Martinsson and Tropp 2011): a few small products instead of the
    eigendecomposition of a d x d matrix."""
    rng = np.random.default_rng(seed)
    sample = x[rng.permutation(len(x))[:PCA_SAMPLE]]
    basis = sample @ rng.standard_normal((x.shape[1], dims + 10)).astype(x.dtype)
    for _ in range(2):
        basis, _ = np.linalg.qr(basis)
        basis = sample @ (sample.T @ basis)
    basis, _ = np.linalg.qr(basis)
    _, _, vt = np.linalg.svd(basis.T @ sample, full_matrices=False)
    return vt[:dims].T


def project(features: np.ndarray, dims: int = PCA_DIMS, centre: bool = True) -> np.ndarray:
    """L2-normalised (and `centre`d) features in their first `dims` principal components, normalised again: their
    cosine similarities are those of the features, up to the variance left out."""
    x = features.astype(np.float32)
    if centre:
        x = x - features.mean(0, dtype=np.float64).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    if x.shape[1] > dims and len(x) > dims:
        x = x @ leading_directions(x, dims)
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    return x


def feature_pairs(
    z: np.ndarray,
    threshold: float = FEATURE_COSINE,
    guard: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(k, 2) pairs with cosine similarity >= threshold among the rows of `z` (unit vectors), and `guard(a, b)`
    when given, by SimHash LSH: TABLES tables of BITS sign bits; a crowded bucket gets BITS more bits, up to
    MAX_REFINE times."""
    return lsh_pairs(z, threshold, guard, TABLES, BITS, seed, MAX_BUCKET)


def lsh_pairs(z, threshold, guard, tables: int, bits: int, seed: int, max_bucket: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = (1 << np.arange(bits, dtype=np.int64))[::-1]
    extra = [rng.standard_normal((z.shape[1], bits)).astype(np.float32) for _ in range(MAX_REFINE)]

    def keys_of(rows: np.ndarray, planes: np.ndarray) -> np.ndarray:
        return (z[rows] @ planes > 0).astype(np.int64) @ weights

    def close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ok = cosine(z, a, b) >= threshold
        return ok & guard(a, b) if guard is not None else ok

    pairs = []
    for _ in range(tables):
        planes = rng.standard_normal((z.shape[1], bits)).astype(np.float32)
        keys = keys_of(np.arange(len(z)), planes)
        pairs.append(_candidates(keys, close, lambda m, lv: keys_of(m, extra[lv]), max_bucket=max_bucket))
    return unique_pairs(pairs)


def cosine(z: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities of rows a and b of `z` (unit rows), broadcast: pairs (1-D) or a block (column x row)."""
    if a.ndim == 2:
        return z[a[:, 0]] @ z[b[0]].T
    out = np.empty(len(a), dtype=np.float32)
    for s in range(0, len(a), 65536):
        out[s : s + 65536] = np.einsum("ij,ij->i", z[a[s : s + 65536]], z[b[s : s + 65536]])
    return out


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        """Every set of two or more, its members in index order, the sets by their first member."""
        found: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            found.setdefault(self.find(i), []).append(i)
        return [m for _, m in sorted(found.items()) if len(m) > 1]
