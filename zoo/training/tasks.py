"""What a run optimises and measures: single-label (softmax, cross-entropy) or multi-label (sigmoid, BCE).

A single-label target is a class index; a multi-label target is a multi-hot float vector
(`MultiHot`, which the data loader applies to a sample's tuple of classes). The loss carries
the run's `--balance loss` weights (`zoo.data.balance`) and label smoothing (multi-label: the
targets move to eps/2 and 1 - eps/2, as timm's BinaryCrossEntropy does). Validation metrics
and multi-label thresholds come from `zoo.core.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.core import metrics
from zoo.data.balance import Balance


class MultiHot:
    """A tuple of class indices -> a multi-hot float vector (a class, so loader workers can pickle it)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, label) -> torch.Tensor:
        out = torch.zeros(self.num_classes)
        out[list(label)] = 1.0
        return out


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy on logits, with label smoothing and per-label positive weights."""

    def __init__(self, smoothing: float = 0.0, pos_weight: list[float] | None = None):
        super().__init__()
        self.smoothing = smoothing
        self.register_buffer("pos_weight", torch.tensor(pos_weight) if pos_weight else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.smoothing:
            target = target * (1 - self.smoothing) + self.smoothing / 2
        return nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)


@dataclass(frozen=True)
class Task:
    multi_label: bool
    num_classes: int

    @property
    def name(self) -> str:
        return "multi-label" if self.multi_label else "single-label"

    def target_fn(self):
        """What the loader applies to a sample's label (None: the class index as it is)."""
        return MultiHot(self.num_classes) if self.multi_label else None

    def criterion(self, label_smoothing: float, balance: Balance) -> nn.Module:
        weights = balance.class_weights
        if self.multi_label:
            return MultiLabelLoss(label_smoothing, weights)
        return nn.CrossEntropyLoss(
            weight=torch.tensor(weights, dtype=torch.float32) if weights else None, label_smoothing=label_smoothing
        )

    def eval_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The validation loss: plain (unweighted, unsmoothed), so runs with different settings compare."""
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(logits, target)
        return nn.functional.cross_entropy(logits, target)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, 1)

    def correct(self, logits: torch.Tensor, target: torch.Tensor) -> int:
        """Train images right: the class, or (multi-label) the whole label set at 0.5."""
        if self.multi_label:
            return int(((logits >= 0) == (target >= 0.5)).all(1).sum())
        if target.ndim == 2:  # soft targets (mixup/cutmix): the class that weighs most
            target = target.argmax(1)
        return int((logits.argmax(1) == target).sum())

    def sample_weights(self, labels: torch.Tensor, balance: Balance) -> torch.Tensor | None:
        """`--balance sampler`: each sample's draw weight, from its class (multi-label: its rarest label)."""
        per_class = balance.sample_weights_per_class
        if per_class is None:
            return None
        w = torch.tensor(per_class, dtype=torch.float64)
        if self.multi_label:
            return (labels.double() * w).max(1).values.clamp_min(w[w > 0].min() if (w > 0).any() else 1.0)
        return w[labels]

    def report(
        self, targets: np.ndarray, probs: np.ndarray, classes: list[str], thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Every metric of these predictions; multi-label thresholds are tuned on them unless given."""
        if not self.multi_label:
            return metrics.single_label_report(targets, probs, classes)
        if thresholds is None:
            thresholds = metrics.tune_thresholds(targets, probs)
        return metrics.multi_label_report(targets, probs, thresholds, classes)

    def labels_array(self, samples) -> np.ndarray:
        """The targets of samples as the metrics take them: (n,) classes or (n, C) 0/1."""
        return metrics.targets_array([s.label for s in samples], self.num_classes, self.multi_label)
