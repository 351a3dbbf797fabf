"""Building a timm architecture on the meta device and probing it: its classifier, the order its forward reads
parameters in, the layout of each group's output, its smallest input, and what zoo's own cut sees of it.

- head: `pretrained_cfg['classifier']` (the first; the others are `aux_heads`), an nn.Linear or a 1x1 nn.Conv2d.
- layout: the tensors that cross each group boundary in zoo's own traced graph, shapes propagated on the meta
  device (NCHW, NHWC or NLC tokens).
- tracing: zoo's own cut (`zoo.model.cut.staged_graph`); where it fails, again with timm's tracing hints (its
  notrace modules and functions).
"""

from __future__ import annotations

import collections
import inspect

import timm
import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata
from torch.overrides import TorchFunctionMode

PROBE_SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
HINTS = "zoo_timm.build:trace_hints"


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


# ---------------------------------------------------------------- building


def build_meta(arch: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(arch, **kwargs).eval()


def heads_of(classifier: str | tuple[str, ...] | list[str] | None) -> list[str]:
    """The classifier paths a pretrained_cfg names (`classifier`: one path, several, or None), as a new list."""
    return [classifier] if isinstance(classifier, str) else list(classifier or ())


def check_head(model: nn.Module, path: str) -> str | None:
    """None when `path` is a Linear or a 1x1 Conv2d of the model; else why not."""
    try:
        mod = model.get_submodule(path)
    except AttributeError:
        return f"classifier '{path}' is not a module of the model"
    if isinstance(mod, nn.Linear):
        return None
    if isinstance(mod, nn.Conv2d) and tuple(mod.kernel_size) == (1, 1):
        return None
    return f"classifier '{path}' is {type(mod).__name__}"


def classifier_paths(model: nn.Module) -> list[str]:
    """Dotted paths of the Linear / 1x1 Conv layers behind `model.get_classifier()` (one, or a tuple of them)."""
    found = getattr(model, "get_classifier", lambda: None)()
    found = found if isinstance(found, (tuple, list)) else (found,)
    names = {id(m): n for n, m in model.named_modules()}
    paths = []
    for c in found:
        if not isinstance(c, nn.Module) or id(c) not in names:
            continue
        layers = (
            [c]
            if isinstance(c, (nn.Linear, nn.Conv2d))
            else [m for m in c.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        )
        if layers:
            paths.append(names[id(layers[-1])])
    return paths


def supports_kwarg(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(type(model).__init__).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- forward analysis


class ParamUse(TorchFunctionMode):
    """Records, for each parameter, the index of the first op that reads it."""

    def __init__(self, names: dict[int, str]):
        super().__init__()
        self.names = names
        self.first: dict[str, int] = {}
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in pytree.tree_leaves((args, kwargs)):
            if isinstance(a, torch.Tensor):
                name = self.names.get(id(a))
                if name is not None and name not in self.first:
                    self.first[name] = self.n
        self.n += 1
        return func(*args, **kwargs)


def layout_of(out, model_fmt: str | None) -> str:
    if isinstance(out, (tuple, list)):
        inner = [layout_of(o, model_fmt) for o in out if isinstance(o, torch.Tensor)]
        return "tuple(" + ",".join(inner) + ")"
    if not isinstance(out, torch.Tensor):
        return type(out).__name__
    s = tuple(out.shape)
    if len(s) == 3:
        return "NLC"
    if len(s) == 2:
        return "NC"
    if len(s) == 4:
        _, a, b, c = s
        if b == c and a != b:
            return "NCHW"
        if a == b and c != a:
            return "NHWC"
        return model_fmt if model_fmt in ("NCHW", "NHWC") else "NCHW?"
    return f"{len(s)}D"


def overall_layout(layouts: list[str]) -> tuple[str, list[str]]:
    """One features_layout for the spec: what matters to zoo is the layout of 4-D boundary tensors."""
    parts = [p for x in layouts for p in x.replace("tuple(", "").replace(")", "").replace("+", ",").split(",")]
    four = collections.Counter(p.rstrip("?") for p in parts if p in ("NCHW", "NHWC", "NCHW?"))
    if four:
        # the majority of 4-D boundaries; a spec has one features_layout (pvt_v2: NHWC stem, NCHW stages)
        best = "NHWC" if four["NHWC"] > four["NCHW"] else "NCHW"
        return best, ([f"group outputs mix NCHW and NHWC ({dict(four)})"] if len(four) > 1 else [])
    if "NLC" in parts:
        return "NLC", []
    return "NCHW", [f"no group output layout detected: {layouts}"]


def forward_probe(model: nn.Module, size: tuple[int, int], device) -> None:
    x = torch.zeros(2, 3, *size, device=device)
    with torch.no_grad():
        model(x)


def analyse_forward(model, members_by_group, size, device):
    """(param first-use index, {group index: output layout}) from one forward."""
    names = {id(p): n for n, p in model.named_parameters()}
    calls = []  # (group index, output)
    hooks = []
    modules = dict(model.named_modules())
    for gi, members in enumerate(members_by_group):
        for m in members:
            if m in modules:
                hooks.append(modules[m].register_forward_hook(lambda mod, i, o, gi=gi: calls.append((gi, o))))
    fmt = getattr(model, "output_fmt", None)
    fmt = fmt if isinstance(fmt, str) else None
    try:
        with ParamUse(names) as mode:
            forward_probe(model, size, device)
    finally:
        for h in hooks:
            h.remove()
    last = {}
    for gi, o in calls:
        last[gi] = o
    layouts = {gi: layout_of(o, fmt) for gi, o in last.items()}
    return mode.first, layouts


def min_size(model, size, device) -> int:
    for s in PROBE_SIZES:
        if s >= min(size):
            return min(size)
        try:
            forward_probe(model, (s, s), device)
            return s
        except Exception:
            continue
    return min(size)


# ---------------------------------------------------------------- tracing with zoo's own cut


def trace_cut(model, spec, groups, size, device, warn: list[str]) -> dict | None:
    """What zoo's cut sees: tensors crossing each boundary and their layout; None (and a warning) if it cannot."""
    from zoo.core.errors import CutError
    from zoo.model.cut import activations_crossing, staged_graph

    try:
        gm, stage = staged_graph(model, spec)
    except CutError as exc:
        warn.append(str(exc).split(": ", 1)[-1])
        return None
    occ = collections.Counter(stage[n] for n in gm.graph.nodes if n.op in ("call_module", "get_attr"))
    crossing = [activations_crossing(gm, stage, k) for k in range(1, len(groups))]
    fmt = getattr(model, "output_fmt", None)
    try:
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(gm).propagate(torch.zeros(2, 3, *size, device=device))
        seen = [
            "+".join(
                layout_of(torch.empty(n.meta["tensor_meta"].shape, device="meta"), fmt)
                if isinstance(n.meta.get("tensor_meta"), TensorMetadata)
                else "other"
                for n in nodes
            )
            for nodes in crossing
        ]
    except Exception as exc:
        seen = None
        warn.append(f"shape propagation on the traced graph fails: {short(exc)}")
    return {
        "cuts": [len(c) for c in crossing],
        "empty": [groups[i][0] for i in range(len(groups)) if not occ.get(i)],
        "boundary_layouts": seen,
    }
