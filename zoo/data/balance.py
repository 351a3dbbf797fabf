"""Class imbalance: how skewed a train split is, what `--balance` does about it, and which metric picks the best epoch.

- `loss`: a class-weighted loss. Single-label: each class weighs N / (C * n_c) in the
  cross-entropy (scikit-learn's "balanced" weights), so every class carries the same total
  weight. Multi-label: each label's positives weigh (N - p_c) / p_c in the binary
  cross-entropy (`pos_weight`, as PyTorch's documentation recommends).
- `sampler`: a class-balanced sampler: each train image is drawn with probability
  proportional to 1 / n_c of its class (multi-label: of its rarest label), with replacement,
  as many draws per epoch as there are train images.
- `auto`: `none` when the largest class is at most `SKEW_LIMIT` times the smallest
  (multi-label: the most and least frequent label), else `loss`. bench/datasets.py measured it on
  a 40x-skewed set (docs/benchmarks.md): `loss` and `sampler` both gain about 16-18 points of
  balanced accuracy over `none`, within each other's seed spread, and `loss` recalls the rarest
  classes better (0.66 against 0.57) while every epoch still sees each image once.

`--select-by auto` picks the best epoch by mAP for multi-label data, by balanced accuracy when the
train split is skewed (the rule above), and by accuracy otherwise. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from zoo.core.errors import UsageError
from zoo.core.metrics import SELECTABLE

MODES = ("none", "loss", "sampler")
SKEW_LIMIT = 1.5


@dataclass(frozen=True)
class Balance:
    """What a run does about imbalance, and why."""

    mode: str  # none | loss | sampler
    asked: str  # what --balance said (auto or a mode)
    skew: float  # largest / smallest train count of a class (multi-label: of a label's positives)
    counts: tuple[int, ...]  # train images per class (multi-label: positives per label)
    images: int
    multi_label: bool
    reason: str

    @property
    def class_weights(self) -> list[float] | None:
        """The loss weights of `loss` mode: per class (single-label) or per label's positives (multi-label)."""
        if self.mode != "loss":
            return None
        if self.multi_label:
            return [(self.images - p) / p if p else 1.0 for p in self.counts]
        used = [n for n in self.counts if n]
        return [self.images / (len(used) * n) if n else 0.0 for n in self.counts]

    @property
    def sample_weights_per_class(self) -> list[float] | None:
        """The sampler's weight of an image of each class (multi-label: of each label; an image takes its max)."""
        if self.mode != "sampler":
            return None
        return [1.0 / n if n else 0.0 for n in self.counts]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "class_weights": self.class_weights}


def skew_of(counts: list[int]) -> float:
    used = [n for n in counts if n]
    return max(used) / min(used) if used else 1.0


def choose(asked: str, counts: list[int], images: int, multi_label: bool) -> Balance:
    """The balance mode for `--balance asked` on a train split with these per-class counts."""
    if asked not in ("auto", *MODES):
        raise UsageError(f"--balance {asked}: choose one of auto, {', '.join(MODES)}")
    skew = skew_of(counts)
    what = "label" if multi_label else "class"
    measured = (
        f"the most frequent {what} has {skew:.1f}x the train images of the rarest ({max(counts)} vs "
        f"{min(n for n in counts if n) if any(counts) else 0})"
    )
    if asked != "auto":
        mode, reason = asked, f"--balance {asked}; {measured}"
    elif skew <= SKEW_LIMIT:
        mode, reason = "none", f"{measured}, at most {SKEW_LIMIT}x: balanced enough"
    else:
        mode, reason = "loss", f"{measured}, over {SKEW_LIMIT}x: a class-weighted loss"
    return Balance(mode, asked, round(skew, 3), tuple(counts), images, multi_label, reason)


def select_metric(asked: str, balance: Balance) -> str:
    """The metric that picks the best epoch: `--select-by`, or the auto rule above."""
    if asked not in ("auto", *SELECTABLE):
        raise UsageError(f"--select-by {asked}: choose one of auto, {', '.join(SELECTABLE)}")
    if asked != "auto":
        return asked
    if balance.multi_label:
        return "map"
    return "balanced_acc" if balance.skew > SKEW_LIMIT else "acc"
