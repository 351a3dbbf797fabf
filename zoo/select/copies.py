"""Near-duplicates verified and grouped: the candidate pairs of `zoo.select.duplicates` (equal or close pHashes,
close features) and thumbnail neighbours, each checked on small grey thumbnails, then joined by union-find.

Candidates by thumbnails: each image's nearest neighbours among 16x16 grey thumbnails (SimHash LSH, `NEIGHBOURS`
kept per image, refined by NN-descent); a neighbour is a candidate when its aligned similarity (below) is already
>= `MIN_SIMILARITY` (this finds crops that move the pHash and the features too far).

Every candidate pair but exact copies is then verified on the thumbnails: its *aligned similarity* (the best
correlation over small crops and shifts of either image, `ZOOMS`) must be >= `MIN_SIMILARITY` and, what makes it
hold on data of any detail, much higher than the similarity of either image to its `DENSITY_RANK`-th nearest
neighbour: 1 - similarity <= `RATIO` x (1 - that neighbour's). Different photos are far apart and pass neither
rule; different images of low-detail data (scanned digits, icons) can share a pHash and correlate at 0.99, but
their neighbourhoods are as close, and a copy stands out from them (measured: docs/audit.md).

Exact copies (equal pixel digests) are grouped first and the rest sees one image per group, so a thousand copies
of one image cost a thousand lookups, not a million.
"""

from __future__ import annotations

import numpy as np

from zoo.select.duplicates import (
    FEATURE_COSINE,
    FEATURE_PHASH_GUARD,
    HASH_SIDE,
    PHASH_RADIUS,
    UnionFind,
    cosine,
    feature_pairs,
    hamming,
    lsh_pairs,
    phash_pairs,
    project,
    unique_pairs,
)

THUMB = 16  # side of the grey thumbnails that verify a pair (from the HASH_SIDE square)
ZOOMS = (0.03, 0.06, 0.09)  # crops tried when aligning two thumbnails: this fraction off each side, shifted by it
MIN_SIMILARITY = 0.95  # aligned correlation of a verified pair: copies >= 0.987 in the validation sets
RATIO = 0.15  # 1 - similarity of a copy over 1 - that of the DENSITY_RANK-th neighbour: copies <= 0.10 measured
DENSITY_RANK = 8  # tolerates up to DENSITY_RANK - 1 near copies of one image
NEIGHBOURS, NEIGHBOUR_TABLES, BUCKET_TARGET = 16, 12, 16  # thumbnail kNN: kept per image, LSH tables, bucket size
DESCENT_ROUNDS = 2  # NN-descent rounds that refine the LSH neighbours
NEIGHBOUR_FLOOR = 0.5  # bucket mates below this cosine are not kept as neighbours


def _tent(lo: float, hi: float, size: int = HASH_SIDE, out: int = THUMB) -> np.ndarray:
    """(out, size) weights resampling [lo, hi) of `size` pixels to `out`: a triangle filter as wide as the scale
    (Pillow's antialiased bilinear), each row summing to 1."""
    scale = (hi - lo) / out
    support = max(scale, 1.0)
    centres = lo + (np.arange(out) + 0.5) * scale - 0.5
    w = np.maximum(0.0, 1 - np.abs(np.arange(size)[None, :] - centres[:, None]) / support)
    return w / w.sum(1, keepdims=True)


def _alignments() -> tuple[np.ndarray, np.ndarray]:
    """Row and column resampling matrices of the crops tried: the whole image, then each zoom in ZOOMS (that
    fraction off every side) with the crop shifted by -zoom, 0 or +zoom along each axis."""
    boxes = [(0.0, 0.0, 0.0)] + [(z, dx, dy) for z in ZOOMS for dx in (-z, 0, z) for dy in (-z, 0, z)]
    rows = [_tent((z + dy) * HASH_SIDE, HASH_SIDE - (z - dy) * HASH_SIDE) for z, _, dy in boxes]
    cols = [_tent((z + dx) * HASH_SIDE, HASH_SIDE - (z - dx) * HASH_SIDE) for z, dx, _ in boxes]
    return np.stack(rows).astype(np.float32), np.stack(cols).astype(np.float32)


_ROWS, _COLS = _alignments()


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.reshape(*x.shape[:-2], -1)
    x = x - x.mean(-1, keepdims=True)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-6)


def thumbnails(squares: np.ndarray) -> np.ndarray:
    """(n, HASH_SIDE, HASH_SIDE) grey squares -> (n, THUMB**2) centred unit thumbnails."""
    return _unit(_ROWS[0] @ squares.astype(np.float32) @ _COLS[0].T)


def _aligned(squares: np.ndarray) -> np.ndarray:
    """(m, HASH_SIDE, HASH_SIDE) -> (m, crops, THUMB**2): the thumbnail of every crop `_alignments` tries."""
    return _unit(_ROWS @ squares.astype(np.float32)[:, None] @ _COLS.transpose(0, 2, 1))


def aligned_similarity(squares: np.ndarray, thumbs: np.ndarray, a: np.ndarray, b: np.ndarray,
                       chunk: int = 2048) -> np.ndarray:  # fmt: skip
    """Per pair (a[i], b[i]): the best correlation of a crop of a's thumbnail with b's whole one (one-sided)."""
    out = np.empty(len(a), dtype=np.float32)
    order = np.argsort(a, kind="stable")
    for s in range(0, len(a), chunk):
        idx = order[s : s + chunk]
        rows, where = np.unique(a[idx], return_inverse=True)
        crops = _aligned(squares[rows])
        out[idx] = np.einsum("pvd,pd->pv", crops[where], thumbs[b[idx]]).max(1)
    return out


def similarity(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Aligned similarity of pairs of images given as grey squares, (m, HASH_SIDE, HASH_SIDE) each: the best
    correlation of either thumbnail, cropped and shifted by up to 9% a side, with the other's whole one (1 for
    copies, about 0.99 or more for resized, re-encoded or lightly cropped ones)."""
    squares = np.concatenate([first, second])
    pairs = np.stack([np.arange(len(first)), len(first) + np.arange(len(second))], axis=1)
    return pair_similarity(squares, thumbnails(squares), pairs)


def nearest_neighbours(thumbs: np.ndarray, k: int = NEIGHBOURS, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest neighbours of each row by cosine (unit rows): every pair sharing a bucket of one of
    NEIGHBOUR_TABLES SimHash tables, whose bits are chosen for about BUCKET_TARGET images a bucket (a crowded
    bucket, over 4 x BUCKET_TARGET, gets as many bits more, up to MAX_REFINE times: dense data stays linear). Returns
    (n, k) indices (-1 where fewer were found) and their cosines (-1 there), the nearest first."""
    n = len(thumbs)
    bits = int(np.clip(np.floor(np.log2(max(n, 2) / BUCKET_TARGET)), 1, 16))
    pairs = lsh_pairs(thumbs, NEIGHBOUR_FLOOR, None, NEIGHBOUR_TABLES, bits, seed, 4 * BUCKET_TARGET)
    ids, sims = np.full((n, k), -1, dtype=np.int64), np.full((n, k), -1.0, dtype=np.float32)
    if not len(pairs):
        return ids, sims
    cos = cosine(thumbs, pairs[:, 0], pairs[:, 1])
    src = np.r_[pairs[:, 0], pairs[:, 1]]
    dst = np.r_[pairs[:, 1], pairs[:, 0]]
    cos = np.r_[cos, cos]
    order = np.lexsort((-cos, src))
    src, dst, cos = src[order], dst[order], cos[order]
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    rank = np.arange(len(src)) - np.repeat(starts, np.diff(np.r_[starts, len(src)]))
    keep = rank < k
    ids[src[keep], rank[keep]] = dst[keep]
    sims[src[keep], rank[keep]] = cos[keep]
    for _ in range(DESCENT_ROUNDS):
        ids, sims = _descend(thumbs, ids, sims)
    return ids, sims


def _descend(thumbs: np.ndarray, ids: np.ndarray, sims: np.ndarray, chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One round of NN-descent (Dong, Charikar and Li 2011): a neighbour's neighbour is likely a neighbour, so
    each image's neighbours' neighbours are compared with it and the k best of old and new are kept."""
    n, k = ids.shape
    new_ids, new_sims = ids.copy(), sims.copy()
    for s in range(0, n, chunk):
        rows = np.arange(s, min(n, s + chunk))
        near = ids[rows]
        hop = np.where(near[:, :, None] >= 0, ids[np.maximum(near, 0)], -1).reshape(len(rows), -1)
        both = np.concatenate([near, hop], axis=1)
        both = np.where(both == rows[:, None], -1, both)
        both = np.sort(both, axis=1)
        both[:, 1:][both[:, 1:] == both[:, :-1]] = -1  # each candidate once
        cos = np.einsum("rd,rcd->rc", thumbs[rows], thumbs[np.maximum(both, 0)])
        cos[both < 0] = -1.0
        best = np.argsort(-cos, axis=1, kind="stable")[:, :k]
        new_ids[rows] = np.where(np.take_along_axis(cos, best, 1) > -1, np.take_along_axis(both, best, 1), -1)
        new_sims[rows] = np.take_along_axis(cos, best, 1)
    return new_ids, new_sims


def neighbour_similarity(squares: np.ndarray, thumbs: np.ndarray, ids: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(n, k): the aligned similarity of each image's crops with each of its neighbours `ids` (one-sided; -1 where
    there is no neighbour). Each image's crops are computed once."""
    out = np.full(ids.shape, -1.0, dtype=np.float32)
    for s in range(0, len(ids), chunk):
        rows = ids[s : s + chunk]
        crops = _aligned(squares[s : s + chunk])  # (c, crops, d)
        sims = (crops @ thumbs[np.maximum(rows, 0)].transpose(0, 2, 1)).max(1)  # (c, k)
        out[s : s + chunk] = np.where(rows >= 0, sims, -1.0)
    return out


def density(near: np.ndarray) -> np.ndarray:
    """Each image's similarity to its DENSITY_RANK-th nearest neighbour (-1 when fewer were found: nothing to
    compare with)."""
    if near.shape[1] < DENSITY_RANK:
        return np.full(len(near), -1.0, dtype=np.float32)
    return -np.sort(-near, axis=1)[:, DENSITY_RANK - 1]


def accepted(sim: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The verification rule: similarity >= MIN_SIMILARITY, and 1 - similarity <= RATIO x (1 - `reference`), the
    lower of the two images' densities."""
    return (sim >= MIN_SIMILARITY) & (1 - sim <= RATIO * (1 - reference))


def pair_similarity(squares: np.ndarray, thumbs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Aligned similarity of each pair, either way round."""
    a, b = pairs[:, 0], pairs[:, 1]
    return np.maximum(aligned_similarity(squares, thumbs, a, b), aligned_similarity(squares, thumbs, b, a))


def duplicate_groups(
    digests: list[bytes | None],
    hashes: np.ndarray,
    squares: np.ndarray,
    features: np.ndarray | None = None,
    radius: int = PHASH_RADIUS,
    threshold: float = FEATURE_COSINE,
) -> tuple[list[list[int]], dict[str, int]]:
    """Groups of image indices that are copies of one another: equal `digests` (exact), or candidate pairs (equal
    pHashes, pHashes within `radius`, thumbnail neighbours, and with features cosine >= `threshold` with a pHash
    within FEATURE_PHASH_GUARD) that `accepted` confirms on the aligned similarity of the grey `squares`. Returns
    the groups and how many pairs each rule proposed and how many were confirmed (for the record)."""
    n = len(hashes)
    uf = UnionFind(n)
    first: dict[bytes, int] = {}
    for i, d in enumerate(digests):
        if d is not None:
            uf.union(first.setdefault(d, i), i)
    reps = np.array(sorted({uf.find(i) for i in range(n)}), dtype=np.int64)  # one image per exact group
    found = {"exact": n - len(reps), "phash": 0, "features": 0, "neighbours": 0, "verified": 0}
    if len(reps) < 2:
        return uf.groups(), found
    rep_hashes, rep_squares = hashes[reps], squares[reps]
    values, first_of, inverse = np.unique(rep_hashes, return_index=True, return_inverse=True)
    same_hash = np.flatnonzero(np.arange(len(reps)) != first_of[inverse])
    proposed = [np.stack([first_of[inverse[same_hash]], same_hash], axis=1)]
    by_hash = phash_pairs(values, radius)
    proposed.append(first_of[by_hash])
    found["phash"] = len(same_hash) + len(by_hash)
    if features is not None:

        def same_layout(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return hamming(rep_hashes[a], rep_hashes[b]) <= FEATURE_PHASH_GUARD

        by_features = feature_pairs(project(features[reps]), threshold, same_layout)
        proposed.append(by_features)
        found["features"] = len(by_features)
    thumbs = thumbnails(rep_squares)
    neighbours, _ = nearest_neighbours(thumbs)
    near = neighbour_similarity(rep_squares, thumbs, neighbours)
    dense = density(near)
    rows, cols = np.nonzero(near >= MIN_SIMILARITY)  # a neighbour already as similar as a copy must be
    found["neighbours"] = len(rows)
    proposed_pairs = unique_pairs(proposed)
    pairs = np.concatenate([proposed_pairs, np.stack([rows, neighbours[rows, cols]], axis=1)])
    sims = np.concatenate([pair_similarity(rep_squares, thumbs, proposed_pairs), near[rows, cols]])
    ok = accepted(sims, np.minimum(dense[pairs[:, 0]], dense[pairs[:, 1]]))
    for a, b in pairs[ok]:
        uf.union(int(reps[a]), int(reps[b]))
    found["verified"] = len(unique_pairs([pairs[ok]]))
    return uf.groups(), found
