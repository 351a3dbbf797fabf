"""Building a backbone: construct, load weights, replace the head, check the spec.

This is the one place that turns a `Backbone` spec into an `nn.Module`; the
fine-tuner, exporter and `zoo info` all come through `create_model`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.backbone import Backbone, Weights
from zoo.errors import InvalidBackbone, WeightsError
from zoo.registry import get_registry

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


def resolve_weights(spec: Backbone, weights: str | Path | None = "default") -> WeightsChoice:
    """Turn a `--weights` value into a choice: "default", "none", a tag, or a file path."""
    if weights is None or str(weights) == "default":
        default = get_registry().data.get("defaults", {}).get("weights", "default")
        if default == "none" or spec.default_weights is None:
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
    raise WeightsError(
        f"--weights {value}: not a file, and {spec.name} has no such tag; tags: {tags}; or 'none' for random init"
    )


def load_callable(target: str | Callable[..., Any], spec: Backbone) -> Callable[..., Any]:
    if callable(target):
        return target
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidBackbone(
            f"plugin '{spec.source}', backbone '{spec.name}': cannot load builder "
            f"'{target}': {type(exc).__name__}: {exc}"
        ) from None


def create_model(
    spec: Backbone | str, num_classes: int | None = None, weights: str | Path | None = "default", check: bool = True
):
    """Build `spec` with its weights, replace its head for `num_classes`, check its groups.

    Example:
        >>> model = create_model("resnet18", num_classes=2, weights="none")
        >>> model.fc
        Linear(in_features=512, out_features=2, bias=True)
    """
    from zoo.weights import load_into, load_state_dict

    if isinstance(spec, str):
        spec = get_registry().get(spec)
    choice = weights if isinstance(weights, WeightsChoice) else resolve_weights(spec, weights)
    model = load_callable(spec.build, spec)(spec, weights=choice.tag, **dict(spec.build_kwargs))
    if choice.path is not None:
        load_into(model, load_state_dict(choice.path), spec, f"--weights {choice.path}")
    if num_classes is not None:
        replace_head(model, spec, num_classes)
    if check:
        check_groups(model, spec)
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
                raise InvalidBackbone(
                    f"plugin '{spec.source}', backbone '{spec.name}': head '{path}' is not a module of the model"
                ) from None
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
            f"plugin '{spec.source}', backbone '{spec.name}': head '{spec.head}' is "
            f"{type(old).__name__}; zoo replaces a Linear or a 1x1 Conv2d"
        )
    p = next(old.parameters())
    return new.to(device=p.device, dtype=p.dtype)


def _set_submodule(model, path: str, module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _optional(spec: Backbone, member: str) -> bool:
    """Members that belong to auxiliary heads may be absent (a builder can leave them out)."""
    return any(aux == member or aux.startswith(member + ".") or member.startswith(aux + ".") for aux in spec.aux_heads)


def group_of_params(model, spec: Backbone) -> dict[str, list[tuple[str, Any]]]:
    """Each group's (name, parameter) pairs, after checking that the groups partition the model."""
    check_groups(model, spec)
    return _assign(model, spec)


def _assign(model, spec: Backbone) -> dict[str, list[tuple[str, Any]]]:
    out: dict[str, list[tuple[str, Any]]] = {g.name: [] for g in spec.groups}
    for name, param in model.named_parameters():
        for group in spec.groups:
            if group.matches(name):
                out[group.name].append((name, param))
                break
    return out


def check_groups(model, spec: Backbone) -> None:
    """Raise InvalidBackbone unless the head resolves and every parameter is in exactly one group."""
    where = f"plugin '{spec.source}', backbone '{spec.name}'"
    try:
        model.get_submodule(spec.head)
    except AttributeError:
        raise InvalidBackbone(f"{where}: head '{spec.head}' is not a module of the model") from None
    names = dict(model.named_modules())
    params = dict(model.named_parameters())
    for group in spec.groups:
        for member in group.members:
            if member.startswith("re:") or member in names or member in params or _optional(spec, member):
                continue
            raise InvalidBackbone(f"{where}: group '{group.name}' names '{member}', which is not in the model")
    for name in params:
        owners = [g.name for g in spec.groups if g.matches(name)]
        if len(owners) != 1:
            what = "no group" if not owners else f"{len(owners)} groups ({', '.join(owners)})"
            raise InvalidBackbone(
                f"{where}: parameter '{name}' belongs to {what}; every parameter must belong to exactly one group"
            )
    for name in dict(model.get_submodule(spec.head).named_parameters()):
        full = f"{spec.head}.{name}"
        if not spec.groups[-1].matches(full):
            raise InvalidBackbone(f"{where}: head parameter '{full}' is not in the last group")
    empty = [g.name for g in spec.groups if not any(g.matches(n) for n in params)]
    if empty:
        raise InvalidBackbone(f"{where}: group(s) {', '.join(empty)} hold no parameters")


def group_param_counts(model, spec: Backbone) -> dict[str, int]:
    """Number of parameters in each group, in group order."""
    return {name: sum(p.numel() for _, p in pairs) for name, pairs in group_of_params(model, spec).items()}


def on_meta_device(fn: Callable[[], Any]):
    """Call a model constructor on the meta device (no memory, no init); on the CPU if it cannot run there.

    A few builders compute layer widths with tensor ops and `.tolist()` (RegNet),
    which the meta device cannot do.
    """
    import torch

    try:
        with torch.device("meta"):
            return fn()
    except NotImplementedError:
        return fn()


def build_for_inspection(spec: Backbone, num_classes: int | None = None):
    """The architecture without weights, on the meta device where it can be: shapes and names only."""
    return on_meta_device(lambda: create_model(spec, num_classes=num_classes, weights="none"))
