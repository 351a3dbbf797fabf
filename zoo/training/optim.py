"""The optimizer and the learning-rate schedule of a run.

Parameter groups follow the layer groups: each trainable group gets its base LR
times the policy's multiplier, weight decay on weights but never on biases and
norms. A group joins the optimizer the first epoch it trains (gradual unfreezing
adds groups as it goes), and the schedule scales every group's base LR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zoo.catalogue.policies import RunPlan
from zoo.model.build import GroupMap
from zoo.training.config import OPTIMIZER_DEFAULTS


def base_lr(lr: float | None, optimizer: str, head_only: bool) -> float:
    """`--lr`, or the default for the optimizer and for what trains."""
    if lr is not None:
        return lr
    defaults = OPTIMIZER_DEFAULTS[optimizer]
    return defaults.head_lr if head_only else defaults.body_lr


def weight_decay(value: float | None, optimizer: str) -> float:
    """`--weight-decay`, or the optimizer's default."""
    return OPTIMIZER_DEFAULTS[optimizer].weight_decay if value is None else value


@dataclass(frozen=True)
class Schedule:
    """The LR schedule as a multiplier of each group's base LR, by optimizer step."""

    kind: str  # cosine (with linear warmup) or step
    epochs: int
    steps_per_epoch: int
    warmup_epochs: float  # the defaults of these are TrainConfig's
    step_size: int  # step: epochs between drops
    gamma: float  # step: multiplier at each drop

    def factor(self, step: int) -> float:
        total = self.epochs * self.steps_per_epoch
        warmup = round(self.warmup_epochs * self.steps_per_epoch) if self.epochs > 1 else 0
        if self.kind == "step":
            factor = self.gamma ** ((step // self.steps_per_epoch) // self.step_size)
        else:
            progress = (step - warmup) / max(1, total - warmup)
            factor = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
        if step < warmup:
            factor *= (step + 1) / warmup
        return factor


def step_groups(batches, accum_steps: int):
    """The batches of one optimizer step each: consecutive lists of --accum-steps batches (the last may be
    shorter)."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == accum_steps:
            yield group
            group = []
    if group:
        yield group


class Optimizer:
    """A torch optimizer whose parameter groups are the trainable layer groups, added as they start to train."""

    def __init__(self, kind: str, groups: GroupMap, plan: RunPlan, lr: float, decay: float, momentum: float):
        self.kind, self.groups, self.plan = kind, groups, plan
        self.lr, self.decay, self.momentum = lr, decay, momentum
        self.torch: torch.optim.Optimizer | None = None
        self.names: list[str] = []  # layer groups in the optimizer, in the order they joined

    def add_trainable(self, epoch: int) -> bool:
        """Add the groups that train in `epoch` and are not in yet; True if any joined."""
        trains = self.plan.trainable(epoch)
        new = []
        for name, mult in zip(self.plan.groups, self.plan.lr_mults, strict=True):
            if not trains[name] or name in self.names:
                continue
            self.names.append(name)
            pairs = self.groups.params[name]
            decay = [t for _, t in pairs if t.ndim > 1]
            no_decay = [t for _, t in pairs if t.ndim <= 1]
            for params, wd in ((decay, self.decay), (no_decay, 0.0)):
                if params:
                    lr = self.lr * mult
                    new.append({"params": params, "weight_decay": wd, "base_lr": lr, "lr": lr, "group": name})
        if not new:
            return False
        if self.torch is None:
            if self.kind == "sgd":
                nesterov = self.momentum > 0  # torch refuses Nesterov without momentum (--momentum 0)
                self.torch = torch.optim.SGD(new, lr=self.lr, momentum=self.momentum, nesterov=nesterov)
            else:
                self.torch = torch.optim.AdamW(new, lr=self.lr)
        else:
            for group in new:
                self.torch.add_param_group(group)
        return True

    def set_lr(self, factor: float) -> None:
        for group in self.torch.param_groups:
            group["lr"] = group["base_lr"] * factor

    @property
    def lr_now(self) -> float:
        return max(g["lr"] for g in self.torch.param_groups)

    def step(self, scaler=None, clip_grad: float | None = None) -> None:
        """One update from the gradients: clipped to `clip_grad` (--clip-grad, their total norm) first, through
        the float16 GradScaler when there is one."""
        if clip_grad is not None:
            if scaler:
                scaler.unscale_(self.torch)  # clip the true gradients, not the scaled ones
            params = [p for g in self.torch.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        if scaler:
            scaler.step(self.torch)
            scaler.update()
        else:
            self.torch.step()

    def state_dict(self) -> dict:
        return self.torch.state_dict()

    def restore(self, state: dict, epoch: int) -> None:
        """Rebuild the parameter groups as they were after `epoch` epochs, then load their state."""
        for e in range(epoch):
            self.add_trainable(e)
        self.torch.load_state_dict(state)
