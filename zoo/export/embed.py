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


def embed(model, pre: Preprocess, decode: int, top_k: int = 5, multi_label: bool = False):
    """The ModelProto `model` (float32 NCHW input, logits output) with the preprocessing in front and
    probabilities and top-k behind; `model` is changed in place and returned. `decode`: the short side zoo
    decodes images at (`zoo.data.images.decode_size`), the first of the two resizes."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initialisers = {i.name for i in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in initialisers]
    if len(real_inputs) != 1:
        raise UsageError(f"--embed-preprocessing: the model has {len(real_inputs)} inputs; one image input is needed")
    pixels = real_inputs[0].name
    logits = graph.output[0].name
    classes = graph.output[0].type.tensor_type.shape.dim[-1].dim_value or None
    k = min(top_k, classes) if classes else top_k
    ch, cw = pre.input_size
    size = pre.resize_size

    def const(name: str, value, dtype=np.int64):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), f"zoo_pre/{name}"))
        return f"zoo_pre/{name}"

    nodes = []

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"zoo_pre/{name}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    x = node("Cast", [INPUT], "float", to=TensorProto.FLOAT)
    x = node("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    mode = _MODES[pre.interpolation]
    attrs: dict[str, Any] = {"mode": mode, "coordinate_transformation_mode": "half_pixel"}
    if mode != "nearest":
        attrs["antialias"] = 1  # Pillow filters with a support widened by the downscale factor
    if mode == "cubic":
        attrs["cubic_coeff_a"] = -0.5  # Pillow's bicubic
    if mode == "nearest":
        attrs["nearest_mode"] = "floor"

    def resize(x, hw, name: str, **how) -> str:
        shape = node("Shape", [x], f"{name}_shape")
        nc = node("Slice", [shape, const(f"{name}_0", [0]), const(f"{name}_2", [2])], f"{name}_nc")
        x = node("Resize", [x, "", "", node("Concat", [nc, hw], f"{name}_sizes", axis=0)], name, **how)
        # Pillow's result is uint8: round half up, clamp
        x = node("Floor", [node("Add", [x, const(f"{name}_half", 0.5, np.float32)], f"{name}_plus_half")],
                 f"{name}_rounded")  # fmt: skip
        return node("Clip", [x, const(f"{name}_lo", 0.0, np.float32), const(f"{name}_hi", 255.0, np.float32)],
                    f"{name}_pixels")  # fmt: skip

    def sides(x, name: str) -> tuple[str, str]:
        shape = node("Shape", [x], f"{name}_shape")
        hw = node("Slice", [shape, const(f"{name}_2", [2]), const(f"{name}_4", [4])], f"{name}_hw")
        return hw, node("ReduceMin", [hw], f"{name}_short", keepdims=1)

    # 1. as zoo decodes (zoo.data.images.shrink): the short side down to the decode size, never up, sides rounded
    #    (in float64, as Python computes them)
    hw, short = sides(x, "decoded")
    hw_d = node("Cast", [hw], "decoded_hw_d", to=TensorProto.DOUBLE)
    scale = node("Div", [const("decode", [float(decode)], np.float64),
                         node("Cast", [short], "decoded_short_d", to=TensorProto.DOUBLE)], "shrink_scale")  # fmt: skip
    scale = node("Min", [scale, const("one_d", [1.0], np.float64)], "shrink_scale_1")
    shrunk = node("Round", [node("Mul", [hw_d, scale], "shrunk_d")], "shrunk_round")
    shrunk = node("Max", [node("Cast", [shrunk], "shrunk_i", to=TensorProto.INT64), const("one", [1])], "shrunk_hw")
    x = resize(x, shrunk, "shrunk", mode="linear", coordinate_transformation_mode="half_pixel", antialias=1)
    # 2. the evaluation resize (zoo.data.images.eval_resized)
    if pre.crop_mode == "squash":
        square = (size, size) if ch == cw else (round(ch * size / max(ch, cw)), round(cw * size / max(ch, cw)))
        hw = const("squash_hw", square)
    else:  # torchvision's Resize(int): the short side to `size`, the long side int(size * long / short)
        src, short = sides(x, "eval")
        hw = node("Div", [node("Mul", [src, const("size", [size])], "scaled"), short], "resized_hw")
    x = resize(x, hw, "resized", **attrs)
    # the centre crop: offsets round((resized - crop) / 2), half to even as Python's round
    crop = const("crop", [ch, cw])
    margin = node("Cast", [node("Sub", [hw, crop], "margin_i")], "margin", to=TensorProto.FLOAT)
    start = node("Div", [margin, const("two_f", 2.0, np.float32)], "half_margin")
    start = node("Cast", [node("Round", [start], "start_f")], "start", to=TensorProto.INT64)
    x = node("Slice", [x, start, node("Add", [start, crop], "end"), const("axes", [2, 3])], "cropped")
    if pre.channel_order == "BGR":
        x = node("Gather", [x, const("bgr", [2, 1, 0])], "bgr", axis=1)
    x = node("Div", [x, const("max", 255.0, np.float32)], "unit")
    mean = const("mean", np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1), np.float32)
    std = const("std", np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1), np.float32)
    x = node("Div", [node("Sub", [x, mean], "centred"), std], "normalised")
    nodes.append(helper.make_node("Identity", [x], [pixels], name="zoo_pre/model_input"))
    probs = OUTPUTS[0]
    post = [
        helper.make_node("Sigmoid", [logits], [probs], name="zoo_post/sigmoid")
        if multi_label
        else helper.make_node("Softmax", [logits], [probs], name="zoo_post/softmax", axis=1),
        helper.make_node("TopK", [probs, const("k", [k])], list(OUTPUTS[1:]), name="zoo_post/top_k", axis=1),
    ]
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body + post)
    graph.input.remove(real_inputs[0])
    graph.input.insert(0, helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["batch", "height", "width", 3]))
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(probs, TensorProto.FLOAT, ["batch", classes or "classes"]),
            helper.make_tensor_value_info(OUTPUTS[1], TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info(OUTPUTS[2], TensorProto.INT64, ["batch", k]),
        ]
    )
    return model


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
