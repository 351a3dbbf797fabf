"""`zoo audit`'s detectors on small planted cases: perceptual hashes and their bucketed search, feature LSH,
duplicate groups, confident learning (single- and multi-label), outliers, image issues; the shared probe."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.select import copies, duplicates, image_checks, label_issues, outliers
from zoo.training.advise import out_of_fold_logits, probe_accuracy


def _photo(seed: int, size=(160, 120)) -> Image.Image:
    """A smooth random 'photo': blobs of colour, so that resizing keeps its structure, as in real photos."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def _hash(img: Image.Image) -> np.uint64:
    grey = img.convert("L").resize((duplicates.HASH_SIDE,) * 2, Image.Resampling.BOX)
    return duplicates.phashes(np.asarray(grey, dtype=np.float32)[None])[0]


def test_phash_survives_resizing_and_reencoding_but_tells_photos_apart():
    img = _photo(0)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=60)
    altered = [img.resize((80, 60)), Image.open(buffer).convert("RGB")]
    base = _hash(img)
    assert all(duplicates.hamming(base, _hash(c)) <= duplicates.PHASH_RADIUS for c in altered)
    others = [duplicates.hamming(base, _hash(_photo(s))) for s in range(1, 30)]
    assert min(others) > duplicates.PHASH_RADIUS


def test_phash_pairs_are_exactly_the_pairs_within_the_radius():
    """Multi-index hashing finds every pair a brute-force comparison finds, and no other."""
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, 2000, dtype=np.int64).astype(np.uint64)
    for i in range(200):  # near copies: 0 to 8 bits flipped
        flips = rng.choice(64, rng.integers(0, 9), replace=False)
        hashes[1000 + i] = hashes[i] ^ np.uint64(sum(1 << int(b) for b in flips))
    hashes[1500:1560] = hashes[1499] ^ np.arange(60, dtype=np.uint64) << np.uint64(58)  # a bucket over SMALL
    values = np.unique(hashes)
    found = {tuple(p) for p in duplicates.phash_pairs(values).tolist()}
    dist = duplicates.hamming(values[:, None], values[None, :])
    rows, cols = np.nonzero(np.triu(dist <= duplicates.PHASH_RADIUS, 1))
    assert found == set(zip(rows.tolist(), cols.tolist(), strict=True)) and len(found) > 1000


def test_feature_lsh_finds_close_pairs_without_comparing_all():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(3000, 64)).astype(np.float32)
    z[2000:2100] = z[:100] + rng.normal(scale=0.2, size=(100, 64))  # cosine about 0.98 with their sources
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    found = {tuple(p) for p in duplicates.feature_pairs(z).tolist()}
    assert {(i, 2000 + i) for i in range(100)} <= found
    assert all(z[a] @ z[b] >= duplicates.FEATURE_COSINE for a, b in found)


def test_crowded_feature_buckets_are_split_and_the_guard_applies_inside(monkeypatch):
    """Data where every pair passes the cosine (one tight cluster): crowded buckets get more hash bits, and only
    pairs that also pass the guard (here: the planted copies) come back."""
    monkeypatch.setattr(duplicates, "MAX_BUCKET", 64)
    rng = np.random.default_rng(7)
    z = (rng.normal(size=64) * 6 + rng.normal(size=(1200, 64))).astype(np.float32)
    z[600:] = z[:600] + rng.normal(scale=0.05, size=(600, 64))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    assert (z[:50] @ z[50:100].T).min() > duplicates.FEATURE_COSINE  # every pair is "close" by cosine alone
    planted = {(i, 600 + i) for i in range(600)}
    found = duplicates.feature_pairs(z, guard=lambda a, b: np.abs(np.asarray(b) - np.asarray(a)) == 600)
    assert len({tuple(p) for p in found.tolist()} & planted) >= 0.95 * len(planted)
    assert all(b - a == 600 for a, b in found.tolist())


def _square(img: Image.Image) -> np.ndarray:
    """The grey square image_checks keeps for each image."""
    return np.asarray(img.convert("L").resize((duplicates.HASH_SIDE,) * 2, Image.Resampling.BOX), dtype=np.uint8)


def _jpeg(img: Image.Image, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def _crop(img: Image.Image, left=0.05, top=0.04, right=0.03, bottom=0.06) -> Image.Image:
    w, h = img.size
    return img.crop((round(left * w), round(top * h), round(w - right * w), round(h - bottom * h)))


def test_duplicate_groups_join_exact_resized_reencoded_and_cropped_copies_only():
    """Photos 0-5 distinct; 6 the same pixels as 0, 7 a resized JPEG of 1, 8 a 3-6% crop of 2 (pHash moves), 9 a
    photo with 3's colours swapped (same layout, different photo); with features the crop is also proposed by
    them, and either way every copy and nothing else is grouped."""
    photos = [_photo(s) for s in range(6)]
    swapped = Image.fromarray(np.asarray(photos[3])[:, :, ::-1].copy())
    images = [*photos, photos[0], _jpeg(photos[1].resize((100, 75))), _crop(photos[2]), swapped]
    digests: list[bytes | None] = [bytes([i]) for i in range(len(images))]
    digests[6] = digests[0]
    hashes = np.array([_hash(i) for i in images], dtype=np.uint64)
    squares = np.stack([_square(i) for i in images])
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(len(images), 256)).astype(np.float32)
    feats[8] = feats[2] + rng.normal(scale=0.05, size=256)
    for with_features in (feats, None):
        groups, found = copies.duplicate_groups(digests, hashes, squares, with_features)
        assert groups == [[0, 6], [1, 7], [2, 8]], groups
        assert found["exact"] == 1 and found["verified"] == 2


def _digit_like(n_classes=10, per_class=150, seed=0):
    """Low-detail data like scanned digits: 8x8 blocky drawings, each class a template and each image the
    template with a few cells changed, so that different images of a class correlate at 0.95-0.99 and share
    pHashes, as the real digits do."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_classes):
        template = rng.integers(0, 17, (8, 8)) * 15
        for _ in range(per_class):
            cells = template.copy()
            where = rng.choice(64, 6, replace=False)
            cells.flat[where] = np.clip(cells.flat[where] + rng.integers(-60, 61, 6), 0, 255)
            images.append(Image.fromarray(cells.astype(np.uint8)).resize((128, 128), Image.Resampling.BILINEAR))
    return images


def test_dense_low_detail_data_keeps_copies_and_not_lookalikes():
    """The digits case: a pHash radius or a fixed correlation would join many different images; the density
    ratio keeps only the planted copies (JPEG, resized, both). (A crop of such data, whose lookalikes correlate
    at 0.99 in 16x16 thumbnails, can fall below them: docs/audit.md.)"""
    base = _digit_like()
    made = [_jpeg(base[0], 50), base[150].resize((90, 90)), _jpeg(base[450].resize((100, 100)), 70)]
    images = base + made
    squares = np.stack([_square(i) for i in images])
    hashes = np.array([_hash(i) for i in images], dtype=np.uint64)
    close = duplicates.hamming(hashes[:1500, None], hashes[None, :1500]) <= duplicates.PHASH_RADIUS
    assert np.triu(close, 1).sum() > 200  # pHash alone: hundreds of pairs of different images
    sims = copies.similarity(squares[:1500:7], squares[1:1500:7])
    assert (sims >= copies.MIN_SIMILARITY).mean() > 0.5  # a fixed correlation: half of neighbouring pairs
    groups, _ = copies.duplicate_groups([None] * len(images), hashes, squares)
    planted = [[0, 1500], [150, 1501], [450, 1502]]
    assert all(g in groups for g in planted), groups
    assert len(groups) <= len(planted) + 2, groups  # at most two lookalike pairs joined


def test_nearest_neighbours_find_most_true_neighbours_in_linear_work():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(40, 64))
    x = (centres[rng.integers(0, 40, 3000)] + rng.normal(scale=0.7, size=(3000, 64))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids, sims = copies.nearest_neighbours(x)
    exact = np.argsort(-(x @ x.T - 2 * np.eye(len(x))), axis=1)[:, : copies.NEIGHBOURS]
    recall = np.mean([len(set(ids[i]) & set(exact[i])) / copies.NEIGHBOURS for i in range(len(x))])
    assert recall >= 0.8, recall
    assert (np.diff(sims, axis=1) <= 1e-6).all() and (ids != np.arange(len(x))[:, None]).all()


def test_aligned_similarity_sees_through_crops_and_reencoding_but_not_other_photos():
    img = _photo(5)
    variants = [_crop(img), _jpeg(img.resize((100, 75)), 50), _crop(_jpeg(img), 0.06, 0.06, 0.06, 0.06)]
    first = np.stack([_square(img)] * 3 + [_square(img)] * 3)
    second = np.stack([_square(v) for v in variants] + [_square(_photo(s)) for s in (6, 7, 8)])
    sim = copies.similarity(first, second)
    assert (sim[:3] >= 0.97).all() and (sim[3:] < 0.5).all(), sim


def test_confident_learning_flags_the_flipped_label_and_suggests_the_right_one():
    """Three classes of 20; image 5 is labelled 0 but the probe puts 0.9 on class 2; image 6 is labelled 0 and
    merely uncertain (0.4 / 0.35 / 0.25): only image 5 is an issue, suggested 2."""
    labels = np.repeat([0, 1, 2], 20)
    probs = np.full((60, 3), 0.05)
    probs[np.arange(60), labels] = 0.9
    probs[5] = [0.05, 0.05, 0.9]
    probs[6] = [0.4, 0.35, 0.25]
    found = label_issues.find_label_issues(labels, probs)
    assert [i.index for i in found] == [5]
    assert found[0].suggested == (2,) and found[0].score == pytest.approx(0.95)
    joint = label_issues.confident_joint(labels, probs)
    assert joint.sum() == 60 and joint[0, 2] == 1 and (joint.sum(1) == 20).all()


def test_confident_learning_ranks_the_least_believed_label_first():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4))
    logits[np.arange(400), labels] += 3
    flipped = rng.choice(400, 30, replace=False)
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1) % 4
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    found = label_issues.find_label_issues(given, probs)
    caught = {i.index for i in found} & set(flipped.tolist())
    assert len(caught) >= 20 and len(found) <= 40  # confident learning is conservative: few false alarms
    assert [i.score for i in found] == sorted((i.score for i in found), reverse=True)


def test_multilabel_issues_find_a_missing_and_a_wrong_label():
    rng = np.random.default_rng(5)
    targets = (rng.random((80, 3)) < 0.5).astype(np.int64)
    probs = np.where(targets > 0, 0.9, 0.1) + rng.uniform(-0.05, 0.05, (80, 3))
    targets[3, 1] = 1 - targets[3, 1]  # the probe is sure of the other state
    probs[3, 1] = 0.01 if targets[3, 1] else 0.99
    found = label_issues.find_multilabel_issues(targets, probs, ["a", "b", "c"])
    assert [i.index for i in found] == [3]
    corrected = tuple(np.flatnonzero(np.where(np.arange(3) == 1, 1 - targets[3], targets[3])))
    assert found[0].suggested == corrected and "b" in found[0].details


def test_outliers_are_far_from_every_class():
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(3, 32)) * 4
    feats = np.concatenate([c + rng.normal(size=(40, 32)) for c in centres] + [rng.normal(size=(2, 32)) * 4])
    found = outliers.find_outliers(feats)
    assert {o.index for o in found} == {120, 121} and found[1].score > 3 * outliers.MODIFIED_Z
    assert outliers.find_outliers(feats[:120]) == []  # the classes' own images are not outliers


def test_outliers_are_not_hidden_by_blank_neighbours_or_their_own_copies():
    """Image 120 sits among 6 near-blank images (121-126), image 127 has 5 copies (128-132): each has 5 close
    neighbours, so neither looks far from the data until blank images leave the reference and an image's own
    duplicate group is not counted among its neighbours."""
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(3, 32)) * 4
    classes = [c + rng.normal(size=(40, 32)) for c in centres]
    odd, copied = rng.normal(size=(2, 32)) * 4
    around_odd = odd + rng.normal(scale=0.05, size=(7, 32))
    copies_of = copied + rng.normal(scale=0.01, size=(6, 32))
    feats = np.concatenate([*classes, around_odd, copies_of])
    blank = np.zeros(len(feats), dtype=bool)
    blank[121:127] = True
    groups = np.full(len(feats), -1)
    groups[127:133] = 7
    assert outliers.find_outliers(feats) == []
    found = {o.index for o in outliers.find_outliers(feats, exclude=blank, groups=groups)}
    assert found == {120, *range(127, 133)}


def test_image_issues_small_oddly_shaped_and_blank(tmp_path):
    files = {
        "ok.png": _photo(1, (300, 240)),
        "tiny.png": _photo(2, (40, 30)),
        "wide.png": _photo(3, (800, 200)),
        "blank.png": Image.new("RGB", (200, 200), (90, 90, 90)),
        "big.jpg": _photo(4, (1600, 1200)),  # decoded at reduced scale: its stored size is still read
    }
    paths = []
    for name, img in files.items():
        img.save(tmp_path / name)
        paths.append(tmp_path / name)
    facts = image_checks.measure(paths, workers=2)
    assert facts.sizes.tolist()[-1] == [1600, 1200]
    found = {(paths[i.index].name, i.kind) for i in image_checks.image_issues(facts, 224)}
    assert found == {("tiny.png", "too-small"), ("wide.png", "odd-aspect-ratio"), ("blank.png", "blank")}


def test_out_of_fold_logits_are_what_the_probe_accuracy_counts():
    """One fold/fit routine: advise's accuracy is the share of out-of-fold argmaxes that hit the label, and the
    value is the one the probe gave before the routine was shared."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(90, 12, generator=gen)
    y = torch.randint(0, 3, (90,), generator=gen)
    x[:, 0] += y * 1.5
    logits = out_of_fold_logits(x, y, 5, 0)
    assert logits.shape == (90, 3)
    accuracy = probe_accuracy(x, y, 5, 0)
    assert accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert accuracy == pytest.approx(0.7222222222222222)
