"""ONNX-level work before conversion: load safely, normalise the graph, find the head and the stages.

Everything here uses `onnx` and numpy only. `prepare` turns any classifier graph into
one that onnx2torch converts into trainable modules (the rewrites are in `zoo_onnx.rewrites`):

- opsets older than 13 are upgraded with `onnx.version_converter`;
- node names become unique Python identifiers (they name the torch modules);
- the batch axis becomes symbolic, and Reshape shapes that pinned it to 1 copy it instead;
- constant subgraphs (e.g. a Reshape of a weight) are folded with onnx's reference evaluator;
- `auto_pad=SAME_*` becomes explicit pads (onnx2torch has no auto_pad);
- a bias added after a Conv or MatMul is fused into a Conv bias or a Gemm, so it trains;
- a trailing Softmax/LogSoftmax is removed: zoo trains on logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import helper, shape_inference

from zoo.core.errors import ConversionError
from zoo_onnx.rewrites import (
    attrs_of,
    batch_dynamic_reshapes,
    constants_to_initializers,
    drop_softmax,
    drop_unused_initializers,
    explicit_pads,
    fold_constants,
    fold_static_dims,
    fuse_biases,
    producers,
    rename_nodes,
    shapes_of,
)

TARGET_OPSET = 13
BATCH = "N"
# ops that pass logits through unchanged in kind, between the head and the graph output
_AFTER_HEAD = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Relu", "GlobalAveragePool", "ReduceMean"}
_SPATIAL = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvTranspose"}


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
    inp, layout, c, input_size, batch_fixed = _symbolic_batch_input(graph, where, input_size, layout)
    renamed = rename_nodes(graph)
    constants_to_initializers(graph)
    folded = fold_constants(graph)
    if folded:
        notes.append(f"{folded} constant node(s) folded")
    model = _infer(model, where)
    if n := explicit_pads(model):
        notes.append(f"auto_pad SAME on {n} node(s) made explicit")
    if n := fuse_biases(model.graph, shapes_of(model)):
        notes.append(f"{n} bias Add(s) fused into Conv/Gemm")
    model = _infer(model, where)
    fixed = 0
    while n := batch_dynamic_reshapes(model):  # one fix lets inference carry the batch to the next Reshape
        fixed += n
        del model.graph.value_info[:]  # inference keeps shapes it already has: start afresh
        model = _infer(model, where)
    if fixed:
        notes.append(f"{fixed} Reshape(s) that fixed the batch at 1 now copy it")
    if n := fold_static_dims(model):  # x.shape[1] and the arithmetic on it (torch.chunk, channel shuffles)
        n += fold_constants(model.graph)
        notes.append(f"{n} shape computation(s) on fixed dimensions folded")
        del model.graph.value_info[:]
        model = _infer(model, where)
    if dropped := drop_softmax(model.graph):
        notes.append(f"trailing {dropped} removed (zoo trains on logits)")
    drop_unused_initializers(model.graph)
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


def _symbolic_batch_input(graph: onnx.GraphProto, where: str, input_size, layout: str | None):
    """(the one input, its layout, channels, input size, whether the file fixes the batch at 1) of a classifier
    graph with one input and one output; the input's batch axis becomes symbolic and its size `input_size`."""
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
    return inp, layout, c, input_size, batch_fixed


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


def find_head(prepared: Prepared, where: str) -> str:
    """The node that makes the logits: the last Gemm (a fused MatMul+Add is one) or 1x1 Conv before the output."""
    graph = prepared.model.graph
    made_by = producers(graph)
    inits = {t.name: t for t in graph.initializer}
    node = made_by.get(graph.output[0].name)
    seen = []
    while node is not None:
        seen.append(f"{node.op_type} '{node.name}'")
        if node.op_type == "Gemm" and node.input[1] in inits and not attrs_of(node).get("transA", 0):
            return node.name
        if node.op_type == "Conv" and node.input[1] in inits and list(inits[node.input[1]].dims[2:]) == [1, 1]:
            if attrs_of(node).get("group", 1) == 1:
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
    shapes = shapes_of(model)
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
