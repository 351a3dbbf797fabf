"""Freezing: which parameters get gradients and which BatchNorm layers update their statistics, for one epoch.

A frozen group has `requires_grad=False` and keeps its BatchNorm layers in eval
mode (unless `train_bn`), so its running statistics stay the pretrained ones.
"""

from __future__ import annotations

import weakref

from torch import nn

from zoo.model.build import GroupMap

# each model's BatchNorm layers with their group, found once: called every epoch, the search of every module's
# group (a regex per group for modules without parameters) cost milliseconds an epoch, paid by each tune trial
_BATCHNORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def apply_trainable(model: nn.Module, groups: GroupMap, trainable: dict[str, bool], train_bn: bool = False) -> None:
    """Set requires_grad per group; BatchNorm in frozen groups to eval mode. Call after `model.train()`."""
    for name, param in model.named_parameters():
        param.requires_grad_(trainable[groups.of_param(name)])
    if train_bn:
        return
    found = _BATCHNORMS.get(model)
    if found is None or found[0] is not groups:
        norms = [(module, groups.of_module(path)) for path, module in model.named_modules()
                 if isinstance(module, nn.modules.batchnorm._BatchNorm)]  # fmt: skip
        found = _BATCHNORMS[model] = (groups, norms)
    for module, owner in found[1]:
        if owner is not None and not trainable[owner]:
            module.eval()
