"""ONNX -> torch with onnx2torch, and the proof that the conversion is right.

A converter can be silently wrong, so a model that merely converts proves
nothing: `compare` runs the original file in onnxruntime and the converted
module in torch on the same inputs, at batch 1 and at batch N, and
`first_divergence` walks both graphs node by node to name where they part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import fx, nn

from zoo.core.check import CheckResult, compare_outputs
from zoo.core.errors import ConversionError
from zoo_onnx import converters
from zoo_onnx.graph import Prepared


def unsupported_ops(prepared: Prepared) -> list[str]:
    """'Op (opset N)' for every op that has no onnx2torch converter, even after zoo's own."""
    from onnx2torch.node_converters.registry import get_converter

    converters.register()
    opsets = {o.domain or "": o.version for o in prepared.model.opset_import}
    missing = []
    for node in prepared.model.graph.node:
        domain = node.domain or ""
        version = opsets.get(domain, opsets.get("ai.onnx", 1)) if domain else opsets.get("", 1)
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except NotImplementedError:
            label = f"{node.op_type} (opset {version}{', domain ' + domain if domain else ''})"
            if label not in missing:
                missing.append(label)
    return missing


def to_torch(prepared: Prepared, where: str) -> fx.GraphModule:
    """The normalised graph as a torch module that takes NCHW input, whatever the file's layout."""
    from onnx2torch import convert

    if missing := unsupported_ops(prepared):
        raise ConversionError(
            f"{where}: no onnx2torch converter for {', '.join(missing)}; add one with "
            "onnx2torch.node_converters.add_converter(operation_type=..., version=...) in a plugin "
            "(docs/plugins.md, 'ONNX op converters')"
        )
    try:
        gm = convert(prepared.model)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ConversionError(
            f"{where}: onnx2torch cannot convert it ({type(exc).__name__}: {(text[0] if text else '')[:200]})"
        ) from None
    linear_matmuls(gm)
    constant_reshapes(gm)
    if prepared.layout == "NHWC":
        placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
        with gm.graph.inserting_after(placeholder):
            permuted = gm.graph.call_method("permute", (placeholder, 0, 2, 3, 1))
        placeholder.replace_all_uses_with(permuted, delete_user_cb=lambda user: user is not permuted)
        gm.recompile()
    return gm


def linear_matmuls(gm: fx.GraphModule) -> int:
    """MatMul(x, constant W) [+ constant b] -> nn.Linear, so the weights train (onnx2torch keeps them as buffers)."""
    from onnx2torch.node_converters.matmul import OnnxMatMul

    def constant(node):
        if isinstance(node, fx.Node) and node.op == "get_attr":
            value = gm.get_buffer(node.target)
            return value if value.is_floating_point() else None
        return None

    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), OnnxMatMul):
            continue
        weight = constant(node.args[1])
        if weight is None or weight.dim() != 2:
            continue
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
        linear.weight.data = weight.t().contiguous().clone()
        users = list(node.users)
        add = users[0] if len(users) == 1 else None
        if (
            add is not None
            and add.op == "call_module"
            and type(gm.get_submodule(add.target)).__name__ == "OnnxBinaryMathOperation"
        ):
            other = add.args[1] if add.args[0] is node else add.args[0]
            bias = constant(other)
            if (
                bias is not None
                and bias.shape == (weight.shape[1],)
                and getattr(gm.get_submodule(add.target), "math_op_function", None) is torch.add
            ):
                linear.bias = nn.Parameter(bias.clone())
                add.replace_all_uses_with(node)
                gm.graph.erase_node(add)
        gm.add_submodule(node.target, linear)
        node.args = (node.args[0],)
        changed += 1
    return _recompiled(gm, changed)


class ConstantReshape(nn.Module):
    """ONNX Reshape with a constant shape (0 copies the input's size there), without data-dependent branches,
    so torch.export (the dynamo ONNX exporter) can trace it; onnx2torch's branches on the shape's values."""

    def __init__(self, shape: list[int]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(self.shape)])


class ConstantSlice(nn.Module):
    """ONNX Slice with constant starts/ends/axes/steps, precomputed (onnx2torch's reads them with .numpy())."""

    def __init__(self, *constants):
        from onnx2torch.node_converters.slice import _get_slices

        super().__init__()
        self.slices = _get_slices(*constants, *[None] * (4 - len(constants)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from onnx2torch.node_converters.slice import _do_slice

        return _do_slice(x, *self.slices)


def constant_reshapes(gm: fx.GraphModule) -> int:
    """Swap onnx2torch's Reshape and Slice for modules that torch.export can trace, where their
    shape/start/end inputs are constant buffers (the dynamo exporter then works on imported models)."""
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.slice import OnnxSlice

    def constant(arg):
        return isinstance(arg, fx.Node) and arg.op == "get_attr"

    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.kwargs or not all(constant(a) for a in node.args[1:]):
            continue
        module = gm.get_submodule(node.target)
        values = [gm.get_buffer(a.target) for a in node.args[1:]]
        if isinstance(module, OnnxReshape) and len(values) == 1:
            gm.add_submodule(node.target, ConstantReshape([int(v) for v in values[0].tolist()]))
        elif isinstance(module, OnnxSlice) and values:
            gm.add_submodule(node.target, ConstantSlice(*values))
        else:
            continue
        node.args = (node.args[0],)
        changed += 1
    return _recompiled(gm, changed)


def _recompiled(gm: fx.GraphModule, changed: int) -> int:
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return changed


def reinitialise(model: nn.Module) -> None:
    """Random init for every layer that knows how (for --weights none / scratch)."""
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def parametric_nodes(gm: nn.Module) -> set[str]:
    """Names of the top-level modules (= ONNX nodes) that hold parameters."""
    return {name for name, module in gm.named_children() if any(True for _ in module.parameters())}


def to_file_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


def _activation(x: np.ndarray, op: str | None) -> np.ndarray:
    """Put back the output activation `prepare` removed, to compare with the original file."""
    if op is None:
        return x
    shifted = x - x.max(axis=-1, keepdims=True)
    log = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return log if op == "LogSoftmax" else np.exp(log)


def run_original(session, prepared: Prepared, x: np.ndarray) -> np.ndarray:
    """The original file's output on NCHW inputs `x`: one image at a time where it fixes the batch at 1."""
    name = session.get_inputs()[0].name
    data = to_file_layout(x, prepared.layout)
    if prepared.batch_fixed:
        return np.concatenate([session.run(None, {name: data[i : i + 1]})[0] for i in range(len(data))])
    return session.run(None, {name: data})[0]


def compare(
    gm: nn.Module, session, prepared: Prepared, images: np.ndarray, batch_sizes: tuple[int, ...], atol: float
) -> list[CheckResult]:
    """The converted module against onnxruntime on the original file, at each batch size."""
    rows = []
    for b in batch_sizes:
        x = images[:b]
        with torch.no_grad():
            got = gm.eval()(torch.from_numpy(x)).float().numpy()
        got = _activation(got, prepared.dropped)
        ref = run_original(session, prepared, x)
        if ref.size == got.size:  # e.g. an original output of (N, K, 1, 1)
            ref = ref.reshape(got.shape)
        row = compare_outputs(ref, got, atol, batch=len(x), reference_is="onnxruntime")
        if got.shape == ref.shape and row.top1_agreement < 1.0:  # an import must agree on every image
            row.failures.append(f"top-1 agreement {row.top1_agreement:.0%}")
        rows.append(row)
    return rows


@dataclass
class Divergence:
    node: str
    op_type: str
    max_abs_diff: float
    tolerance: float

    def __str__(self) -> str:
        return (
            f"first diverging node: {self.op_type} '{self.node}' "
            f"(max abs diff {self.max_abs_diff:.3g} > {self.tolerance:.3g})"
        )


def first_divergence(gm: fx.GraphModule, prepared: Prepared, x: np.ndarray, atol: float) -> Divergence | None:
    """Run the normalised graph in onnxruntime with every node output exposed, and torch node by node."""
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(prepared.model.SerializeToString())
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        return None
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(None, {session.get_inputs()[0].name: to_file_layout(x, prepared.layout)})
    ref = dict(zip(names, outputs, strict=True))

    got: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def call_module(self, target, args, kwargs):
            out = super().call_module(target, args, kwargs)
            got[str(target)] = out
            return out

    with torch.no_grad():
        Recorder(gm.eval()).run(torch.from_numpy(x))
    for node in prepared.model.graph.node:
        mine = got.get(node.name)
        theirs = ref.get(node.output[0])
        if isinstance(mine, (tuple, list)):
            mine = mine[0]
        if not isinstance(mine, torch.Tensor) or theirs is None or tuple(mine.shape) != tuple(theirs.shape):
            continue
        if not np.issubdtype(theirs.dtype, np.floating):
            continue
        diff = float(np.abs(mine.float().numpy() - theirs).max())
        allowed = atol * max(1.0, float(np.abs(theirs).max()))
        if not np.isfinite(diff) or diff > allowed:
            return Divergence(node.name, node.op_type, diff, allowed)
    return None
