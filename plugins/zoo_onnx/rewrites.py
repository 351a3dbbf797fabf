"""The graph rewrites `zoo_onnx.graph.prepare` makes, with `onnx` and numpy only (and the graph helpers they share).

- node names become unique Python identifiers (they name the torch modules);
- constant subgraphs (e.g. a Reshape of a weight) are folded with onnx's reference evaluator, and so are shape
  computations on fixed dimensions;
- `auto_pad=SAME_*` becomes explicit pads (onnx2torch has no auto_pad);
- a bias added after a Conv or MatMul is fused into a Conv bias or a Gemm, so it trains;
- Reshape shapes that pinned the batch to 1 copy it instead;
- a trailing Softmax/LogSoftmax is removed: zoo trains on logits.

Each rewrite changes the graph in place and returns how much it changed.
"""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def rename_nodes(graph: onnx.GraphProto) -> dict[str, str]:
    """Unique identifier names for every node: they become torch module names.

    Names that a torch module already has as an attribute ("half", "train", "graph", ...) get the op type in front.
    """
    import torch.fx

    reserved = set(dir(torch.fx.GraphModule)) | {"initializers", "training"}
    used: set[str] = set()
    renamed = {}
    for node in graph.node:
        base = re.sub(r"\W+", "_", node.name or node.op_type).strip("_") or node.op_type
        if not base[0].isalpha() or base in reserved:
            base = f"{node.op_type}_{base}"
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        if node.name:
            renamed[node.name] = name
        node.name = name
    return renamed


def constants_to_initializers(graph: onnx.GraphProto) -> None:
    for node in [n for n in graph.node if n.op_type == "Constant" and len(n.attribute) == 1]:
        attr = node.attribute[0]
        if attr.name != "value":
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)


def fold_constants(graph: onnx.GraphProto) -> int:
    """Evaluate nodes whose inputs are all constants, with onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    folded = 0
    for node in list(graph.node):
        if node.op_type in _NO_FOLD or node.domain not in ("", "ai.onnx"):
            continue
        if not node.input or not all(i == "" or i in values for i in node.input):
            continue
        try:
            outputs = ReferenceEvaluator(node).run(None, {i: values[i] for i in node.input if i})
        except Exception:
            continue
        for name, array in zip(node.output, outputs, strict=False):
            array = np.asarray(array)
            values[name] = array
            graph.initializer.append(numpy_helper.from_array(array, name))
        graph.node.remove(node)
        folded += 1
    return folded


def shapes_of(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    out = {}
    for v in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def explicit_pads(model: onnx.ModelProto) -> int:
    shapes = shapes_of(model)
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MaxPool", "AveragePool", "LpPool"):
            continue
        attrs = attrs_of(node)
        mode = attrs.get("auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("SAME_UPPER", "SAME_LOWER"):
            continue
        spatial = shapes.get(node.input[0], [])[2:]
        kernel = attrs.get("kernel_shape") or weights.get(node.input[1], [])[2:]
        if not spatial or any(not isinstance(s, int) or not s for s in spatial) or not kernel:
            continue
        strides = attrs.get("strides") or [1] * len(spatial)
        dilations = attrs.get("dilations") or [1] * len(spatial)
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begins.append(small if mode == "SAME_UPPER" else big)
            ends.append(big if mode == "SAME_UPPER" else small)
        _set_attr(node, "auto_pad", "NOTSET")
        _set_attr(node, "pads", begins + ends)
        changed += 1
    return changed


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def fuse_biases(graph: onnx.GraphProto, shapes: dict) -> int:
    """Conv(no bias) + Add(const) -> Conv with bias; MatMul(2-D x, const W) [+ Add(const b)] -> Gemm.

    (A MatMul on more dimensions becomes a Linear after conversion: `convert.linear_matmuls`.)
    """
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    fused = 0
    for node in list(graph.node):
        users = _consumers(graph)
        if node.op_type == "Conv" and len(node.input) == 2 and node.input[1] in inits:
            add = _single_user(users, node.output[0], outputs)
            out_ch = inits[node.input[1]].dims[0]
            bias = _bias_of(add, node.output[0], inits, out_ch, conv=True)
            if bias is not None:
                graph.initializer.append(numpy_helper.from_array(bias, node.name + "_bias"))
                node.input.append(node.name + "_bias")
                _bypass(graph, add, node.output[0])
                fused += 1
        elif (
            node.op_type == "MatMul"
            and node.input[1] in inits
            and len(inits[node.input[1]].dims) == 2
            and len(shapes.get(node.input[0], [])) == 2
        ):
            add = _single_user(users, node.output[0], outputs)
            out_features = inits[node.input[1]].dims[1]
            bias = _bias_of(add, node.output[0], inits, out_features, conv=False)
            node.op_type = "Gemm"  # 2-D x @ W (+ b): Gemm is exactly that
            if bias is not None:
                graph.initializer.append(numpy_helper.from_array(bias, node.name + "_bias"))
                node.input.append(node.name + "_bias")
                _bypass(graph, add, node.output[0])
            fused += 1
        elif node.op_type == "Gemm" and len(node.input) == 3 and node.input[2] in inits:
            c = numpy_helper.to_array(inits[node.input[2]])
            if c.ndim == 2 and c.shape[0] == 1:  # a [1, K] bias: onnx2torch makes a Linear only for [K]
                graph.initializer.append(numpy_helper.from_array(c.reshape(-1), node.name + "_bias"))
                node.input[2] = node.name + "_bias"
    return fused


def _single_user(users, name: str, outputs: set[str]) -> onnx.NodeProto | None:
    found = users.get(name, [])
    if len(found) != 1 or name in outputs:
        return None
    return found[0]


def _bias_of(add, produced: str, inits, channels: int, conv: bool) -> np.ndarray | None:
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None
    other = add.input[1] if add.input[0] == produced else add.input[0]
    if other not in inits:
        return None
    b = numpy_helper.to_array(inits[other])
    if b.size != channels:
        return None
    expected = {(channels, 1, 1), (1, channels, 1, 1), (channels,)} if conv else {(channels,), (1, channels)}
    if b.shape not in expected or (conv and b.shape == (channels,) and channels != 1):
        return None  # a [C] bias broadcasts over the width, not the channels
    return b.reshape(-1).astype(np.float32)


def _bypass(graph: onnx.GraphProto, node: onnx.NodeProto, replacement: str) -> None:
    """Remove `node`, feeding its consumers (or the graph output) from `replacement`."""
    out = node.output[0]
    graph.node.remove(node)
    for other in graph.node:
        for i, name in enumerate(other.input):
            if name == out:
                other.input[i] = replacement
    for value in graph.output:
        if value.name == out:
            _rename_value(graph, replacement, out)


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def batch_dynamic_reshapes(model: onnx.ModelProto) -> int:
    shapes = shapes_of(model)
    inits = {t.name: t for t in model.graph.initializer}
    users = _consumers(model.graph)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] not in inits:
            continue
        target = numpy_helper.to_array(inits[node.input[1]])
        source = shapes.get(node.input[0], [])
        # the input's batch is symbolic (N, or a dim inference could not name): a target of 1 pins it
        if target.ndim != 1 or not len(target) or target[0] != 1 or not source or isinstance(source[0], int):
            continue
        new = target.copy()
        new[0] = 0  # copy the input's batch size
        name = node.name + "_shape"
        model.graph.initializer.append(numpy_helper.from_array(new.astype(np.int64), name))
        if len(users.get(node.input[1], [])) == 1:
            model.graph.initializer.remove(inits[node.input[1]])
        node.input[1] = name
        changed += 1
    return changed


def fold_static_dims(model: onnx.ModelProto) -> int:
    """Gather(Shape(x), i) where x's dimension i is fixed: a constant (only the batch stays symbolic)."""
    shapes = shapes_of(model)
    graph = model.graph
    made_by = producers(graph)
    inits = {t.name: t for t in graph.initializer}
    folded = 0
    for node in list(graph.node):
        if node.op_type != "Gather" or node.input[1] not in inits or attrs_of(node).get("axis", 0) != 0:
            continue
        source = made_by.get(node.input[0])
        if source is None or source.op_type != "Shape" or attrs_of(source):
            continue
        dims = shapes.get(source.input[0])
        index = numpy_helper.to_array(inits[node.input[1]])
        if not dims:
            continue
        picked = np.asarray(dims, dtype=object)[index]
        if not all(isinstance(d, int) for d in np.atleast_1d(picked)):
            continue
        graph.initializer.append(numpy_helper.from_array(np.asarray(picked, dtype=np.int64), node.output[0]))
        graph.node.remove(node)
        folded += 1
    used = {i for n in graph.node for i in n.input}
    for node in [n for n in graph.node if n.op_type == "Shape" and n.output[0] not in used]:
        graph.node.remove(node)
    return folded


def drop_softmax(graph: onnx.GraphProto) -> str | None:
    out = graph.output[0].name
    node = next((n for n in graph.node if out in n.output), None)
    if node is None or node.op_type not in ("Softmax", "LogSoftmax"):
        return None
    graph.node.remove(node)
    _rename_value(graph, node.input[0], out)
    return node.op_type


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}
