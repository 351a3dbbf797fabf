"""`zoo export --embed-preprocessing`: the evaluation preprocessing as ONNX ops in front of the model.

The graph then takes what any runtime has after decoding an image, a batch of uint8 RGB pixels
`images[N, H, W, 3]` of any height and width, and returns `probabilities[N, C]` (softmax; sigmoid for a
multi-label model), `top_k_probabilities[N, K]` and `top_k_indices[N, K]` (int64). In between, the same
steps as `zoo.data.images.eval_array`, in ONNX: Resize (the short side to the resize size, the long one
truncated, as torchvision's Resize(int); or both sides, `squash`) with the model's filter and
antialiasing (opset 18's Resize `antialias`, which follows Pillow's), rounded to uint8 as Pillow
does, the centre crop (offsets rounded half to even, as Python's round), BGR order where the model
wants it, scaling to [0, 1] and normalisation. Callers from C#, Java, JavaScript or C++ decode the
image and call the model: nothing to re-implement.

The Python path decodes large JPEGs at a reduced scale and shrinks to the decode size before its
resize (two filters in a row); the graph resizes once from the full image. `check_raw` measures how
much that changes the result, on real images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zoo.catalogue.backbone import Preprocess
from zoo.core.errors import UsageError
from zoo.export.options import EMBED_TOP_K
from zoo.runtime.embedded import INPUT, OUTPUTS, raw_pixels

MIN_OPSET = 18  # Resize's antialias attribute
_MODES = {"nearest": "nearest", "bilinear": "linear", "bicubic": "cubic"}


def check_embeddable(pre: Preprocess, opset: int) -> None:
    """UsageError, before any work, for what the graph cannot do the way zoo's Python preprocessing does."""
    if opset < MIN_OPSET:
        raise UsageError(
            f"--embed-preprocessing needs --opset {MIN_OPSET} or later (Resize with antialiasing); got {opset}"
        )
    if pre.channels != 3:
        raise UsageError("--embed-preprocessing: the model takes grayscale input; only RGB models are supported")
    if pre.crop_mode not in ("center", "squash"):
        raise UsageError(
            f"--embed-preprocessing: crop mode '{pre.crop_mode}' (padding with the mean colour) is not supported; "
            "center and squash are"
        )
    if pre.resize_size < max(pre.input_size):
        raise UsageError(
            f"--embed-preprocessing: crop_pct {pre.crop_pct} > 1 pads around the resized image, which is not supported"
        )
    if pre.interpolation not in _MODES:
        raise UsageError(f"--embed-preprocessing: interpolation '{pre.interpolation}' is not supported")


def embed(model, pre: Preprocess, decode: int, top_k: int = EMBED_TOP_K, multi_label: bool = False):
    """The ModelProto `model` (float32 NCHW input, logits output) with the preprocessing in front and
    probabilities and top-k behind; `model` is changed in place and returned. `decode`: the short side zoo
    decodes images at (`zoo.data.images.decode_size`), the first of the two resizes."""
    graph = model.graph
    image_input = _image_input(graph)
    classes = graph.output[0].type.tensor_type.shape.dim[-1].dim_value or None
    k = min(top_k, classes) if classes else top_k
    ops = _Ops(graph)
    ops.identity(_preprocessing(ops, pre, decode), image_input.name, "zoo_pre/model_input")
    post = _postprocessing(ops, graph.output[0].name, k, multi_label)
    _assemble(graph, image_input, ops.nodes, post, classes, k)
    return model


def _image_input(graph):
    """The model's one input that is not an initialiser: the float32 NCHW image the preprocessing will feed."""
    initialisers = {i.name for i in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in initialisers]
    if len(real_inputs) != 1:
        raise UsageError(f"--embed-preprocessing: the model has {len(real_inputs)} inputs; one image input is needed")
    return real_inputs[0]


class _Ops:
    """The preprocessing as it is built: its constants go into the model's initialisers, its nodes into `nodes`, in
    order, every name under zoo_pre/."""

    def __init__(self, graph) -> None:
        from onnx import helper, numpy_helper

        self.graph, self.helper, self.numpy_helper = graph, helper, numpy_helper
        self.nodes: list = []

    def const(self, name: str, value, dtype=np.int64) -> str:
        self.graph.initializer.append(self.numpy_helper.from_array(np.asarray(value, dtype=dtype), f"zoo_pre/{name}"))
        return f"zoo_pre/{name}"

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"zoo_pre/{name}"
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def identity(self, x: str, out: str, name: str) -> None:
        self.nodes.append(self.helper.make_node("Identity", [x], [out], name=name))

    def resize(self, x: str, hw: str, name: str, **how) -> str:
        """`x` (NCHW) resized to the sides `hw`, then rounded to uint8 values as Pillow's result is."""
        node, const = self.node, self.const
        shape = node("Shape", [x], f"{name}_shape")
        nc = node("Slice", [shape, const(f"{name}_0", [0]), const(f"{name}_2", [2])], f"{name}_nc")
        x = node("Resize", [x, "", "", node("Concat", [nc, hw], f"{name}_sizes", axis=0)], name, **how)
        # Pillow's result is uint8: round half up, clamp
        x = node("Floor", [node("Add", [x, const(f"{name}_half", 0.5, np.float32)], f"{name}_plus_half")],
                 f"{name}_rounded")  # fmt: skip
        return node("Clip", [x, const(f"{name}_lo", 0.0, np.float32), const(f"{name}_hi", 255.0, np.float32)],
                    f"{name}_pixels")  # fmt: skip

    def sides(self, x: str, name: str) -> tuple[str, str]:
        """The (height, width) of `x` (NCHW) and its short side."""
        shape = self.node("Shape", [x], f"{name}_shape")
        hw = self.node("Slice", [shape, self.const(f"{name}_2", [2]), self.const(f"{name}_4", [4])], f"{name}_hw")
        return hw, self.node("ReduceMin", [hw], f"{name}_short", keepdims=1)


def _preprocessing(ops: _Ops, pre: Preprocess, decode: int) -> str:
    """uint8 NHWC pixels (INPUT) to the model's normalised float32 NCHW input, the steps of
    `zoo.data.images.eval_array`; returns the output's name."""
    from onnx import TensorProto

    x = ops.node("Cast", [INPUT], "float", to=TensorProto.FLOAT)
    x = ops.node("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    x = _as_decoded(ops, x, decode)
    x, hw = _eval_resize(ops, x, pre)
    return _normalise(ops, _centre_crop(ops, x, hw, pre), pre)


def _resize_attrs(pre: Preprocess) -> dict[str, Any]:
    """The evaluation Resize's attributes: the model's filter, as Pillow applies it."""
    mode = _MODES[pre.interpolation]
    attrs: dict[str, Any] = {"mode": mode, "coordinate_transformation_mode": "half_pixel"}
    if mode != "nearest":
        attrs["antialias"] = 1  # Pillow filters with a support widened by the downscale factor
    if mode == "cubic":
        attrs["cubic_coeff_a"] = -0.5  # Pillow's bicubic
    if mode == "nearest":
        attrs["nearest_mode"] = "floor"
    return attrs


def _as_decoded(ops: _Ops, x: str, decode: int) -> str:
    """1. as zoo decodes (zoo.data.images.shrink): the short side down to the decode size, never up, sides rounded
    (in float64, as Python computes them)."""
    from onnx import TensorProto

    node, const = ops.node, ops.const
    hw, short = ops.sides(x, "decoded")
    hw_d = node("Cast", [hw], "decoded_hw_d", to=TensorProto.DOUBLE)
    scale = node("Div", [const("decode", [float(decode)], np.float64),
                         node("Cast", [short], "decoded_short_d", to=TensorProto.DOUBLE)], "shrink_scale")  # fmt: skip
    scale = node("Min", [scale, const("one_d", [1.0], np.float64)], "shrink_scale_1")
    shrunk = node("Round", [node("Mul", [hw_d, scale], "shrunk_d")], "shrunk_round")
    shrunk = node("Max", [node("Cast", [shrunk], "shrunk_i", to=TensorProto.INT64), const("one", [1])], "shrunk_hw")
    return ops.resize(x, shrunk, "shrunk", mode="linear", coordinate_transformation_mode="half_pixel", antialias=1)


def _eval_resize(ops: _Ops, x: str, pre: Preprocess) -> tuple[str, str]:
    """2. the evaluation resize (zoo.data.images.eval_resized): the resized image and its (height, width)."""
    ch, cw = pre.input_size
    size = pre.resize_size
    if pre.crop_mode == "squash":
        square = (size, size) if ch == cw else (round(ch * size / max(ch, cw)), round(cw * size / max(ch, cw)))
        hw = ops.const("squash_hw", square)
    else:  # torchvision's Resize(int): the short side to `size`, the long side int(size * long / short)
        src, short = ops.sides(x, "eval")
        hw = ops.node("Div", [ops.node("Mul", [src, ops.const("size", [size])], "scaled"), short], "resized_hw")
    return ops.resize(x, hw, "resized", **_resize_attrs(pre)), hw


def _centre_crop(ops: _Ops, x: str, hw: str, pre: Preprocess) -> str:
    """The centre crop: offsets round((resized - crop) / 2), half to even as Python's round."""
    from onnx import TensorProto

    node, const = ops.node, ops.const
    crop = const("crop", list(pre.input_size))
    margin = node("Cast", [node("Sub", [hw, crop], "margin_i")], "margin", to=TensorProto.FLOAT)
    start = node("Div", [margin, const("two_f", 2.0, np.float32)], "half_margin")
    start = node("Cast", [node("Round", [start], "start_f")], "start", to=TensorProto.INT64)
    return node("Slice", [x, start, node("Add", [start, crop], "end"), const("axes", [2, 3])], "cropped")


def _normalise(ops: _Ops, x: str, pre: Preprocess) -> str:
    """BGR order where the model wants it, scaling to [0, 1], then (x - mean) / std."""
    node, const = ops.node, ops.const
    if pre.channel_order == "BGR":
        x = node("Gather", [x, const("bgr", [2, 1, 0])], "bgr", axis=1)
    x = node("Div", [x, const("max", 255.0, np.float32)], "unit")
    mean = const("mean", np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1), np.float32)
    std = const("std", np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1), np.float32)
    return node("Div", [node("Sub", [x, mean], "centred"), std], "normalised")


def _postprocessing(ops: _Ops, logits: str, k: int, multi_label: bool) -> list:
    """The nodes behind the model: probabilities (sigmoid for a multi-label model, else softmax) and their top k."""
    helper = ops.helper
    probs = OUTPUTS[0]
    return [
        helper.make_node("Sigmoid", [logits], [probs], name="zoo_post/sigmoid")
        if multi_label
        else helper.make_node("Softmax", [logits], [probs], name="zoo_post/softmax", axis=1),
        helper.make_node("TopK", [probs, ops.const("k", [k])], list(OUTPUTS[1:]), name="zoo_post/top_k", axis=1),
    ]


def _assemble(graph, image_input, pre_nodes: list, post_nodes: list, classes: int | None, k: int) -> None:
    """The graph rewired: the preprocessing, the model's own nodes, the postprocessing; uint8 images[N, H, W, 3] in
    place of the model's input, the probabilities and top k in place of its outputs."""
    from onnx import TensorProto, helper

    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(pre_nodes + body + post_nodes)
    graph.input.remove(image_input)
    graph.input.insert(0, helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["batch", "height", "width", 3]))
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(OUTPUTS[0], TensorProto.FLOAT, ["batch", classes or "classes"]),
            helper.make_tensor_value_info(OUTPUTS[1], TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info(OUTPUTS[2], TensorProto.INT64, ["batch", k]),
        ]
    )


# the gate on raw pixels, measured (docs/deploy.md, bench/deploy.py): the graph and zoo's Python
# path differ only by their resize arithmetic (ONNX's float filters, Pillow's fixed-point ones) and by JPEG
# decoding at reduced scale, which only the Python path does on large photos
MIN_AGREEMENT = 0.95
MAX_MEDIAN_DIFF = 0.02


def check_raw(embedded_session, reference, files: list[Path], pre: Preprocess, short_side: int,
              thresholds=None) -> dict[str, Any]:  # fmt: skip
    """The embedded graph on raw pixels against zoo's Python preprocessing + the model (`reference(batch)` ->
    probabilities), image by image: agreement (top-1; multi-label, with `thresholds`: the label set, as the export
    check compares) and probability differences, the gate's bounds, and whether they are met (`passed`)."""
    from zoo.core.check import agreeing_rows
    from zoo.data.images import load_for_eval

    diffs, agree, used = [], 0, 0
    for path in files:
        try:
            raw = raw_pixels(path)
            ref = reference(load_for_eval(path, pre, short_side)[None])[0]
        except Exception:  # an unreadable file is not a reason to fail the check
            continue
        got = embedded_session.run([OUTPUTS[0]], {INPUT: raw[None]})[0][0]
        diffs.append(float(np.abs(got - ref).max()))
        agree += int(agreeing_rows(got[None], ref[None], thresholds)[0])
        used += 1
    gate = {"min_top1_agreement": MIN_AGREEMENT, "max_median_prob_diff": MAX_MEDIAN_DIFF,
            "agreement": "top-1" if thresholds is None else "label-set"}  # fmt: skip
    if not used:
        return {"images": 0, **gate, "passed": False}
    d = np.asarray(diffs)
    result = {
        "images": used,
        "top1_agreement": agree / used,
        "max_prob_diff": float(d.max()),
        "median_prob_diff": float(np.median(d)),
        "p95_prob_diff": float(np.percentile(d, 95)),
        **gate,
    }
    result["passed"] = result["top1_agreement"] >= MIN_AGREEMENT and result["median_prob_diff"] <= MAX_MEDIAN_DIFF
    return result


def embed_file(src: Path, dst: Path, pre: Preprocess, decode: int, top_k: int, multi_label: bool, files: list[Path],
               work: Path) -> dict[str, Any]:  # fmt: skip
    """Write `src` (a verified zoo export) with its preprocessing inside to `dst`, checked on the raw pixels of
    `files` (or generated images when there are none) against `src` with zoo's Python preprocessing. Returns the
    check: its figures, the tolerances, and `passed`."""
    import dataclasses

    import onnx

    from zoo.runtime.onnx_io import ort_session
    from zoo.runtime.onnx_meta import ModelMetadata, read_props, write_props
    from zoo.runtime.predictions import probabilities

    model = embed(onnx.load(str(src)), pre, decode, top_k, multi_label)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(dst))
    if not files:
        files = generated_files(work, 8)
    reference = ort_session(src)
    name = reference.get_inputs()[0].name
    meta = ModelMetadata.from_props(read_props(src), str(src))
    result = check_raw(
        ort_session(dst), lambda x: probabilities(reference.run(None, {name: x})[0], multi_label), files, pre, decode,
        meta.thresholds if multi_label else None,
    )  # fmt: skip
    extra = {**meta.extra, "preprocessing": "in the graph: uint8 RGB images[N, H, W, 3]", "raw_check": result}
    write_props(dst, dataclasses.replace(meta, extra=extra).to_props())
    return result


def generated_files(work: Path, count: int) -> list[Path]:
    """Smooth random RGB photos of different sizes and aspect ratios, as PNG files, for when no real image is at
    hand."""
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        h, w = int(rng.integers(200, 640)), int(rng.integers(200, 640))
        base = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        files.append(work / f"generated-{i}.png")
        img.save(files[-1])
    return files


def embed_in_place(out: Path, pre: Preprocess, top_k: int, multi_label: bool, files: list[Path]) -> dict[str, Any]:
    """Replace the verified model at `out` by the one with its preprocessing inside, if that passes the raw-pixel
    check on up to 64 of `files`; the check's figures either way."""
    import tempfile

    from zoo.data.images import decode_size

    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:64]]
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.tmp-embed-") as work:
        tmp = Path(work) / out.name
        result = embed_file(out, tmp, pre, decode_size(pre), top_k, multi_label, files, Path(work))
        if result["passed"]:
            tmp.replace(out)
    return result
