"""The learning-rate range test (Smith, 2015; fastai's and Lightning's `lr_find`), on a run's own set-up.

The run's trainable groups (its policy at epoch 0, with the policy's per-group LR factors), its optimizer,
loss, batches and frozen-prefix cache train for `steps` batches while the base LR grows exponentially from
`start` to `end`. The loss is smoothed (exponential moving average, beta 0.98, bias-corrected, as fastai);
the test stops early once the smoothed loss exceeds 4x its minimum (divergence).

The suggestion, **Lightning's rule**: the LR where the smoothed loss falls fastest, i.e. the minimum of its
gradient with respect to log(LR), searched before the loss's minimum and skipping the first 10% of the
steps (where the smoothing has not settled). Weights, optimizer state and the step count are put back
afterwards, so training starts from the same weights as without the test.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from zoo.core.errors import DataError, UsageError

RULE = "steepest descent of the smoothed loss against log(LR), before its minimum (Lightning's rule)"


@dataclass
class LRFind:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float
    rule: str
    steps: int
    stopped: str  # "end of range" | "diverged"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def suggest(lrs: list[float], losses: list[float]) -> float:
    """Lightning's rule on a smoothed curve (pure: unit-tested)."""
    n = len(losses)
    if n < 3:
        raise DataError(f"the LR range test ran {n} step(s): too few to suggest an LR (use more --lr-find-steps)")
    lowest = int(np.argmin(losses))
    skip = max(1, n // 10)
    end = max(lowest, skip + 2)
    grads = np.gradient(np.asarray(losses[:end]), np.log(np.asarray(lrs[:end])))
    best = skip + int(np.argmin(grads[skip:])) if end - skip >= 2 else int(np.argmin(grads))
    return float(lrs[best])


def range_test(setup, start: float = 1e-7, end: float = 1.0, steps: int = 100, beta: float = 0.98) -> LRFind:
    """Run the range test on a run's `zoo.training.setup.RunSetup` (before its first epoch); leave it as it was."""
    if not (0 < start < end) or not all(math.isfinite(v) for v in (start, end)):
        raise UsageError(f"--lr-find-start {start} / --lr-find-end {end}: need 0 < start < end")
    if steps < 3:
        raise UsageError(f"--lr-find-steps {steps}: must be >= 3")
    model, opt, cache, plan = setup.model, setup.optimizer, setup.cache, setup.choice.plan
    saved_model = copy.deepcopy(model.state_dict())
    opt.add_trainable(0)
    saved_opt = copy.deepcopy(opt.torch.state_dict())
    cache.ensure(plan.frozen_at(0))
    model.train()
    from zoo.model.freeze import apply_trainable

    apply_trainable(model, setup.choice.groups, plan.trainable(0), setup.cfg.train_bn)
    key = (cache.k if cache.active else None, tuple(opt.names))
    module = setup.ddp.module(model, cache.suffix, key)
    lrs, losses, avg, lowest, stopped = [], [], 0.0, math.inf, "end of range"
    epoch = 0
    try:
        while len(lrs) < steps:
            for inputs, target in setup.batches(True, epoch):
                i = len(lrs)
                lr = start * (end / start) ** (i / (steps - 1))
                opt.set_lr(lr / opt.lr)  # every group keeps its policy factor
                logits, _aux = setup.forward(module, inputs)
                loss = setup.criterion(logits.float(), target)
                opt.torch.zero_grad(set_to_none=True)
                loss.backward()
                opt.torch.step()
                value = float(setup.dist.all_sum(loss.item())[0]) / setup.dist.world
                if not math.isfinite(value):
                    stopped = "diverged"
                    break
                avg = beta * avg + (1 - beta) * value
                smooth = avg / (1 - beta ** (i + 1))
                lrs.append(lr)
                losses.append(smooth)
                lowest = min(lowest, smooth)
                if i > steps // 10 and smooth > 4 * lowest:
                    stopped = "diverged"
                    break
                if len(lrs) == steps:
                    break
            if stopped == "diverged":
                break
            epoch += 1
    finally:
        model.load_state_dict(saved_model)
        opt.torch.load_state_dict(saved_opt)
        opt.set_lr(1.0)
    return LRFind(lrs, losses, suggest(lrs, losses), RULE, len(lrs), stopped)


def find_and_record(setup) -> dict[str, Any]:
    """The range test on a run's `zoo.training.setup.RunSetup` (`zoo lr-find`, and --lr auto before the first
    epoch); its curve (lr_find.json) and plot (lr_find.png) go into the run folder."""
    import json
    import logging

    result = range_test(setup, steps=setup.cfg.lr_find_steps).to_dict()
    if setup.dist.is_main:
        (setup.run_dir / "lr_find.json").write_text(json.dumps(result, indent=2) + "\n")
        try:
            plot(setup.run_dir / "lr_find.png", result)
        except Exception as exc:  # a plot must never stop a run
            logging.getLogger(__name__).warning("could not draw lr_find.png: %s: %s", type(exc).__name__, exc)
    return result


def plot(path, result: dict[str, Any]) -> None:
    """The loss against the LR (log scale), the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"])
    ax.axvline(result["suggestion"], color="tab:red", linestyle="--", label=f"suggested {result['suggestion']:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("LR range test")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
