"""`zoo audit`: what is wrong with the data, found before it costs a training run.

The data is scanned as `zoo finetune` scans it (every file decoded once and its pixels hashed; unreadable files
skipped with their reason), then:

- image_checks: one cheap pass over every image: stored size, perceptual hash, contrast -> too small, extreme
  aspect ratio, blank;
- features (`features.cached_features`, the cache `zoo rank` fills) of a backbone with pretrained weights, per
  split, when there is one (`--model`, by default the smallest at hand);
- duplicates: exact and near-duplicate groups, which of them cross splits (leakage) or carry different labels;
- label_issues: confident learning on the out-of-fold probabilities of `zoo advise`'s linear probe;
- outliers: images far from every class in feature space.

Every finding is a `Finding` (one flagged file, one issue); `audit_output` writes them as audit.json, audit.csv,
an HTML page and a corrected manifest. Nothing here writes to the data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.core.errors import UsageError
from zoo.data.cleaning import SPLITS, cross_split_duplicates
from zoo.select import copies, image_checks, label_issues, outliers

log = logging.getLogger(__name__)

KINDS = ("exact-duplicate", "near-duplicate", "label-error", "outlier", "too-small", "odd-aspect-ratio", "blank",
         "unreadable")  # fmt: skip
NO_MODEL = "none"
DEFAULT_INPUT = 224  # the input side "too small" is judged against when no model is used
# the probe's LBFGS on fewer images is mostly small operations, where a second thread costs more in synchronisation
# than it gains: measured on 2 busy cores, 1,500 images fit in 0.6 s on one thread and 19 s on two; 32,000 images
# in 23 s on one and 14 s on two
ONE_THREAD_BELOW = 5000


@dataclass
class Finding:
    """One flagged file and one thing wrong with it (a file with two issues has two findings)."""

    path: str
    split: str | None  # train, val, test; None for a file the scan skipped
    label: str | None  # the given label; multi-label: the labels joined with '|'
    issue: str  # one of KINDS
    score: float  # higher is more suspicious; what it measures depends on the issue (details says)
    details: str
    suggested: str | None = None  # label-error: the probe's label
    group: int | None = None  # duplicates: the group's id


@dataclass
class Group:
    """Copies of one image: exact (all the same pixels) or near; the first member is the one kept."""

    id: int
    kind: str  # exact | near
    members: list[dict[str, Any]]  # path, split, label
    cross_split: bool
    conflicting: bool  # the members do not all carry the same label(s)


@dataclass
class Audit:
    data: str
    model: str | None  # the backbone whose features were used; None: pixels only
    images: int
    classes: list[str]
    multi_label: bool
    layout: str
    splits: dict[str, int]
    findings: list[Finding] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    leakage: dict[str, dict[str, int]] = field(default_factory=dict)  # "train-val": {groups, images}
    exact_leaks: int = 0  # val/test images with the same pixels as an earlier split's: zoo finetune's count
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    pairs: dict[str, int] = field(default_factory=dict)  # duplicate pairs found by each rule
    rows: list[tuple[str, str, str]] = field(default_factory=list, repr=False)  # every image: path, split, label

    def counts(self) -> dict[str, int]:
        """Flagged files per issue kind, in KINDS order."""
        found = {k: 0 for k in KINDS}
        for f in self.findings:
            found[f.issue] += 1
        return found

    def of(self, issue: str) -> list[Finding]:
        return [f for f in self.findings if f.issue == issue]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "rows"}
        return {**out, "counts": self.counts()}


def choose_model(model: str | None):
    """(spec, weights choice) of `--model` (default: the smallest backbone whose pretrained weights are at hand),
    or (None, None) for `--model none` or when no backbone has weights at hand. A backbone without pretrained
    weights is refused: random features find no label errors and no outliers."""
    from zoo.catalogue.registry import get_registry
    from zoo.model.build import choose_weights

    registry = get_registry()
    if model == NO_MODEL:
        return None, None
    if model is None:
        from zoo.select.rank import select_candidates

        try:
            at_hand = select_candidates([], None, None, None, registry)
        except UsageError:
            return None, None
        model = min(at_hand, key=lambda c: (registry.get(c.backbone).num_params or 1 << 62, c.backbone)).backbone
    spec = registry.get(model)
    choice = choose_weights(spec, "default")
    if not choice.pretrained:
        raise UsageError(
            f"--model {spec.name}: no pretrained weights, and random features find no label errors and no outliers; "
            f"give a backbone with pretrained weights (`zoo rank` lists those at hand), or --model {NO_MODEL} for "
            "the pixel checks only"
        )
    return spec, choice


def audit(
    data: str | Path,
    *,
    model: str | None = None,
    labels: str | Path | None = None,
    options=None,
    val_fraction: float = 0.2,
    seed: int = 0,
    use_cache: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Audit:
    """Audit DATA (a folder or a manifest; `labels`: a manifest of a folder's images); see the module docstring."""
    from zoo.data.images import decode_size
    from zoo.data.split import load

    say = progress or (lambda phase: None)
    clock = _Clock()
    spec, choice = choose_model(model)
    pre = spec.preprocess_for(choice.tag) if spec else None
    say("scanning")
    split = load(data, labels, options, val_fraction, seed, decode_size(pre) if pre else 256)
    samples = [(s, which) for which in SPLITS for s in split.samples(which)]
    result = Audit(str(data), spec.name if spec else None, len(samples), split.classes, split.multi_label,
                   split.layout, {w: len(split.samples(w)) for w in SPLITS})  # fmt: skip
    clock.lap("scan")
    say("measuring images")
    facts = image_checks.measure([s.path for s, _ in samples])
    clock.lap("images")
    feats = None
    if spec is not None:
        say(f"features of {spec.name}")
        feats = _features(spec, choice, split, use_cache)
        clock.lap("features")
    texts = [_label_text(s.label, split.classes) for s, _ in samples]
    where = [(str(s.path), which, text) for (s, which), text in zip(samples, texts, strict=True)]
    result.rows = where
    say("finding duplicates")
    group_of = _duplicates(result, split, samples, where, facts, feats)
    result.exact_leaks = cross_split_duplicates(split)
    clock.lap("duplicates")
    input_side = min(pre.input_size) if pre else DEFAULT_INPUT
    image_issues = image_checks.image_issues(facts, input_side)
    for issue in image_issues:
        result.findings.append(Finding(*where[issue.index], issue.kind, round(issue.score, 4), issue.details))
    if 0 < image_checks.typical_short_side(facts) * image_checks.UPSCALE_LIMIT < input_side:
        result.notes.append(
            f"most images are small (median short side {image_checks.typical_short_side(facts):.0f} px): the model's "
            f"{input_side} px input upscales them more than {image_checks.UPSCALE_LIMIT:g}x; a backbone with a smaller "
            "input may suit them"
        )
    _skipped(result, split)
    if feats is None:
        result.notes.append(
            "no backbone with pretrained weights was used (--model NAME): label errors and outliers were not looked for"
        )
    else:
        say("probing labels")
        _label_errors(result, split, samples, where, feats, seed)
        clock.lap("labels")
        blank = np.zeros(len(samples), dtype=bool)
        blank[[i.index for i in image_issues if i.kind == "blank"]] = True
        _outliers(result, where, feats, blank, group_of)
        clock.lap("outliers")
    result.seconds = clock.laps
    return result


class _Clock:
    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.laps["total"] = round(now - self.start, 3)
        self.last = now


def _label_text(label, classes: list[str]) -> str:
    return "|".join(classes[i] for i in label) if isinstance(label, tuple) else classes[label]


def _features(spec, choice, split, use_cache: bool) -> np.ndarray:
    """Pooled features of every image, split by split: each split's are cached on their own, so a `zoo rank` of
    the same train split (up to its --limit) and a second audit find them."""
    from zoo.select.features import FeatureStore, cache_dir, cached_features

    target = None
    if split.multi_label:
        from zoo.training.tasks import MultiHot

        target = MultiHot(len(split.classes))
    store = FeatureStore(cache_dir() if use_cache else None)
    parts = []
    for which in SPLITS:
        if split.samples(which):
            found = cached_features(spec, choice, None, split.samples(which), split.classes, store, None, target)
            parts.append(found.features)
    return np.concatenate(parts)


def _duplicates(result: Audit, split, samples, where, facts, feats) -> np.ndarray:
    """Groups, findings and leakage into `result`; returns each image's group id (-1: in none)."""
    digests = [split.digests.get(s.path) for s, _ in samples]
    groups, result.pairs = copies.duplicate_groups(digests, facts.hashes, facts.squares, feats)
    order = {w: i for i, w in enumerate(SPLITS)}
    groups = [sorted(members, key=lambda i: (order[samples[i][1]], where[i][0])) for members in groups]
    copied = np.array([i for members in groups for i in members[1:]], dtype=np.int64)
    kept_of = np.array([members[0] for members in groups for _ in members[1:]], dtype=np.int64)
    likeness = dict(zip(copied.tolist(), copies.similarity(facts.squares[copied], facts.squares[kept_of]).tolist(),
                        strict=True))  # fmt: skip
    group_of = np.full(len(samples), -1)
    leakage: dict[str, dict[str, int]] = {}
    for gid, members in enumerate(groups, 1):
        group_of[members] = gid
        kept = members[0]
        exact = all(digests[i] == digests[kept] for i in members)
        splits_in = sorted({samples[i][1] for i in members}, key=order.get)
        conflicting = len({where[i][2] for i in members}) > 1
        group = Group(gid, "exact" if exact else "near", [dict(zip(("path", "split", "label"), where[i], strict=True))
                      for i in members], len(splits_in) > 1, conflicting)  # fmt: skip
        result.groups.append(group)
        for a_i, a in enumerate(splits_in):
            for b in splits_in[a_i + 1 :]:
                pair = leakage.setdefault(f"{a}-{b}", {"groups": 0, "images": 0})
                pair["groups"] += 1
                pair["images"] += sum(samples[i][1] == b for i in members)
        seen: set[bytes | None] = {digests[kept]}
        for i in members[1:]:
            same = digests[i] in seen
            seen.add(digests[i])
            details = f"{'same pixels as' if same else 'near-duplicate of'} {where[kept][0]} ({where[kept][1]})"
            if group.cross_split:
                details += f"; group {gid} crosses {'/'.join(splits_in)}"
            if conflicting:
                details += f"; labels differ: {where[i][2]} here, {where[kept][2]} there"
            kind = "exact-duplicate" if same else "near-duplicate"
            score = 1.0 if same else round(likeness[i], 4)
            result.findings.append(Finding(*where[i], kind, score, details, None, gid))
    result.leakage = leakage
    return group_of


def _skipped(result: Audit, split) -> None:
    not_images = 0
    for path, why in split.skipped:
        if why.endswith("not an image file extension"):
            not_images += 1
            continue
        result.findings.append(Finding(str(path), None, None, "unreadable", 1.0, why))
    if not_images:
        result.notes.append(f"{not_images} file(s) without an image extension were left out (not images)")


def _judged(split, samples) -> tuple[np.ndarray, list[np.ndarray]]:
    """The images the probe judges (single-label: those of classes with 2+ images), and each class's members."""
    k = len(split.classes)
    if split.multi_label:
        members = [np.array([i for i, (s, _) in enumerate(samples) if c in s.label], dtype=np.int64) for c in range(k)]
        return np.arange(len(samples)), members
    labels = np.array([s.label for s, _ in samples], dtype=np.int64)
    members = [np.flatnonzero(labels == c) for c in range(k)]
    return np.flatnonzero(np.isin(labels, [c for c in range(k) if len(members[c]) >= 2])), members


def _label_errors(result: Audit, split, samples, where, feats: np.ndarray, seed: int) -> None:
    import torch

    judged, members = _judged(split, samples)
    rare = [split.classes[c] for c, m in enumerate(members) if len(m) < 2 and not split.multi_label]
    if rare:
        result.notes.append(f"class(es) with a single image, not judged for label errors: {', '.join(rare)}")
    threads = torch.get_num_threads()
    if len(judged) < ONE_THREAD_BELOW:
        torch.set_num_threads(1)
    try:
        probs, found = _probe_issues(split, samples, judged, torch.from_numpy(feats[judged]).float(), seed)
    finally:
        torch.set_num_threads(threads)
    for issue in found:
        i = int(judged[issue.index])
        suggested = "|".join(split.classes[c] for c in issue.suggested)
        details = issue.details or (
            f"the probe gives '{where[i][2]}' {issue.given_prob:.2f} and '{suggested}' "
            f"{float(probs[issue.index].max()):.2f} (out of fold)"
        )
        result.findings.append(Finding(*where[i], "label-error", round(issue.score, 4), details, suggested))


def _probe_issues(split, samples, judged, x, seed: int):
    """(out-of-fold probabilities, label issues) of the judged images."""
    import torch

    from zoo.training.advise import FOLDS, out_of_fold_logits

    if split.multi_label:
        y = torch.zeros(len(judged), len(split.classes), dtype=torch.long)
        for row, i in enumerate(judged):
            y[row, list(samples[i][0].label)] = 1
        probs = torch.sigmoid(out_of_fold_logits(x, y, FOLDS, seed)).numpy()
        return probs, label_issues.find_multilabel_issues(y.numpy(), probs, split.classes)
    y = torch.tensor([samples[i][0].label for i in judged], dtype=torch.long)
    folds = max(2, min(FOLDS, int(torch.bincount(y)[torch.bincount(y) > 0].min())))
    probs = torch.softmax(out_of_fold_logits(x, y, folds, seed), 1).numpy()
    return probs, label_issues.find_label_issues(y.numpy(), probs)


def _outliers(result: Audit, where, feats: np.ndarray, blank: np.ndarray, group_of: np.ndarray) -> None:
    for o in outliers.find_outliers(feats, exclude=blank, groups=group_of):
        details = (
            f"{o.score:.1f} robust z-scores from the data: its {outliers.K} nearest images are at {o.distance:.2f}"
        )
        result.findings.append(Finding(*where[o.index], "outlier", round(o.score, 3), details))
