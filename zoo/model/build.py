"""Building a backbone: construct, load weights, replace the head; and the one parameter -> group map.

This is the one place that turns a `Backbone` spec into an `nn.Module`; the
fine-tuner, exporter and `zoo info` all come through `create_model`. `GroupMap`
says which layer group every parameter and module belongs to: the freeze
policies, the optimizer, the graph cut and the checks all ask it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.catalogue.backbone import Backbone, Weights, load_callable
from zoo.catalogue.registry import get_registry
from zoo.core.errors import InvalidBackbone, UsageError, WeightsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsChoice:
    """What `--weights` resolved to: a registered tag, a local file, or random init."""

    tag: Weights | None = None
    path: Path | None = None

    @property
    def label(self) -> str:
        if self.tag:
            return self.tag.tag
        return str(self.path) if self.path else "none"

    @property
    def pretrained(self) -> bool:
        return self.tag is not None or self.path is not None


def choose_weights(spec: Backbone, weights: str | Path | None = "default") -> WeightsChoice:
    """Turn a `--weights` value into a choice: "default", "none", a tag, or a file path.

    "default" is the spec's default tag, as the registry left it (`[defaults] weights = "none"` clears it).
    """
    if weights is None or str(weights) == "default":
        if spec.default_weights is None:
            return WeightsChoice()
        return WeightsChoice(tag=spec.get_weights(spec.default_weights))
    value = str(weights)
    if value.lower() in ("none", "random", "scratch"):
        return WeightsChoice()
    if tag := spec.get_weights(value):
        return WeightsChoice(tag=tag)
    path = Path(value).expanduser()
    if path.exists() or "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors")):
        if not path.is_file():
            raise WeightsError(f"--weights {value}: no such file")
        return WeightsChoice(path=path)
    tags = ", ".join(w.tag for w in spec.weights) or "(none registered)"
    raise UsageError(
        f"--weights {value}: not a file, and {spec.name} has no such tag; tags: {tags}; or 'none' for random init"
    )


def create_model(
    spec: Backbone | str,
    num_classes: int | None = None,
    weights: str | Path | WeightsChoice | None = "default",
    check: bool = True,
):
    """Build `spec` with its weights, replace its head for `num_classes`, check its groups.

    Example:
        >>> model = create_model("resnet18", num_classes=2, weights="none")
        >>> model.fc
        Linear(in_features=512, out_features=2, bias=True)
    """
    from zoo.catalogue.weights import load_into, load_state_dict

    if isinstance(spec, str):
        spec = get_registry().get(spec)
    choice = weights if isinstance(weights, WeightsChoice) else choose_weights(spec, weights)
    model = load_callable(spec.build, spec)(spec, weights=choice.tag, **dict(spec.build_kwargs))
    if choice.path is not None:
        load_into(model, load_state_dict(choice.path), spec, f"--weights {choice.path}")
    if num_classes is not None:
        replace_head(model, spec, num_classes)
    if check:
        GroupMap(model, spec)
    return model


def split_outputs(out):
    """(logits, [auxiliary logits]) from a model's output: a tensor, or Inception/GoogLeNet's named tuples."""
    import torch

    if isinstance(out, torch.Tensor):
        return out, []
    items = [o for o in out if isinstance(o, torch.Tensor)]
    return items[0], items[1:]


def replace_head(model, spec: Backbone, num_classes: int) -> None:
    """Swap the classifier (and any auxiliary ones) for fresh layers with `num_classes` outputs."""
    if num_classes < 1:
        raise ValueError("num_classes must be positive")
    for path in (spec.head, *spec.aux_heads):
        try:
            old = model.get_submodule(path)
        except AttributeError:
            if path == spec.head:
                raise InvalidBackbone(f"{spec.where}: head '{path}' is not a module of the model") from None
            continue  # an auxiliary head the weights' builder left out
        _set_submodule(model, path, new_head(old, num_classes, spec))


def new_head(old, num_classes: int, spec: Backbone):
    """A freshly initialised layer like `old`, with `num_classes` outputs."""
    import torch.nn as nn

    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1):
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1, bias=old.bias is not None)
    else:
        raise InvalidBackbone(
            f"{spec.where}: head '{spec.head}' is {type(old).__name__}; zoo replaces a Linear or a 1x1 Conv2d"
        )
    p = next(old.parameters())
    return new.to(device=p.device, dtype=p.dtype)


def head_size(model, spec: Backbone) -> int:
    """How many outputs the head has."""
    head = model.get_submodule(spec.head)
    return getattr(head, "out_features", None) or head.out_channels


def _set_submodule(model, path: str, module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


class GroupMap:
    """Which layer group each parameter and module of a built model belongs to: computed once, checked once.

    Raises InvalidBackbone (naming the plugin) unless the head resolves, every group member
    exists, every parameter is in exactly one group, the head's parameters are in the last
    group and no group is empty.
    """

    def __init__(self, model, spec: Backbone):
        self.spec = spec
        self.names = spec.group_names
        where = spec.where
        try:
            model.get_submodule(spec.head)
        except AttributeError:
            raise InvalidBackbone(f"{where}: head '{spec.head}' is not a module of the model") from None
        modules = dict(model.named_modules())
        params = dict(model.named_parameters())
        for group in spec.groups:
            for member in group.members:
                if member.startswith("re:") or member in modules or member in params or _optional(spec, member):
                    continue
                raise InvalidBackbone(f"{where}: group '{group.name}' names '{member}', which is not in the model")
        self.params: dict[str, list[tuple[str, Any]]] = {g: [] for g in self.names}
        self._of_param: dict[str, str] = {}
        for name, param in params.items():
            owners = [g.name for g in spec.groups if g.matches(name)]
            if len(owners) != 1:
                what = "no group" if not owners else f"{len(owners)} groups ({', '.join(owners)})"
                raise InvalidBackbone(
                    f"{where}: parameter '{name}' belongs to {what}; every parameter must belong to exactly one group"
                )
            self._of_param[name] = owners[0]
            self.params[owners[0]].append((name, param))
        for name in dict(model.get_submodule(spec.head).named_parameters()):
            if self._of_param[f"{spec.head}.{name}"] != self.names[-1]:
                raise InvalidBackbone(f"{where}: head parameter '{spec.head}.{name}' is not in the last group")
        empty = [g for g, members in self.params.items() if not members]
        if empty:
            raise InvalidBackbone(f"{where}: group(s) {', '.join(empty)} hold no parameters")
        # a module belongs to the group of all its parameters (None when they span groups)
        self._of_module: dict[str, str | None] = {}
        for name, group in self._of_param.items():
            parts = name.split(".")[:-1]
            for i in range(len(parts) + 1):
                path = ".".join(parts[:i])
                seen = self._of_module.get(path, group)
                self._of_module[path] = group if seen == group else None

    def of_param(self, name: str) -> str:
        return self._of_param[name]

    def of_module(self, path: str) -> str | None:
        """The group of a module (or of a parameter or buffer by its path); None when it spans several groups."""
        if path in self._of_param:
            return self._of_param[path]
        if path in self._of_module:
            return self._of_module[path]
        parent = path.rpartition(".")[0]  # a buffer: its module's group
        if parent in self._of_module:
            return self._of_module[parent]
        for group in self.spec.groups:  # a module without parameters, inside a member
            if group.matches(path):
                return group.name
        return None

    def index(self, group: str | None) -> int | None:
        return None if group is None else self.names.index(group)

    def counts(self) -> dict[str, int]:
        """Number of parameters in each group, in group order."""
        return {name: sum(p.numel() for _, p in pairs) for name, pairs in self.params.items()}


def _optional(spec: Backbone, member: str) -> bool:
    """Members that belong to auxiliary heads may be absent (a builder can leave them out)."""
    return any(aux == member or aux.startswith(member + ".") or member.startswith(aux + ".") for aux in spec.aux_heads)


def check_groups(model, spec: Backbone) -> GroupMap:
    """Raise InvalidBackbone unless the head resolves and every parameter is in exactly one group."""
    return GroupMap(model, spec)


def on_meta_device(fn: Callable[[], Any]):
    """Call a model constructor on the meta device (no memory, no init); on the CPU if it cannot run there.

    A few builders compute layer widths with tensor ops and `.tolist()` (RegNet),
    which the meta device cannot do.
    """
    import torch

    try:
        with torch.device("meta"):
            return fn()
    except (NotImplementedError, RuntimeError):
        return fn()


def build_for_inspection(spec: Backbone, num_classes: int | None = None):
    """The architecture without weights, on the meta device where it can be: shapes and names only."""
    return on_meta_device(lambda: create_model(spec, num_classes=num_classes, weights="none"))
