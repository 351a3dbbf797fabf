"""`zoo advise` and `--policy auto`: pick the transfer strategy from the data, with evidence.

The tutorials reduce the choice to two questions: is the dataset small or large,
and is it similar to the backbone's pretraining data? zoo measures both.

- Size: images per class (the smallest class decides): `large` from
  `LARGE_PER_CLASS` images in every class.
- Similarity: how well the pretrained features separate *these* classes, at every
  group boundary. The images go through the pretrained backbone once; the output of
  each group is average-pooled, and a linear probe (L2 logistic regression) is
  scored by stratified k-fold cross-validation on the train split. When the deepest
  features are (nearly) the best, they transfer: the data is similar. When an
  earlier depth beats them, the later groups are specialised to the pretraining data:
  the data is different, and the depth where accuracy peaks is where to freeze.

| | similar | different |
|---|---|---|
| small | feature-extract | freeze:K (K = the best depth) |
| large | finetune | finetune (pretrained init still helps optimisation) |

Multi-label data gets the same measurement with the multi-label twins: size is the rarest
label's number of train images, and each probe is one-vs-rest (a linear layer trained with
binary cross-entropy on every label at once), scored by cross-validated mAP; chance is then
the mean share of images that have a label.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.catalogue.policies import Policy, builtin_policy
from zoo.core.errors import UsageError

log = logging.getLogger(__name__)

LARGE_PER_CLASS = 500  # every class has at least this many images: "large"
SIMILAR_MARGIN = 0.02  # deepest probe within this of the best probe: the features transfer
FOLDS = 5
MAX_IMAGES = 2000  # probe on at most this many train images (a stratified sample): keeps advise under a minute


@dataclass
class Advice:
    backbone: str
    images: int
    per_class: dict[str, int]
    smallest_class: int
    size: str  # "small" | "large"
    similarity: float | None  # probe accuracy of the deepest features, 0..1 (None: could not measure)
    probes: dict[str, float]  # group name -> cross-validated probe accuracy of its pooled output
    best_group: str | None
    similar: bool | None
    quadrant: str
    policy: Policy  # what --policy auto trains with; its name is the --policy text (`freeze:2`)
    evidence: list[str] = field(default_factory=list)
    chance: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "policy": self.policy.name}


def decide(
    per_class: dict[str, int],
    probes: dict[str, float],
    groups: tuple[str, ...],
    large_per_class: int = LARGE_PER_CLASS,
    margin: float = SIMILAR_MARGIN,
    multi_label: bool = False,
    chance: float | None = None,
    images: int | None = None,
) -> tuple[str, str, bool | None, str | None, list[str]]:
    """(size, quadrant, similar, policy, evidence) from class sizes and probe scores. Pure: unit-tested."""
    smallest = min(per_class.values())
    size = "large" if smallest >= large_per_class else "small"
    if multi_label:
        evidence = [
            f"{images} train images with {len(per_class)} labels; the rarest label is on {smallest} "
            f"(large means >= {large_per_class} for every label): {size}"
        ]
    else:
        evidence = [
            f"{sum(per_class.values())} train images in {len(per_class)} classes; the smallest class has "
            f"{smallest} (large means >= {large_per_class} in every class): {size}"
        ]
    score = "mAP" if multi_label else "accuracy"
    if not probes:
        evidence.append(
            "the features could not be probed (too few images per class for cross-validation); "
            "the safest choice for small data is to train only the head"
        )
        policy = "feature-extract" if size == "small" else "finetune"
        return size, f"{size}, similarity unknown", None, policy, evidence
    order = [g for g in groups if g in probes]
    deepest = order[-1]
    best = max(order, key=lambda g: (probes[g], order.index(g)))  # ties go to the deeper group
    similar = probes[best] - probes[deepest] <= margin
    chance = 1 / len(per_class) if chance is None else chance
    evidence.append(
        f"linear-probe {score} of the pretrained features by depth: "
        + ", ".join(f"{g} {probes[g]:.3f}" for g in order)
        + f" (chance {chance:.3f})"
    )
    if similar:
        evidence.append(
            f"the deepest features ({deepest}) are within {margin:.0%} of the best: they transfer, "
            "so the data is similar to the pretraining data"
        )
    else:
        evidence.append(
            f"the features peak at {best} ({probes[best]:.3f}) and fall to {probes[deepest]:.3f} at "
            f"{deepest}: the later groups are specialised to the pretraining data, so the data is different"
        )
    quadrant = f"{size} and {'similar' if similar else 'different'}"
    if size == "small" and similar:
        policy = "feature-extract"
        evidence.append("small and similar: train only the new head on the pretrained features")
    elif size == "small":
        k = groups.index(best) + 1
        policy = f"freeze:{k}"
        evidence.append(
            f"small and different: keep the first {k} group(s), up to {best}, where the features "
            "still transfer, and train the rest"
        )
    else:
        policy = "finetune"
        evidence.append(
            f"large and {'similar' if similar else 'different'}: enough data to train every group; "
            "starting from the pretrained weights"
        )
    return size, quadrant, similar, policy, evidence


def boundary_features(model, spec, loader) -> dict[str, Any]:
    """Pooled output of every group but the head, for every image in `loader`, in one pass."""
    import torch
    import torch.fx as fx

    from zoo.model.cut import Pool, activations_crossing, staged_graph

    gm, stage = staged_graph(model, spec)
    n = len(spec.groups)
    # for each boundary k (after group k-1): the single activation that crosses it, if there is one
    crossing: dict[int, fx.Node] = {}
    for k in range(1, n):
        if len(tensors := activations_crossing(gm, stage, k)) == 1:
            crossing[k] = tensors[0]
    pool = Pool(spec.features_layout)
    wanted = {node: spec.groups[k - 1].name for k, node in crossing.items()}
    out: dict[str, list] = {name: [] for name in wanted.values()}
    labels = []

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            value = super().run_node(node)
            if node in wanted and isinstance(value, torch.Tensor):
                out[wanted[node]].append(pool(value.float()).cpu())
            return value

    recorder = Recorder(gm)
    gm.eval()
    with torch.no_grad():
        for images, target in loader:
            recorder.run(images)
            labels.append(target)
    return {name: torch.cat(chunks) for name, chunks in out.items() if chunks}, torch.cat(labels)


def probe_accuracy(features, labels, folds: int = FOLDS, seed: int = 0, l2: float = 1e-3) -> float:
    """Stratified k-fold accuracy of an L2 logistic regression on standardised features; for (n, C) multi-hot
    labels, k-fold mAP of one-vs-rest logistic regressions (seeded random folds)."""
    scores = out_of_fold_logits(features, labels, folds, seed, l2)
    if labels.ndim == 2:
        from zoo.core.metrics import mean_average_precision

        return mean_average_precision(labels.numpy(), scores.numpy())[0]
    return int((scores.argmax(1) == labels).sum()) / len(labels)


def out_of_fold_logits(features, labels, folds: int = FOLDS, seed: int = 0, l2: float = 1e-3):
    """Each image's logits from the probe fitted on the other folds: (n, C). Single-label: stratified folds and
    a softmax probe; (n, C) multi-hot labels: seeded random folds and a probe with one sigmoid per label. The one
    fold/fit routine behind `probe_accuracy` (zoo advise, zoo rank) and `zoo audit`'s label issues."""
    import torch

    multi = labels.ndim == 2
    fold_of = _folds(labels, folds, seed)
    n_out = labels.shape[1] if multi else int(labels.max()) + 1
    scores = torch.zeros(len(labels), n_out)
    for f in range(folds):
        train, test = fold_of != f, fold_of == f
        if not test.any():
            continue
        target = labels[train].float() if multi else labels[train]
        mean, std, w, b = _fit_probe(features[train], target, n_out, multi, l2)
        with torch.no_grad():
            scores[test] = ((features[test] - mean) / std) @ w + b
    return scores


def _folds(labels, folds: int, seed: int):
    """Each image's fold: per class, a seeded shuffle dealt round-robin; multi-label, a seeded permutation."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    if labels.ndim == 2:
        return torch.randperm(len(labels), generator=gen) % folds
    fold_of = torch.empty(len(labels), dtype=torch.long)
    for c in range(int(labels.max()) + 1):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        fold_of[idx] = torch.arange(len(idx)) % folds
    return fold_of


def _fit_probe(x, y, n_out: int, multi: bool, l2: float):
    """(mean, std, w, b): an L2-regularised linear probe on standardised x, fitted by LBFGS (cross-entropy, or
    binary cross-entropy per label for multi-hot y)."""
    import torch

    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], n_out, requires_grad=True)
    b = torch.zeros(n_out, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=100, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits if multi else torch.nn.functional.cross_entropy

    def closure():
        opt.zero_grad()
        loss = loss_fn(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, w.detach(), b.detach()


def advise(
    backbone: str,
    data: str | Path,
    weights: str = "default",
    val_fraction: float = 0.2,
    seed: int = 0,
    large_per_class: int = LARGE_PER_CLASS,
    labels: str | Path | None = None,
    options=None,
) -> Advice:
    """Measure size and similarity of DATA (a folder or a manifest; `labels`: a manifest of a folder's images)
    for BACKBONE, and recommend a freeze policy (`zoo advise`)."""
    from zoo.catalogue.registry import get_registry
    from zoo.data.images import decode_size
    from zoo.data.split import load
    from zoo.model.build import choose_weights, create_model

    if large_per_class < 1:
        raise UsageError(f"--large-per-class {large_per_class}: must be >= 1")
    spec = get_registry().get(backbone)
    choice = choose_weights(spec, weights)
    require_pretrained(spec, choice)
    pre = spec.preprocess_for(choice.tag)
    decoded: dict = {}
    split = load(data, labels, options, val_fraction, seed, decode_size(pre), decoded)
    model = create_model(spec, weights=choice)
    return measure(model, spec, split, decoded, pre, seed=seed, large_per_class=large_per_class)


def require_pretrained(spec, choice) -> None:
    """Similarity is measured on pretrained features: a UsageError when there are none."""
    if not choice.pretrained:
        has = "--weights none" if spec.weights else "no pretrained weights registered"
        raise UsageError(
            f"zoo advise and --policy auto measure how well {spec.name}'s pretrained features fit the data: "
            f"they need pretrained weights ({has}); choose a policy with --policy"
        )


def measure(
    model,
    spec,
    split,
    decoded: dict,
    pre,
    *,
    seed: int = 0,
    large_per_class: int = LARGE_PER_CLASS,
    batch_size: int = 32,
) -> Advice:
    """The advice for a scanned data split and a built model with pretrained weights (also `--policy auto`,
    which then trains the same model: the data is scanned and the model built once)."""
    import time

    import torch

    from zoo.data.images import decode_size
    from zoo.training.loaders import ImageDataset, build_transform
    from zoo.training.tasks import MultiHot

    start = time.perf_counter()
    per_class = split.counts("train")
    multi = split.multi_label
    groups = spec.group_names
    probes: dict[str, float] = {}
    usable = min(per_class.values()) >= 2
    if usable:
        samples = stratified_sample(split.train, MAX_IMAGES, seed)
        folds = max(2, min(FOLDS, min(per_class.values())))
        was_training = model.training
        target = MultiHot(len(split.classes)) if multi else None
        loader = torch.utils.data.DataLoader(
            ImageDataset(samples, build_transform(pre, "none"), decoded, decode_size(pre), target),
            batch_size=batch_size,
        )
        with torch.random.fork_rng(devices=[]):  # measuring draws no random number the training would have drawn
            feats, labels = boundary_features(model.eval(), spec, loader)
        model.train(was_training)
        for name in groups[:-1]:
            if name in feats:
                probes[name] = probe_accuracy(feats[name], labels, folds, seed)
    chance = sum(per_class.values()) / (len(split.train) * len(per_class)) if multi else 1 / len(per_class)
    size, quadrant, similar, policy_name, evidence = decide(
        per_class, probes, groups, large_per_class, multi_label=multi, chance=chance, images=len(split.train)
    )
    if not usable:
        evidence.insert(1, "a class has fewer than 2 train images, too few to measure similarity")
    best = max(probes, key=lambda g: (probes[g], groups.index(g))) if probes else None
    deepest = [g for g in groups if g in probes][-1] if probes else None
    return Advice(
        spec.name,
        len(split.train),
        per_class,
        min(per_class.values()),
        size,
        probes[deepest] if deepest else None,
        probes,
        best,
        similar,
        quadrant,
        builtin_policy(policy_name),  # decide picks only built-in policies
        evidence,
        chance,
        time.perf_counter() - start,
    )


def stratified_sample(samples, limit: int, seed: int):
    """At most about `limit` samples, each class (each label set) in its share and at least 2 of it; seeded."""
    if len(samples) <= limit:
        return samples
    import random

    rng = random.Random(seed)
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    share = limit / len(samples)
    out = []
    for items in by_class.values():
        out += rng.sample(items, max(2, math.floor(len(items) * share)))
    return out
