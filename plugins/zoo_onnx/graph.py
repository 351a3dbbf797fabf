"""ONNX-level work before conversion: load safely, normalise the graph, find the head and the stages.

Everything here uses `onnx` and numpy only. `prepare` turns any classifier graph into
one that onnx2torch converts into trainable modules:

- opsets older than 13 are upgraded with `onnx.version_converter`;
- node names become unique Python identifiers (they name the torch modules);
- the batch axis becomes symbolic, and Reshape shapes that pinned it to 1 copy it instead;
- constant subgraphs (e.g. a Reshape of a weight) are folded with onnx's reference evaluator;
- `auto_pad=SAME_*` becomes explicit pads (onnx2torch has no auto_pad);
- a bias added after a Conv or MatMul is fused into a Conv bias or a Gemm, so it trains;
- a trailing Softmax/LogSoftmax is removed: zoo trains on logits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from zoo.core.errors import ConversionError

TARGET_OPSET = 13
BATCH = "N"
# ops that pass logits through unchanged in kind, between the head and the graph output
_AFTER_HEAD = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Relu", "GlobalAveragePool", "ReduceMean"}
_SPATIAL = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvTranspose"}
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


@dataclass
class Prepared:
    """A normalised graph and what zoo learned about it."""

    model: onnx.ModelProto
    input_name: str
    layout: str  # of the original input: NCHW or NHWC
    channels: int
    input_size: tuple[int, int]
    opset: int  # of the original file
    notes: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # original node name -> module name
    batch_fixed: bool = False  # the original file accepts batch 1 only
    dropped: str | None = None  # "Softmax" or "LogSoftmax" when the output's activation was removed


def load(path: Path | str, where: str | None = None) -> onnx.ModelProto:
    """Read and check an ONNX file; external data must stay inside the model's folder."""
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise ConversionError(f"{where}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ConversionError(f"{where}: not an ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    if not model.graph.node:
        raise ConversionError(f"{where}: not an ONNX model (no graph nodes)")
    folder = path.resolve().parent
    for tensor in external_tensors(model):
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise ConversionError(
                f"{where}: initializer '{tensor.name}' points to external data '{location}' outside the model's "
                "folder; refused (copy the data next to the model and fix the path)"
            )
        if not target.is_file():
            raise ConversionError(f"{where}: external data file '{location}' of '{tensor.name}' is missing")
    if external_tensors(model):
        onnx.load_external_data_for_model(model, str(folder))
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ConversionError(f"{where}: fails onnx.checker: {_first_line(exc)}") from None
    return model


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


def external_files(path: Path) -> list[Path]:
    """The external data files an ONNX file references (already checked to be in its folder)."""
    model = onnx.load(str(path), load_external_data=False)
    names = {dict((e.key, e.value) for e in t.external_data).get("location") for t in external_tensors(model)}
    return [path.parent / n for n in sorted(n for n in names if n)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def prepare(
    model: onnx.ModelProto,
    where: str,
    input_size: tuple[int, int] | None = None,
    layout: str | None = None,
) -> Prepared:
    """The graph normalised for conversion and training (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # never touch the caller's copy
    opset = opset_of(model)
    notes = []
    if opset < TARGET_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, TARGET_OPSET)
            notes.append(f"opset {opset} upgraded to {TARGET_OPSET}")
        except Exception as exc:
            notes.append(f"opset {opset} kept: the version converter failed ({_first_line(exc)})")
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    for value in [i for i in graph.input if i.name in inits]:
        graph.input.remove(value)  # old IRs list initializers as inputs too
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(list(model.opset_import)))
    if len(graph.input) != 1:
        names = ", ".join(i.name for i in graph.input)
        raise ConversionError(
            f"{where}: an image classifier has one input; this graph has {len(graph.input)} ({names})"
        )
    if len(graph.output) != 1:
        names = ", ".join(o.name for o in graph.output)
        raise ConversionError(f"{where}: a classifier has one output; this graph has {len(graph.output)} ({names})")
    inp = graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ConversionError(f"{where}: input '{inp.name}' has rank {len(dims)}; zoo imports 4-D image inputs")
    layout = (layout or _guess_layout(dims, where)).upper()
    if layout not in ("NCHW", "NHWC"):
        raise ConversionError(f"--layout {layout}: choose NCHW or NHWC")
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    if c is None:
        raise ConversionError(f"{where}: the channel axis of input '{inp.name}' has no fixed size")
    if input_size is None:
        if h is None or w is None:
            raise ConversionError(f"{where}: input '{inp.name}' has no fixed height/width; pass --input-size H,W")
        input_size = (h, w)
    batch_fixed = dims[0] == 1
    shape = [BATCH, c, *input_size] if layout == "NCHW" else [BATCH, *input_size, c]
    inp.type.CopyFrom(helper.make_tensor_type_proto(inp.type.tensor_type.elem_type, shape))
    renamed = _rename_nodes(graph)
    _constants_to_initializers(graph)
    folded = _fold_constants(graph)
    if folded:
        notes.append(f"{folded} constant node(s) folded")
    model = _infer(model, where)
    if n := _explicit_pads(model):
        notes.append(f"auto_pad SAME on {n} node(s) made explicit")
    if n := _fuse_biases(model.graph, _shapes(model)):
        notes.append(f"{n} bias Add(s) fused into Conv/Gemm")
    model = _infer(model, where)
    fixed = 0
    while n := _batch_dynamic_reshapes(model):  # one fix lets inference carry the batch to the next Reshape
        fixed += n
        del model.graph.value_info[:]  # inference keeps shapes it already has: start afresh
        model = _infer(model, where)
    if fixed:
        notes.append(f"{fixed} Reshape(s) that fixed the batch at 1 now copy it")
    if n := _fold_static_dims(model):  # x.shape[1] and the arithmetic on it (torch.chunk, channel shuffles)
        n += _fold_constants(model.graph)
        notes.append(f"{n} shape computation(s) on fixed dimensions folded")
        del model.graph.value_info[:]
        model = _infer(model, where)
    if dropped := _drop_softmax(model.graph):
        notes.append(f"trailing {dropped} removed (zoo trains on logits)")
    _drop_unused_initializers(model.graph)
    del model.graph.value_info[:]
    out_shape = model.graph.output[0].type.tensor_type.shape
    if out_shape.dim:  # the declared output batch, like the input's, is symbolic
        out_shape.dim[0].ClearField("dim_value")
        out_shape.dim[0].dim_param = BATCH
    model = _infer(model, where)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # our own rewrite broke it: a bug, but say where
        raise ConversionError(f"{where}: the normalised graph fails onnx.checker: {_first_line(exc)}") from None
    return Prepared(model, inp.name, layout, c, tuple(input_size), opset, notes, renamed, batch_fixed, dropped)


def _guess_layout(dims: list[int | None], where: str) -> str:
    if dims[1] in (1, 3, 4):
        return "NCHW"
    if dims[3] in (1, 3, 4):
        return "NHWC"
    raise ConversionError(f"{where}: cannot tell the input layout from shape {dims}; pass --layout NCHW or NHWC")


def _infer(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise ConversionError(f"{where}: ONNX shape inference fails: {_first_line(exc)}") from None


def _rename_nodes(graph: onnx.GraphProto) -> dict[str, str]:
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


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    for node in [n for n in graph.node if n.op_type == "Constant" and len(n.attribute) == 1]:
        attr = node.attribute[0]
        if attr.name != "value":
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)


def _fold_constants(graph: onnx.GraphProto) -> int:
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


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    out = {}
    for v in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _explicit_pads(model: onnx.ModelProto) -> int:
    shapes = _shapes(model)
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MaxPool", "AveragePool", "LpPool"):
            continue
        attrs = _attrs(node)
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


def _fuse_biases(graph: onnx.GraphProto, shapes: dict) -> int:
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


def _batch_dynamic_reshapes(model: onnx.ModelProto) -> int:
    shapes = _shapes(model)
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


def _fold_static_dims(model: onnx.ModelProto) -> int:
    """Gather(Shape(x), i) where x's dimension i is fixed: a constant (only the batch stays symbolic)."""
    shapes = _shapes(model)
    graph = model.graph
    made_by = producers(graph)
    inits = {t.name: t for t in graph.initializer}
    folded = 0
    for node in list(graph.node):
        if node.op_type != "Gather" or node.input[1] not in inits or _attrs(node).get("axis", 0) != 0:
            continue
        source = made_by.get(node.input[0])
        if source is None or source.op_type != "Shape" or _attrs(source):
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


def _drop_softmax(graph: onnx.GraphProto) -> str | None:
    out = graph.output[0].name
    node = next((n for n in graph.node if out in n.output), None)
    if node is None or node.op_type not in ("Softmax", "LogSoftmax"):
        return None
    graph.node.remove(node)
    _rename_value(graph, node.input[0], out)
    return node.op_type


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def find_head(prepared: Prepared, where: str) -> str:
    """The node that makes the logits: the last Gemm (a fused MatMul+Add is one) or 1x1 Conv before the output."""
    graph = prepared.model.graph
    made_by = producers(graph)
    inits = {t.name: t for t in graph.initializer}
    node = made_by.get(graph.output[0].name)
    seen = []
    while node is not None:
        seen.append(f"{node.op_type} '{node.name}'")
        if node.op_type == "Gemm" and node.input[1] in inits and not _attrs(node).get("transA", 0):
            return node.name
        if node.op_type == "Conv" and node.input[1] in inits and list(inits[node.input[1]].dims[2:]) == [1, 1]:
            if _attrs(node).get("group", 1) == 1:
                return node.name
        if node.op_type not in _AFTER_HEAD:
            break
        node = made_by.get(node.input[0])
    path = " <- ".join(seen) or "a graph input"
    raise ConversionError(
        f"{where}: no recognisable classification head (a Gemm, MatMul+Add or 1x1 Conv making the output); "
        f'the output comes from {path}; name the head node with head = "NODE" in the registry entry'
    )


def stages(prepared: Prepared, head: str, weighted: set[str]) -> list[tuple[str, list[str]]]:
    """Nodes cut into stages where the spatial size shrinks; the last stage ("head") starts at global pooling.

    Returns [(stage name, [node names])]. Stages with no node in `weighted` (the nodes whose
    modules hold parameters) are merged into the next one.
    """
    model = prepared.model
    shapes = _shapes(model)
    h, w = prepared.input_size
    current = h * w

    def spatial(node) -> bool:
        shape = shapes.get(node.output[0], [])
        return len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]) and shape[2] * shape[3] > 1

    # the head region starts after the last node with a spatial output (SE blocks pool globally mid-network)
    nodes = list(model.graph.node)
    last_spatial = max((i for i, n in enumerate(nodes) if spatial(n)), default=-1)
    out: list[tuple[str, list[str]]] = [(f"s{h}x{w}", [])]
    in_head = False
    for i, node in enumerate(nodes):
        shape = shapes.get(node.output[0], [])
        if node.name == head or i > last_spatial:
            in_head = True
        if not in_head and node.op_type in _SPATIAL and len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
            size = shape[2] * shape[3]
            if 1 < size < current:  # (a 1x1 conv on a pooled map, as in SE blocks, is no new stage)
                current = size
                out.append((f"s{shape[2]}x{shape[3]}", []))
        if in_head:
            if out[-1][0] != "head":
                out.append(("head", []))
        out[-1][1].append(node.name)
    if out[-1][0] != "head":
        out.append(("head", []))
    if head not in out[-1][1]:  # the head node ran before a global op in graph order: move it
        for _, members in out:
            if head in members:
                members.remove(head)
        out[-1][1].append(head)
    merged: list[tuple[str, list[str]]] = []
    carry: list[str] = []
    for name, members in out[:-1]:
        members = carry + members
        if any(m in weighted for m in members):
            merged.append((name, members))
            carry = []
        else:
            carry = members
    merged.append(("head", carry + out[-1][1]))
    return [(name if name == "head" else f"stage{i}_{name}", members) for i, (name, members) in enumerate(merged)]
