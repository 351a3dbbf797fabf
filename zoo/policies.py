"""Freeze policies: which layer groups train, at what learning rate, from which epoch.

A policy is data (`Policy`); `Policy.plan` turns it into one `GroupPlan` per
layer group for a given epoch, and `apply_plan` sets `requires_grad` and the
BatchNorm modes on a model. Named policies come from three places: the
built-ins here, `[policies.NAME]` tables in registry.toml, and plugins through
the `register_policies` hook.

| policy | what trains | the case it is for |
|---|---|---|
| feature-extract (linear-probe) | only the new head | small data, similar to ImageNet |
| freeze:K | all but the first K groups (K may be a group name) | small data, different |
| finetune | everything, from pretrained weights | large data, similar |
| scratch | everything, from random init | large data, different |
| discriminative:F | everything; LR x F per group going down from the head | fastai / timm layer decay |
| gradual:N | head first, one more group from the top every N epochs | ULMFiT |
| cut:GROUP | a new head on the pooled output of GROUP; groups after it dropped | small data, very different |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from zoo.errors import ZooError

HEAD_ONLY = "head"  # `frozen` value: every group but the last


class PolicyError(ZooError):
    """A policy name or its argument is wrong."""


@dataclass(frozen=True)
class GroupPlan:
    name: str
    trainable: bool
    lr_mult: float = 1.0


@dataclass(frozen=True)
class Policy:
    """How a model is trained, group by group. Every field is plain data, so a policy can live in TOML."""

    name: str
    description: str = ""
    frozen: int | str = 0  # leading groups frozen at the start: a count, a group name (frozen up to it), or "head"
    unfreeze_every: int | None = None  # gradual: unfreeze one more group from the top every N epochs
    unfreeze_at: int | None = None  # unfreeze everything at this epoch (fastai's fine_tune)
    lr_decay: float | None = None  # discriminative: LR multiplier per group going down from the head
    cut: str | None = None  # drop the groups after this one; the new head sits on its pooled output
    pretrained: bool = True  # False: random init (scratch)

    def frozen_count(self, groups: tuple[str, ...]) -> int:
        """How many leading groups are frozen at epoch 0."""
        n = len(groups)
        if self.frozen == HEAD_ONLY:
            return n - 1
        if isinstance(self.frozen, str):
            if self.frozen not in groups:
                raise PolicyError(f"policy '{self.name}': no group '{self.frozen}'; groups: {', '.join(groups)}")
            return groups.index(self.frozen) + 1
        if not 0 <= self.frozen < n:
            raise PolicyError(
                f"policy '{self.name}': can freeze 0 to {n - 1} of the {n} groups "
                f"({', '.join(groups)}); the head always trains"
            )
        return int(self.frozen)

    def frozen_at(self, groups: tuple[str, ...], epoch: int) -> int:
        """Leading groups frozen during `epoch` (0-based)."""
        k = self.frozen_count(groups)
        if self.unfreeze_at is not None and epoch >= self.unfreeze_at:
            return 0
        if self.unfreeze_every:
            k = max(0, k - epoch // self.unfreeze_every)
        return k

    @property
    def fixed_prefix(self) -> bool:
        """True when the frozen prefix never changes during the run (what the activation cache needs)."""
        return self.unfreeze_every is None and self.unfreeze_at is None

    def plan(self, groups: tuple[str, ...], epoch: int = 0) -> list[GroupPlan]:
        k = self.frozen_at(groups, epoch)
        n = len(groups)
        out = []
        for i, name in enumerate(groups):
            mult = self.lr_decay ** (n - 1 - i) if self.lr_decay else 1.0
            out.append(GroupPlan(name, trainable=i >= k, lr_mult=mult))
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


BUILTIN_HELP = {
    "feature-extract": "train only the new head (alias: linear-probe)",
    "freeze:K": "freeze the first K groups (or up to and including group K), train the rest",
    "finetune": "train every group from the pretrained weights",
    "scratch": "train every group from random init",
    "discriminative:F": "train every group, LR x F per group going down from the head",
    "gradual:N": "train the head, then unfreeze one more group from the top every N epochs",
    "cut:GROUP": "drop the groups after GROUP, train a new head on its pooled output",
    "auto": "measure the data's size and similarity to the pretraining data (zoo advise), then pick one",
}


def _number(text: str, kind, policy: str, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise PolicyError(f"--policy {policy}: {what}") from None
    return value


def builtin_policy(text: str) -> Policy | None:
    """A built-in policy from its command-line form, or None when the name is not built in."""
    name, _, arg = text.partition(":")
    if name in ("feature-extract", "linear-probe") and not arg:
        return Policy(text, BUILTIN_HELP["feature-extract"], frozen=HEAD_ONLY)
    if name == "finetune" and not arg:
        return Policy(text, BUILTIN_HELP["finetune"])
    if name == "scratch" and not arg:
        return Policy(text, BUILTIN_HELP["scratch"], pretrained=False)
    if name == "freeze":
        if not arg:
            raise PolicyError("--policy freeze:K needs K, a number of groups or a group name (e.g. freeze:3)")
        frozen: int | str = int(arg) if arg.isdigit() else arg
        return Policy(text, BUILTIN_HELP["freeze:K"], frozen=frozen)
    if name == "cut":
        if not arg:
            raise PolicyError("--policy cut:GROUP needs a group name (see `zoo info MODEL`)")
        return Policy(text, BUILTIN_HELP["cut:GROUP"], frozen=HEAD_ONLY, cut=arg)
    if name == "discriminative":
        factor = _number(arg or "", float, text, "needs a factor F > 0, e.g. discriminative:0.5")
        if factor <= 0:
            raise PolicyError(f"--policy {text}: the factor must be > 0")
        return Policy(text, BUILTIN_HELP["discriminative:F"], lr_decay=factor)
    if name == "gradual":
        every = _number(arg or "", int, text, "needs a whole number of epochs N >= 1, e.g. gradual:2")
        if every < 1:
            raise PolicyError(f"--policy {text}: N must be >= 1")
        return Policy(text, BUILTIN_HELP["gradual:N"], frozen=HEAD_ONLY, unfreeze_every=every)
    return None


_FIELDS = {f.name for f in dataclasses.fields(Policy)} - {"name"}


def policy_from_data(name: str, data: dict[str, Any], where: str = "registry.toml") -> Policy:
    """A `[policies.NAME]` table as a Policy."""
    unknown = set(data) - _FIELDS
    if unknown:
        raise PolicyError(
            f"{where} [policies.{name}]: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(_FIELDS))}"
        )
    return Policy(name=name, **data)


def resolve_policy(text: str, registry=None) -> Policy:
    """The policy called `text`: built-in, from registry.toml, or from a plugin."""
    from zoo.registry import get_registry

    text = text.strip()
    if text == "auto":
        raise PolicyError("policy 'auto' is chosen from the data: use `zoo finetune --policy auto` or `zoo advise`")
    if policy := builtin_policy(text):
        return policy
    registry = registry or get_registry()
    tables = registry.data.get("policies", {})
    name, _, arg = text.partition(":")
    if name in tables and not arg:
        return policy_from_data(name, tables[name])
    if name in registry.policies:
        entry = registry.policies[name]
        policy = entry.factory(arg or None)
        if not isinstance(policy, Policy):
            raise PolicyError(
                f"plugin '{entry.source}': policy '{name}' returned {type(policy).__name__}, not a zoo.policies.Policy"
            )
        return policy
    known = [
        "feature-extract",
        "linear-probe",
        "freeze:K",
        "finetune",
        "scratch",
        "discriminative:F",
        "gradual:N",
        "cut:GROUP",
        *sorted(tables),
        *sorted(registry.policies),
    ]
    raise PolicyError(f"unknown policy '{text}'; choose from {', '.join(known)}")


def available_policies(registry=None) -> list[tuple[str, str, str]]:
    """(name, source, help) for every policy: built-ins, registry.toml, plugins."""
    from zoo.registry import get_registry

    registry = registry or get_registry()
    rows = [(name, "built-in", text) for name, text in BUILTIN_HELP.items()]
    rows += [
        (name, "registry.toml", data.get("description", "")) for name, data in registry.data.get("policies", {}).items()
    ]
    rows += [(e.name, e.source, e.help) for e in registry.policies.values()]
    return rows


def apply_plan(model, spec, plan: list[GroupPlan], train_bn: bool = False) -> None:
    """Set requires_grad per group, and put BatchNorm in frozen groups in eval mode (unless `train_bn`).

    Call after `model.train()`: frozen BatchNorm layers then keep their running statistics.
    """
    from torch import nn

    trainable = {p.name: p.trainable for p in plan}
    groups = {g.name: g for g in spec.groups}
    for name, param in model.named_parameters():
        param.requires_grad_(trainable[_owner(groups, name)])
    if train_bn:
        return
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            owner = _owner(groups, f"{path}.weight", default=None)
            if owner is not None and not trainable[owner]:
                module.eval()


def _owner(groups: dict, name: str, default: Any = ...) -> str:
    for group in groups.values():
        if group.matches(name):
            return group.name
    if default is ...:
        raise KeyError(name)
    return default
