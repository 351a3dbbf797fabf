"""Cutting a model at a layer-group boundary, for any backbone, with torch.fx.

The model is traced with its group members as leaf modules, and every node of
the graph gets the index of the last group it depends on (from the model's
`GroupMap`). That order is all the fine-tuner needs:

- `cut_at(model, spec, k)` gives a prefix (groups 0..k-1) and a suffix (the rest):
  the frozen-prefix cache runs the prefix once and trains the suffix.
- `cut_model(model, spec, group, num_classes)` keeps the graph up to `group`, pools it
  and puts a new linear head on top (`--policy cut:GROUP`).

Python control flow in the top-level `forward` is fixed at tracing time (traced
in eval mode, so auxiliary-head branches are left out); code inside the group
modules runs as usual.
"""

from __future__ import annotations

import dataclasses
import inspect
import operator

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.split_module import split_module

from zoo.catalogue.backbone import Backbone, Group
from zoo.core.errors import CutError
from zoo.model.build import GroupMap


class _GroupTracer(fx.Tracer):
    """Group members, and the module classes a plugin names in its trace hints, are leaves."""

    def __init__(self, leaves: set[str], leaf_classes: tuple[type, ...] = (), autowrap_functions: tuple = ()):
        super().__init__(autowrap_functions=autowrap_functions)
        self.leaves, self.leaf_classes = leaves, leaf_classes

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaves or (self.leaf_classes and isinstance(m, self.leaf_classes)):
            return True
        if isinstance(m, Pool):  # a cut model's pooling (`cut_model`) branches on the input's rank: never traced into
            return True
        return super().is_leaf_module(m, qualname)


def _tracer(spec: Backbone) -> _GroupTracer:
    leaves = {m for g in spec.groups for m in g.members if not m.startswith("re:")}
    if not spec.trace_hints:
        return _GroupTracer(leaves)
    from zoo.catalogue.backbone import load_callable

    hints = load_callable(spec.trace_hints, spec)()
    return _GroupTracer(leaves, tuple(hints.get("leaf_modules", ())), tuple(hints.get("autowrap_functions", ())))


def _concrete_args(model: nn.Module) -> dict:
    """The defaults of `forward`'s optional arguments after the input (ViT's `attn_mask=None`): traced as constants,
    not as graph inputs the cut would have to carry."""
    params = list(inspect.signature(type(model).forward).parameters.values())[2:]  # self, the input
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params if p.kind in kinds and p.default is not inspect.Parameter.empty}


def _drop_constant_inputs(graph: fx.Graph) -> None:
    """Remove the placeholders of constant arguments and the guards fx adds for them, when nothing else uses them."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    derived = set(placeholders[1:])
    for node in graph.nodes:
        if node.op not in ("placeholder", "output") and node.all_input_nodes:
            if all(a in derived for a in node.all_input_nodes):
                derived.add(node)
    if any(u not in derived for n in derived for u in n.users):
        return  # a constant feeds the computation: leave the graph as traced
    for node in reversed(list(graph.nodes)):
        if node in derived:
            graph.erase_node(node)


def staged_graph(
    model: nn.Module, spec: Backbone, groups: GroupMap | None = None
) -> tuple[fx.GraphModule, dict[fx.Node, int]]:
    """The traced model and, for each node, the highest group index it depends on."""
    groups = groups or GroupMap(model, spec)
    was_training = model.training
    model.eval()
    try:
        graph = _tracer(spec).trace(model, concrete_args=_concrete_args(model) or None)
        _drop_constant_inputs(graph)
    except Exception as exc:
        raise CutError(
            f"{spec.name}: cannot trace the model with torch.fx ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]})"
        ) from None
    finally:
        model.train(was_training)
    gm = fx.GraphModule(model, graph)
    stage: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        s = max((stage[a] for a in node.all_input_nodes), default=0)
        if (
            node.op in ("call_module", "get_attr")
            and (g := groups.index(groups.of_module(str(node.target)))) is not None
        ):
            s = max(s, g)
        stage[node] = s
    return gm, stage


def _is_batch_size(node: fx.Node) -> bool:
    """`x.size(0)` or `x.shape[0]`: a value the suffix can recompute from any activation."""
    if node.op == "call_method" and node.target == "size" and node.args[1:] == (0,):
        return True
    return (
        node.op == "call_function"
        and node.target is operator.getitem
        and node.args[1] == 0
        and isinstance(node.args[0], fx.Node)
        and node.args[0].op == "call_function"
        and node.args[0].target is getattr
        and node.args[0].args[1] == "shape"
    )


def activations_crossing(gm: fx.GraphModule, stage: dict[fx.Node, int], k: int) -> list[fx.Node]:
    """Activations computed before group k and used from group k on (not parameters, not batch sizes)."""
    return [
        n
        for n in gm.graph.nodes
        if n.op not in ("get_attr", "output")
        and stage[n] < k
        and not _is_batch_size(n)
        and any(stage[u] >= k for u in n.users)
    ]


class _Part(nn.Module):
    """One side of a split model. It runs nodes of the split graph; the parameters stay the model's own.

    The split graph is held as a plain reference, not a submodule: the original model owns
    (and moves, and saves) every parameter, so training the suffix trains the model.
    """

    def __init__(self, top: fx.GraphModule, nodes: list[fx.Node], own: bool = False):
        super().__init__()
        if own:  # registered: .eval() reaches the model's modules, and exporters see its parameters
            self.top = top
        self.__dict__["_top"] = top
        self._nodes = nodes

    def _run(self, env: dict) -> dict:
        top = self.__dict__["_top"]
        for node in self._nodes:
            if node.op == "get_attr":
                env[node] = _get_attr(top, str(node.target))
                continue
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            if node.op == "call_module":
                env[node] = top.get_submodule(str(node.target))(*args, **kwargs)
            elif node.op == "call_function":
                env[node] = node.target(*args, **kwargs)
            elif node.op == "call_method":
                env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
        return env


class Prefix(_Part):
    """Computes the frozen groups; returns the activations the suffix needs, in order."""

    def __init__(self, top: fx.GraphModule, nodes: list[fx.Node], placeholder: fx.Node, wires: list[fx.Node]):
        super().__init__(top, nodes, own=True)
        self._placeholder = placeholder
        self._wires = wires

    def forward(self, x):
        env = self._run({self._placeholder: x})
        return tuple(env[n] for n in self._wires)


class Suffix(_Part):
    """Computes the rest of the model from the prefix's activations.

    It does not own the model's modules: train/eval modes are set on the model itself.
    """

    def __init__(
        self, top: fx.GraphModule, nodes: list[fx.Node], wires: list[fx.Node], sizes: list[fx.Node], result: fx.Node
    ):
        super().__init__(top, nodes)
        self._wires = wires
        self._sizes = sizes
        self._result = result

    def forward(self, *activations):
        env = dict(zip(self._wires, activations, strict=True))
        env.update((n, activations[0].size(0)) for n in self._sizes)
        env = self._run(env)
        return fx.node.map_arg(self._result, lambda n: env[n])


def cut_at(model: nn.Module, spec: Backbone, k: int, groups: GroupMap | None = None) -> tuple[Prefix, Suffix]:
    """(prefix, suffix): prefix(x) computes groups 0..k-1; suffix(*prefix(x)) equals model(x) in eval mode.

    Both use the model's own parameters; nothing is copied.
    """
    if not 0 < k < len(spec.groups):
        raise CutError(f"{spec.name}: can cut after 1 to {len(spec.groups) - 1} groups, not {k}")
    gm, stage = staged_graph(model, spec, groups)
    if not any(stage[n] >= k for n in gm.graph.nodes if n.op != "output"):
        raise CutError(f"{spec.name}: nothing to train after group {k}")
    top = split_module(gm, model, lambda node: 0 if stage[node] < k else 1)
    if not hasattr(top, "submod_0") or not hasattr(top, "submod_1"):
        raise CutError(f"{spec.name}: the graph does not divide after group '{spec.groups[k - 1].name}'")
    nodes = list(top.graph.nodes)
    cut = next(i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == "submod_1")
    before = [n for n in nodes[:cut] if n.op != "placeholder"]
    # what crosses the boundary: values computed before submod_1 and used from it on (not parameters)
    later = nodes[cut:]
    crossing = [n for n in nodes[:cut] if n.op != "get_attr" and any(u in later for u in n.users)]
    # split_module keeps node names: map each crossing value back to the traced node that made it
    traced = {n.name: n for n in gm.graph.nodes}
    sub_out = next(n for n in top.submod_0.graph.nodes if n.op == "output").args[0]
    sub_out = sub_out if isinstance(sub_out, tuple | list) else (sub_out,)

    def origin(node: fx.Node) -> fx.Node:
        if node.op == "call_module" and node.target == "submod_0":
            return traced.get(sub_out[0].name, node)
        if node.op == "call_function" and node.target is operator.getitem and node.args[0].target == "submod_0":
            return traced.get(sub_out[node.args[1]].name, node)
        return node

    wires = [n for n in crossing if not _is_batch_size(origin(n))]
    sizes = [n for n in crossing if _is_batch_size(origin(n))]
    if not wires:
        raise CutError(f"{spec.name}: no activation crosses the boundary after group '{spec.groups[k - 1].name}'")
    placeholder = next(n for n in nodes if n.op == "placeholder")
    prefix_nodes = [n for n in before if n.op != "get_attr" or any(u in nodes[:cut] for u in n.users)]
    suffix_nodes = [n for n in nodes[:cut] if n.op == "get_attr" and any(u in later for u in n.users)]
    suffix_nodes += [n for n in later if n.op != "output"]
    output = nodes[-1]
    return (Prefix(top, prefix_nodes, placeholder, wires), Suffix(top, suffix_nodes, wires, sizes, output.args[0]))


class Pool(nn.Module):
    """Global average pooling for a given feature layout, then flatten."""

    def __init__(self, layout: str):
        super().__init__()
        self.layout = layout

    def forward(self, x):
        if x.dim() == 2:
            return x
        if x.dim() == 3:  # (N, tokens, C)
            return x.mean(dim=1)
        dims = (1, 2) if self.layout == "NHWC" else (2, 3)
        return x.mean(dim=dims)


def cut_model(model: nn.Module, spec: Backbone, group: str, num_classes: int) -> tuple[nn.Module, Backbone]:
    """The model up to and including `group`, pooled, with a new linear head; and the matching spec."""
    from zoo.core.errors import PolicyError

    names = spec.group_names
    if group not in names[:-1]:
        raise PolicyError(f"--policy cut:{group}: no such group before the head; groups: {', '.join(names)}")
    k = names.index(group) + 1
    gm, stage = staged_graph(model, spec)
    boundary = activations_crossing(gm, stage, k)
    if len(boundary) != 1:
        raise CutError(f"{spec.name}: the output of group '{group}' is not a single tensor; cannot cut there")
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "output" or stage[node] >= k:
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    pooled = graph.call_module("zoo_pool", (env[boundary[0]],))
    graph.output(graph.call_module(spec.head, (pooled,)))
    with torch.no_grad():
        probe = fx.GraphModule(gm, _truncate(gm, stage, k, boundary[0]))
        device = next(model.parameters()).device
        x = torch.zeros(1, spec.preprocess.channels, *spec.preprocess.input_size, device=device)
        value = probe.eval()(x)
        if not isinstance(value, torch.Tensor) or value.dim() not in (2, 3, 4):
            raise CutError(
                f"{spec.name}: the output of group '{group}' is a {type(value).__name__}, not one feature tensor; "
                "cannot put a head on it"
            )
        feats = Pool(spec.features_layout)(value)
    root = nn.Module()
    for node in graph.nodes:
        if node.op == "call_module" and node.target not in ("zoo_pool", spec.head):
            _install(root, node.target, gm.get_submodule(node.target))
        elif node.op == "get_attr":
            _install(root, node.target, _get_attr(gm, node.target))
    root.zoo_pool = Pool(spec.features_layout)
    _install(root, spec.head, nn.Linear(feats.shape[1], num_classes).to(device))
    cut = fx.GraphModule(root, graph)
    new_spec = dataclasses.replace(spec, groups=(*spec.groups[:k], Group("head", (spec.head,))), aux_heads=())
    return cut, new_spec


def _truncate(gm: fx.GraphModule, stage: dict, k: int, boundary: fx.Node) -> fx.Graph:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op != "output" and stage[node] < k:
            env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(env[boundary])
    return graph


def _get_attr(module: nn.Module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def _install(root: nn.Module, target: str, value) -> None:
    *parents, leaf = target.split(".")
    node = root
    for part in parents:
        if not hasattr(node, part):
            node.add_module(part, nn.Module())
        node = getattr(node, part)
    if isinstance(value, nn.Module):
        node.add_module(leaf, value)
    elif isinstance(value, nn.Parameter):
        node.register_parameter(leaf, value)
    else:
        node.register_buffer(leaf, value)
