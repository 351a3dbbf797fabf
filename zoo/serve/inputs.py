"""What a `zoo serve` request carries, checked: an uploaded image file, or an Open Inference Protocol tensor.

Each function runs in a worker thread and raises starlette's `HTTPException` with the status
and message a client gets back as `{"error": "..."}`; nothing a client sends gets further.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from starlette.exceptions import HTTPException

from zoo.data.images import load_for_eval
from zoo.runtime.onnx_meta import ModelMetadata

MAX_IMAGES = 64  # images in one request (files of a /predict, rows of a v2 tensor)
_DATATYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64"}


@dataclass(frozen=True)
class Tensor:
    """A model input or output as the v2 metadata shows it: -1 for a dimension the graph leaves free."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, node) -> Tensor:
        """From an onnxruntime NodeArg."""
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in node.shape)
        return cls(node.name, _DATATYPES.get(node.type, node.type), dims)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def decode_image(data: bytes, name: str, info: ModelMetadata, max_pixels: int) -> np.ndarray:
    """An uploaded file as the model's input, (C, H, W) float32, decoded as `Predictor.load` decodes a file.

    The size is read from the header first: an image over `max_pixels` is refused (413) before it is decoded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel limit below decides
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"{name}: too many pixels ({exc})") from None
    except Exception:
        raise HTTPException(415, f"{name}: not an image file that Pillow can read") from None
    if width * height > max_pixels:
        raise HTTPException(
            413,
            f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels, over this server's limit of "
            f"{max_pixels / 1e6:g} megapixels (--max-image-pixels)",
        )
    try:
        return load_for_eval(io.BytesIO(data), info.preprocess, info.decode_size)
    except Exception as exc:  # truncated or corrupt after a valid header
        raise HTTPException(400, f"{name}: cannot decode it ({type(exc).__name__}: {str(exc)[:160]})") from None


def infer_request(body: bytes, model_input: Tensor, model_output: Tensor, image_shape: tuple[int, ...],
                  header_length: int | None = None):  # fmt: skip
    """An Open Inference Protocol infer request: (its id or None, the input batch as (N, C, H, W) float32, whether
    the output goes back as binary data).

    One input, named as the model's, FP32, shaped [N, *image_shape] with 1 <= N <= MAX_IMAGES; `data` flat
    (row-major) or nested, or, with the binary tensor data extension (`header_length`: the request's
    Inference-Header-Content-Length), `binary_data_size` little-endian float32 bytes after the JSON; every value
    finite. Anything else is a 400 naming what is wrong.
    """
    binary = b""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise HTTPException(400, f"Inference-Header-Content-Length {header_length}: the body has {len(body)} bytes")
        body, binary = body[:header_length], body[header_length:]
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise HTTPException(400, f"malformed JSON: {str(exc)[:160]}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise HTTPException(400, "an infer request is a JSON object with an 'inputs' list")
    if len(request["inputs"]) != 1 or not isinstance(request["inputs"][0], dict):
        raise HTTPException(400, f"'inputs': this model takes one input, '{model_input.name}'")
    tensor = request["inputs"][0]
    if tensor.get("name") != model_input.name:
        raise HTTPException(400, f"input '{tensor.get('name')}': this model's input is '{model_input.name}'")
    if tensor.get("datatype") != "FP32":
        raise HTTPException(400, f"input datatype {tensor.get('datatype')!r}: this model takes FP32")
    want = [-1, *image_shape]
    shape = tensor.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == len(want)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        and list(shape[1:]) == want[1:]
    ):
        raise HTTPException(400, f"input shape {shape}: this model takes {want} (N images)")
    if not 1 <= shape[0] <= MAX_IMAGES:
        raise HTTPException(400, f"input shape {shape}: N must be between 1 and {MAX_IMAGES}")
    for out in request.get("outputs") or []:
        if not isinstance(out, dict) or out.get("name") != model_output.name:
            raise HTTPException(400, f"requested output {out!r}: this model's output is '{model_output.name}'")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        raw = _binary_input(binary, size, shape)
    elif binary:
        raise HTTPException(400, "binary data after the JSON, but the input has no 'binary_data_size' parameter")
    else:
        raw = _json_input(tensor)
    array = raw.astype(np.float32)
    if array.size != math.prod(shape):
        raise HTTPException(400, f"input data: {array.size} values for shape {shape} ({math.prod(shape)} needed)")
    if not np.isfinite(array).all():
        raise HTTPException(400, "input data: NaN or infinite values")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise HTTPException(400, f"'id' {request_id!r}: must be a string")
    return request_id, array.reshape(shape), _binary_output(request)


def _binary_input(binary: bytes, size, shape: list[int]) -> np.ndarray:
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise HTTPException(400, f"binary_data_size {size!r}: {len(binary)} bytes follow the JSON")
    if size != 4 * math.prod(shape):
        raise HTTPException(400, f"input data: {size} bytes for FP32 shape {shape} ({4 * math.prod(shape)} needed)")
    return np.frombuffer(binary, dtype="<f4")


def _binary_output(request: dict) -> bool:
    """Whether the output is asked for as binary data: its own `binary_data`, else the request's
    `binary_data_output` (the binary tensor data extension)."""
    wanted = bool((request.get("parameters") or {}).get("binary_data_output", False))
    for out in request.get("outputs") or []:
        if "binary_data" in (out.get("parameters") or {}):
            wanted = bool(out["parameters"]["binary_data"])
    return wanted


def _json_input(tensor: dict) -> np.ndarray:
    try:
        raw = np.asarray(tensor.get("data"))
    except (ValueError, TypeError) as exc:
        raise HTTPException(400, f"input data: not a list of numbers of one shape ({str(exc)[:120]})") from None
    if raw.dtype.kind not in "iuf":  # strings, booleans or nulls would be cast silently: FP32 data is numbers
        held = {"U": "strings", "b": "booleans"}.get(raw.dtype.kind, "nulls or mixed values")
        raise HTTPException(400, f"input data: not a list of numbers of one shape (it holds {held})")
    return raw
