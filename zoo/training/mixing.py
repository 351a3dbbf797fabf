"""Mixup and CutMix: a training batch of mixed images with soft targets, by torchvision.transforms.v2.

`--mixup A` blends two images and their labels with a weight drawn from Beta(A, A); `--cutmix A` pastes a
box of one image into another and mixes the labels by the box's area. With both, each batch gets one of the
two at random (torchvision's reference recipe). The targets become per-class probabilities that sum to one.

Both mix images, so the frozen-prefix cache does not apply: the features of a mixed image are not the mix of
the two images' features. A run with either trains uncached and says so.
"""

from __future__ import annotations

import math

import torch

from zoo.core.errors import UsageError


class Mixer:
    """Mixes each training batch: (images, class indices) -> (mixed images, soft targets)."""

    def __init__(self, mixup: float | None, cutmix: float | None, num_classes: int):
        from torchvision.transforms import v2

        self.mixup, self.cutmix = mixup, cutmix
        ops = []
        if mixup:
            ops.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix:
            ops.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        self.op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.op(images, targets)

    def describe(self) -> str:
        parts = [f"mixup {self.mixup:g}" if self.mixup else "", f"cutmix {self.cutmix:g}" if self.cutmix else ""]
        return " or ".join(p for p in parts if p) + " per batch (soft targets)"


def make_mixer(mixup: float | None, cutmix: float | None, num_classes: int, multi_label: bool) -> Mixer | None:
    """The run's mixer, or None without --mixup/--cutmix."""
    for flag, value in (("mixup", mixup), ("cutmix", cutmix)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{flag} {value}: the Beta distribution's alpha must be a finite number > 0")
    if not mixup and not cutmix:
        return None
    if multi_label:
        raise UsageError("--mixup/--cutmix: for single-label data only (this run is multi-label)")
    return Mixer(mixup, cutmix, num_classes)
