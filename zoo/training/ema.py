"""`--ema DECAY`: an exponential moving average of the weights, kept beside the trained ones.

After every optimizer step, each weight (and BatchNorm buffer) of the average moves towards the trained
model's: `ema = ema + (1 - d) * (model - ema)` (torch.optim.swa_utils.AveragedModel with `multi_avg_fn`),
where `d = min(DECAY, (1 + n) / (10 + n))` after n updates: the warmup of TensorFlow's and timm's EMA, so
that a short fine-tuning run is not pinned to its starting weights by a decay meant for long ones.

The averaged weights are the ones evaluated every epoch, kept as `best.pt`, tested and exported; the
trained weights continue the optimisation, and both are in the checkpoint so a resumed run is exact.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from zoo.core.errors import UsageError


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=self._step, use_buffers=True)

    def _step(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # counters such as BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        updates = int(n)
        decay = min(self.decay, (1 + updates) / (10 + updates))
        torch._foreach_lerp_(averaged, current, 1 - decay)

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, as the model's own state dict (what best.pt, export and evaluate load)."""
        return {k: v.detach().cpu().clone() for k, v in self.averaged.module.state_dict().items()}

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    def load(self, state: dict[str, Any], updates: int) -> None:
        self.averaged.module.load_state_dict(state)
        self.averaged.n_averaged.fill_(updates)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The averaged weights in `model` (and so in every module that shares its parameters, such as the
        cache's suffix) for the duration, then the trained ones back."""
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.averaged.module.state_dict())
        try:
            yield
        finally:
            model.load_state_dict(trained)


def make_ema(model: nn.Module, decay: float | None) -> EMA | None:
    if decay is None:
        return None
    if not (math.isfinite(decay) and 0 < decay < 1):
        raise UsageError(f"--ema {decay}: the decay must be between 0 and 1 (0.999 is common; closer to 1 averages "
                         "over more steps)")  # fmt: skip
    return EMA(model, decay)
