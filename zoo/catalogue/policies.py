"""Freeze policies: which layer groups train, at what learning rate, from which epoch.

A `Policy` is data: it can live in registry.toml, come from a plugin, or be
parsed from `--policy`. It is resolved once per run against the model's layer
groups into a `RunPlan`, which the training loop consults every epoch. Named
policies come from three places: the built-ins here, `[policies.NAME]` tables in
registry.toml, and plugins through the `register_policies` hook.

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
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zoo.core.errors import PolicyError

LEGACY_HEAD_ONLY = "head"  # `frozen = "head"` in registry.toml files and checkpoints written before `head_only`


@dataclass(frozen=True)
class Policy:
    """How a model is trained, group by group. Every field is plain data, so a policy can live in TOML."""

    name: str
    description: str = ""
    frozen: int | str = 0  # leading groups frozen at the start: a count, or a group name (frozen up to it)
    head_only: bool = False  # every group but the last (the head) frozen at the start: feature extraction
    unfreeze_every: int | None = None  # gradual: unfreeze one more group from the top every N epochs
    unfreeze_at: int | None = None  # unfreeze everything at this epoch (fastai's fine_tune)
    lr_decay: float | None = None  # discriminative: LR multiplier per group going down from the head
    cut: str | None = None  # drop the groups after this one; the new head sits on its pooled output
    pretrained: bool = True  # False: random init (scratch)

    @property
    def fixed_prefix(self) -> bool:
        """True when the frozen prefix never changes during the run (what the activation cache needs)."""
        return self.unfreeze_every is None and self.unfreeze_at is None

    def plan(self, groups: tuple[str, ...]) -> RunPlan:
        """This policy on a model with these groups: checked once, consulted every epoch."""
        n = len(groups)
        if self.head_only:
            frozen = n - 1
        elif isinstance(self.frozen, str):
            if self.frozen not in groups:
                raise PolicyError(f"policy '{self.name}': no group '{self.frozen}'; groups: {', '.join(groups)}")
            frozen = groups.index(self.frozen) + 1
            if frozen == n:
                raise PolicyError(
                    f"policy '{self.name}': '{self.frozen}' is the head group, which always trains; "
                    "to train only the head use --policy feature-extract"
                )
        else:
            frozen = int(self.frozen)
            if not 0 <= frozen < n:
                raise PolicyError(
                    f"policy '{self.name}': can freeze 0 to {n - 1} of the {n} groups "
                    f"({', '.join(groups)}); the head always trains"
                )
        mults = tuple(self.lr_decay ** (n - 1 - i) if self.lr_decay else 1.0 for i in range(n))
        return RunPlan(self, groups, frozen, mults)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "checkpoint") -> Policy:
        """A stored policy (checkpoint or registry.toml table), with the legacy `frozen = "head"` read as head_only."""
        values = dict(data)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise PolicyError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_FIELDS))}"
            )
        if values.get("frozen") == LEGACY_HEAD_ONLY:
            values["frozen"], values["head_only"] = 0, True
        policy = cls(**values)
        policy.check(where)
        return policy

    def check(self, where: str = "") -> None:
        """Refuse values no run can use (also for policies from data and plugins)."""
        label = where or f"policy '{self.name}'"
        if isinstance(self.frozen, bool) or not isinstance(self.frozen, int | str):
            raise PolicyError(f"{label}: frozen must be a count or a group name")
        if isinstance(self.frozen, int) and self.frozen < 0:
            raise PolicyError(f"{label}: frozen must be >= 0")
        if self.lr_decay is not None and not (math.isfinite(self.lr_decay) and self.lr_decay > 0):
            raise PolicyError(f"{label}: the LR factor must be a finite number > 0, not {self.lr_decay}")
        for key in ("unfreeze_every", "unfreeze_at"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise PolicyError(f"{label}: {key} must be a whole number >= 1")


@dataclass(frozen=True)
class RunPlan:
    """A policy resolved against a model's groups: which groups train in each epoch, and their LR multipliers."""

    policy: Policy
    groups: tuple[str, ...]
    frozen: int  # leading groups frozen at epoch 0
    lr_mults: tuple[float, ...]  # per group, input to output

    @property
    def head_only(self) -> bool:
        return self.frozen == len(self.groups) - 1

    def frozen_at(self, epoch: int) -> int:
        """Leading groups frozen during `epoch` (0-based)."""
        p = self.policy
        if p.unfreeze_at is not None and epoch >= p.unfreeze_at:
            return 0
        if p.unfreeze_every:
            return max(0, self.frozen - epoch // p.unfreeze_every)
        return self.frozen

    def trainable(self, epoch: int) -> dict[str, bool]:
        """Group name -> trains in `epoch`."""
        k = self.frozen_at(epoch)
        return {name: i >= k for i, name in enumerate(self.groups)}

    def rows(self, epoch: int, base_lr: float) -> list[dict[str, Any]]:
        """One row per group for a plan table: name, trains, lr."""
        trains = self.trainable(epoch)
        return [
            {"group": name, "trains": trains[name], "lr": base_lr * mult if trains[name] else None}
            for name, mult in zip(self.groups, self.lr_mults, strict=True)
        ]


# the built-in policies in their command-line forms, with their help: the one list of their names, which
# `--policy`'s help, `zoo policies` and the unknown-policy error read (`builtin_policy` parses each form)
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
BUILTIN_NAMES = tuple(BUILTIN_HELP)
ALIASES = {"linear-probe": "feature-extract"}  # another name -> the built-in policy it is
_FIELDS = {f.name for f in dataclasses.fields(Policy)} - {"name"}


def builtin_names() -> list[str]:
    """The built-in policies' command-line forms, each followed by its other names (`linear-probe`)."""
    return [n for name in BUILTIN_NAMES for n in (name, *(a for a, target in ALIASES.items() if target == name))]


def _number(text: str, kind, policy: str, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise PolicyError(f"--policy {policy}: {what}") from None
    if kind is float and not math.isfinite(value):
        raise PolicyError(f"--policy {policy}: {what}")
    return value


def builtin_policy(text: str) -> Policy | None:
    """A built-in policy from its command-line form, or None when the name is not built in."""
    name, _, arg = text.partition(":")
    if ALIASES.get(name, name) == "feature-extract" and not arg:
        return Policy(text, BUILTIN_HELP["feature-extract"], head_only=True)
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
        return Policy(text, BUILTIN_HELP["cut:GROUP"], head_only=True, cut=arg)
    if name == "discriminative":
        factor = _number(arg or "", float, text, "needs a finite factor F > 0, e.g. discriminative:0.5")
        if factor <= 0:
            raise PolicyError(f"--policy {text}: the factor must be > 0")
        return Policy(text, BUILTIN_HELP["discriminative:F"], lr_decay=factor)
    if name == "gradual":
        every = _number(arg or "", int, text, "needs a whole number of epochs N >= 1, e.g. gradual:2")
        if every < 1:
            raise PolicyError(f"--policy {text}: N must be >= 1")
        return Policy(text, BUILTIN_HELP["gradual:N"], head_only=True, unfreeze_every=every)
    return None


def policy_from_data(name: str, data: dict[str, Any], where: str = "registry.toml") -> Policy:
    """A `[policies.NAME]` table as a Policy."""
    return Policy.from_dict({"name": name, **data}, where=f"{where} [policies.{name}]")


def parse_policy(text: str, registry=None) -> Policy:
    """The policy called `text`: built-in, from registry.toml, or from a plugin."""
    from zoo.catalogue.registry import get_registry

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
                f"plugin '{entry.source}': policy '{name}' returned {type(policy).__name__}, "
                f"not a zoo.catalogue.policies.Policy"
            )
        policy.check(f"plugin '{entry.source}', policy '{name}'")
        return policy
    known = [*builtin_names(), *sorted(tables), *sorted(registry.policies)]
    raise PolicyError(f"unknown policy '{text}'; choose from {', '.join(known)}")


def available_policies(registry=None) -> list[tuple[str, str, str]]:
    """(name, source, help) for every policy: built-ins, registry.toml, plugins."""
    from zoo.catalogue.registry import get_registry

    registry = registry or get_registry()
    rows = [(name, "built-in", text) for name, text in BUILTIN_HELP.items()]
    rows += [
        (name, "registry.toml", data.get("description", "")) for name, data in registry.data.get("policies", {}).items()
    ]
    rows += [(e.name, e.source, e.help) for e in registry.policies.values()]
    return rows
