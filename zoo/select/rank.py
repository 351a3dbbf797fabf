"""`zoo rank`: which backbone for this data, from one forward pass per candidate, before any fine-tuning.

Each candidate's pretrained features over a stratified sample of the train split (`features.extract`, cached) are
scored by every transferability estimate that applies (`estimates.ESTIMATES`) and by the cross-validated linear
probe of `zoo advise`. Candidates are ranked by one estimate (LogME by default); a candidate that cannot be built,
cut or run is a row with its reason, never the end of the ranking. The winner gets the policy `zoo advise` picks.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.core.errors import UsageError, ZooError
from zoo.select.estimators import ESTIMATES
from zoo.select.features import HEAD, Candidate, FeatureStore, cache_dir, cache_key, extract, fingerprint
from zoo.select.names import DEFAULT_ESTIMATE, DEFAULT_LIMIT

log = logging.getLogger(__name__)

PROBE = "probe"
NO_WEIGHTS = "no pretrained weights: random features rank nothing (give a backbone with pretrained weights)"


@dataclass
class Row:
    """One candidate's scores, costs and seconds, or the reason it has none."""

    candidate: str
    backbone: str
    cut: str | None
    weights: str | None = None
    params: int | None = None
    input_size: int | None = None
    ms_per_image: float | None = None
    engine: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # estimate -> why it has no score
    ranks: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False
    error: str | None = None
    pareto: bool = False


@dataclass
class Ranking:
    data: str
    images: int  # sampled train images each candidate was scored on
    classes: list[str]
    multi_label: bool
    estimate: str  # the one the ranking is by
    rows: list[Row]
    advice: dict[str, Any] | None = None  # zoo advise for the winner
    seconds: float = 0.0
    folder: Path | None = None

    @property
    def ranked(self) -> list[Row]:
        return [r for r in self.rows if r.error is None]

    @property
    def winner(self) -> Row | None:
        return self.ranked[0] if self.ranked else None

    @property
    def policy(self) -> str | None:
        """The policy to fine-tune the winner with: its cut, or what `zoo advise` picked."""
        if (w := self.winner) is None:
            return None
        if w.cut:
            return f"cut:{w.cut}"
        return self.advice["policy"] if self.advice else None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "folder"}
        out["winner"] = self.winner.candidate if self.winner else None
        out["policy"] = self.policy
        return out


def select_candidates(texts: list[str], source: str | None, tag: str | None, max_params: int | None, registry):
    """The candidates: named (globs, `NAME@cut:GROUP`), by source, by tag; with none of those, every backbone whose
    pretrained weights are at hand. A name, glob, source or tag that finds nothing is a UsageError."""
    from zoo.catalogue.weights import at_hand

    chosen: dict[str, Candidate] = {}
    for text in texts:
        name, cut = Candidate.parse(text)
        if any(ch in name for ch in "*?["):
            specs = registry.list(name)
            if not specs:
                raise UsageError(f"candidate {text!r}: the pattern matches no backbone (see `zoo list`)")
            names = [s.name for s in specs]
        else:
            names = [registry.get(name).name]  # unknown: one line with the closest names
        for n in names:
            c = Candidate(n, cut)
            chosen[c.label] = c
    for flag, value, found in (
        ("--source", source, source and registry.list(source=source)),
        ("--tag", tag, tag and registry.list(tag=tag)),
    ):
        if value and not found:
            raise UsageError(f"{flag} {value}: no backbone has it (see `zoo list`)")
        for spec in found or []:
            chosen.setdefault(spec.name, Candidate(spec.name))
    if not texts and not source and not tag:
        for spec in registry.list():
            weights = spec.get_weights(spec.default_weights) if spec.default_weights else None
            if weights is not None and at_hand(weights):
                chosen[spec.name] = Candidate(spec.name)
    if max_params is not None:
        chosen = {k: c for k, c in chosen.items() if (registry.get(c.backbone).num_params or 0) <= max_params}
    if not chosen:
        raise UsageError(
            "no candidate to rank: no installed backbone has its pretrained weights at hand"
            + (f" within --max-params {max_params}" if max_params is not None else "")
            + "; name candidates (`zoo rank DATA NAME...`), which downloads their weights"
        )
    return sorted(chosen.values(), key=lambda c: c.label)  # the order given never changes the ranking


def score(features, source_probs, labels, multi_label: bool, seed: int = 0) -> tuple[dict, dict]:
    """(scores, missing): every estimate that applies, and the linear probe, on one candidate's features."""
    import numpy as np

    scores: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name, est in ESTIMATES.items():
        if est.needs == "source" and source_probs is None:
            missing[name] = "needs the pretrained classifier (whole backbone with a source head)"
            continue
        if multi_label and not est.multi_label:
            missing[name] = "single-label data only"
            continue
        data = source_probs if est.needs == "source" else features
        try:
            value = float(est.fn(data, labels))
        except UsageError as exc:
            missing[name] = str(exc)
            continue
        if np.isfinite(value):
            scores[name] = value
        else:
            missing[name] = "not finite on these features"
    scores[PROBE] = probe(features, labels, seed)
    return scores, missing


def probe(features, labels, seed: int = 0) -> float:
    """`zoo advise`'s cross-validated linear probe (accuracy, or mAP for multi-label) on the features."""
    import torch

    from zoo.training.advise import FOLDS, probe_accuracy

    x = torch.from_numpy(features).float()
    y = torch.from_numpy(labels)
    if y.ndim == 1:
        folds = max(2, min(FOLDS, int(torch.bincount(y).min())))
    else:
        folds = FOLDS
    return probe_accuracy(x, y, folds, seed)


def rank_candidates(rows: list[Row], estimate: str) -> list[Row]:
    """Rows by `estimate` (best first, ties by name), failures last; each row's rank under every estimate; the
    Pareto front of (estimate high, ms/image low)."""
    ok = [r for r in rows if r.error is None]
    names = {n for r in ok for n in r.scores}
    for name in names:
        scored = sorted((r for r in ok if name in r.scores), key=lambda r: (-r.scores[name], r.candidate))
        for i, r in enumerate(scored, 1):
            r.ranks[name] = i
    ordered = sorted(ok, key=lambda r: (estimate not in r.scores, -r.scores.get(estimate, 0.0), r.candidate))
    for r in ordered:
        r.pareto = (
            estimate in r.scores
            and r.ms_per_image is not None
            and not any(
                o is not r
                and estimate in o.scores
                and o.ms_per_image is not None
                and o.scores[estimate] >= r.scores[estimate]
                and o.ms_per_image <= r.ms_per_image
                and (o.scores[estimate] > r.scores[estimate] or o.ms_per_image < r.ms_per_image)
                for o in ordered
            )
        )
    return ordered + sorted((r for r in rows if r.error is not None), key=lambda r: r.candidate)


def rank(
    data: str | Path,
    candidates: list[str] | tuple[str, ...] = (),
    *,
    source: str | None = None,
    tag: str | None = None,
    limit: int = DEFAULT_LIMIT,
    max_params: int | None = None,
    estimate: str = DEFAULT_ESTIMATE,
    seed: int = 0,
    val_fraction: float = 0.2,
    labels: str | Path | None = None,
    options=None,
    use_cache: bool = True,
    advise: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> Ranking:
    """Score and rank candidate backbones on DATA's train split (see the module docstring)."""
    from zoo.catalogue.registry import get_registry
    from zoo.data.split import load

    start = time.perf_counter()
    if limit < 2:
        raise UsageError(f"--limit {limit}: rank needs at least 2 images per candidate (default {DEFAULT_LIMIT})")
    if estimate not in (*ESTIMATES, PROBE):
        raise UsageError(f"--estimate {estimate}: choose one of {', '.join((*ESTIMATES, PROBE))}")
    registry = get_registry()
    chosen = select_candidates(list(candidates), source, tag, max_params, registry)
    decode_at = max((_decode_size(registry, c) for c in chosen), default=256)
    decoded: dict = {}
    split = load(data, labels, options, val_fraction, seed, decode_at or 256, decoded)
    _check_classes(split)
    from zoo.training.advise import stratified_sample

    samples = stratified_sample(split.train, limit, seed)
    target, y = _targets(split, samples)
    store = FeatureStore(cache_dir() if use_cache else None)
    data_id = fingerprint(samples, split.classes)
    rows = []
    for i, cand in enumerate(chosen):
        if progress:
            progress(i, len(chosen), cand.label)
        rows.append(_score_candidate(registry, cand, samples, decoded, target, y, split.multi_label, store, data_id))
        gc.collect()
    if progress:
        progress(len(chosen), len(chosen), "")
    ranking = Ranking(
        str(data), len(samples), split.classes, split.multi_label, estimate, rank_candidates(rows, estimate)
    )
    if advise and ranking.winner is not None and ranking.winner.cut is None:
        ranking.advice = _advise(registry, ranking.winner.backbone, split, decoded, seed)
    ranking.seconds = round(time.perf_counter() - start, 2)
    return ranking


def _decode_size(registry, cand: Candidate) -> int:
    from zoo.data.images import decode_size

    try:
        spec = registry.get(cand.backbone)
    except ZooError:
        return 0
    if not spec.groups:  # an entry completed on first use: its size is known once it is
        return 0
    return decode_size(spec.preprocess_for(spec.get_weights(spec.default_weights or "")))


def _check_classes(split) -> None:
    counts = split.counts("train")
    if len(counts) < 2:
        raise UsageError(f"{split.root}: one class only ({', '.join(counts)}); ranking needs at least two")
    if not split.multi_label and min(counts.values()) < 2:
        rare = min(counts, key=counts.get)
        raise UsageError(
            f"{split.root}: class '{rare}' has {counts[rare]} train image(s); ranking needs at least 2 per class"
        )


def _targets(split, samples):
    import numpy as np

    if split.multi_label:
        from zoo.training.tasks import MultiHot

        target = MultiHot(len(split.classes))
        y = np.stack([target(s.label).numpy() for s in samples]).astype(np.int64)
        return target, y
    return None, np.array([s.label for s in samples], dtype=np.int64)


def _score_candidate(registry, cand, samples, decoded, target, y, multi_label, store, data_id) -> Row:
    from zoo.model.build import choose_weights

    started = time.perf_counter()
    row = Row(cand.label, cand.backbone, cand.cut)
    try:
        spec = registry.get(cand.backbone)
        choice = choose_weights(spec, "default")
        row.params, row.weights = spec.num_params, choice.label
        if not choice.pretrained:
            row.error = NO_WEIGHTS
            return row
        pre = spec.preprocess_for(choice.tag)
        row.input_size = max(pre.input_size)
        key = cache_key(spec, choice.tag, cand.cut or HEAD, pre, data_id)
        hit = store.load(key)
        if hit is not None and hit[1].get("estimates") == sorted(ESTIMATES):
            found, meta = hit
            row.scores, row.missing = meta["scores"], meta["missing"]
        else:
            found = hit[0] if hit is not None else extract(spec, choice, cand.cut, samples, decoded, target)
            row.scores, row.missing = score(found.features, found.source_probs, y, multi_label)
            store.save(key, found, {"estimates": sorted(ESTIMATES), "scores": row.scores, "missing": row.missing})
        row.engine, row.ms_per_image, row.cached = found.engine, found.ms_per_image, found.cached
    except ZooError as exc:
        row.error = str(exc)
    except Exception as exc:  # a model that fails to build, trace or export is a row, not the end of the ranking
        log.debug("candidate %s failed", cand.label, exc_info=True)
        row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    finally:
        row.seconds = round(time.perf_counter() - started, 2)
    return row


def _advise(registry, backbone: str, split, decoded, seed: int) -> dict[str, Any] | None:
    """`zoo advise` for the winner on the same scanned data; None (logged) when it cannot measure."""
    from zoo.model.build import choose_weights, create_model
    from zoo.training.advise import measure

    try:
        spec = registry.get(backbone)
        choice = choose_weights(spec, "default")
        model = create_model(spec, weights=choice)
        advice = measure(model, spec, split, decoded, spec.preprocess_for(choice.tag), seed=seed)
    except ZooError as exc:
        log.warning("zoo advise could not measure %s: %s", backbone, exc)
        return None
    return {"policy": advice.policy.name, "quadrant": advice.quadrant, "evidence": advice.evidence}
