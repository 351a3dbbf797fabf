"""`zoo export --fp16`: a float16 model for GPU providers (float16 weights and arithmetic, float32 inputs and
outputs: onnxruntime's own converter), checked against torch's float32 outputs on the provider it is for, with
float16's tolerance."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from zoo.core.check import compare_outputs
from zoo.core.errors import ExportError
from zoo.runtime.onnx_io import ort_session
from zoo.runtime.onnx_meta import ModelMetadata, read_props, write_props

# max abs logit difference allowed, per unit of the largest logit (`compare_outputs` scales it): float16 keeps
# about 3 significant digits and the error grows with the logits (measured: lite0's ImageNet logits differ by
# 0.026 at most, 0.002 per unit)
RTOL = 0.02


def write_fp16(
    fp32: Path,
    dst: Path,
    images: np.ndarray,
    reference: np.ndarray,
    where: str,
    min_agreement: float = 1.0,
    thresholds=None,
    provider: str | None = None,
) -> dict[str, Any]:
    """`dst`: the verified float32 model `fp32` in float16, if onnxruntime's outputs on `images` match torch's
    float32 `reference` logits (at batch 1 and at the whole batch); ExportError (no file) if they do not."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    tmp = dst.with_name(f".{dst.stem}.tmp-fp16.onnx")
    try:
        onnx.save_model(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(tmp))
        session = ort_session(tmp, provider=provider)
        name = session.get_inputs()[0].name
        checks = [
            compare_outputs(
                reference[:n],
                session.run(None, {name: images[:n]})[0],
                RTOL,
                min_agreement=min_agreement,
                thresholds=thresholds,
            )
            for n in (1, len(images))
        ]
        atol = max(c.atol for c in checks)  # the tolerance applied, scaled by the largest logit
        result = {
            "path": str(dst),
            "atol": atol,
            "images": where,
            "max_abs_diff": max(c.max_abs_diff for c in checks),
            "top1_agreement": min(c.top1_agreement for c in checks),
            "passed": all(c.passed for c in checks),
        }
        if not result["passed"]:
            failures = " | ".join("; ".join(c.failures) for c in checks if c.failures)
            raise ExportError(f"--fp16: onnxruntime's float16 model does not match torch within {atol:.3g}: {failures}")
        info = ModelMetadata.from_props(read_props(fp32), str(fp32))
        write_props(tmp, dataclasses.replace(info, precision="fp16").to_props())
        tmp.replace(dst)
        return result
    finally:
        tmp.unlink(missing_ok=True)
