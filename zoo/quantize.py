"""INT8: onnxruntime static QDQ quantization, calibrated on training images, judged on val accuracy (multi-label:
val mAP, the metric whose drop matters when every label has its own threshold)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import QuantizationRefused
from zoo.onnx_io import ort_session, quiet_stdout
from zoo.onnx_meta import ModelMetadata, read_props, write_props

log = logging.getLogger(__name__)


def quantize_int8(fp32: Path, int8: Path, calibration: np.ndarray, batch: int = 8) -> None:
    """Write a static QDQ INT8 model: per-channel int8 weights, uint8 activations, percentile calibration."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
    )
    from onnxruntime.quantization import quantize_static as _quantize_static

    # every batch the same size: onnxruntime's histogram calibrators stack them (a smaller last batch fails)
    batch = max(d for d in range(1, batch + 1) if len(calibration) % d == 0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([calibration[i : i + batch] for i in range(0, len(calibration), batch)])

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"input": x}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing only helps; quantize the export as it is
            log.info("quant_pre_process skipped: %s", exc)
            prepared = fp32
        with quiet_stdout():  # onnxruntime's calibration prints to stdout, which stays for results (--json)
            _quantize_static(
                str(prepared),
                str(int8),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                # percentile ranges ignore rare outlier activations: measured here, lite0 on ants/bees
                # loses 0.65 points with them and 1.31 with plain min/max
                calibrate_method=CalibrationMethod.Percentile,
            )


def _logits(session, images: np.ndarray, batch: int = 32) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)])


def accuracy(session, images: np.ndarray, labels: np.ndarray, batch: int = 32) -> float:
    return float((_logits(session, images, batch).argmax(1) == labels).mean())


def val_score(session, images: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """What the INT8 gate compares: accuracy, or (multi-label, (n, C) 0/1 targets) mAP."""
    if not multi_label:
        return accuracy(session, images, targets)
    from zoo.metrics import mean_average_precision
    from zoo.predictions import sigmoid

    # ranked by float32 probabilities, exactly as training's validation ranks them
    return mean_average_precision(targets, sigmoid(_logits(session, images)).astype(np.float32))[0]


def gate_metric(multi_label: bool) -> str:
    return "val_map" if multi_label else "val_acc"


def images_per_second(session, images: np.ndarray, batch: int = 32, repeats: int = 3) -> float:
    name = session.get_inputs()[0].name
    x = np.resize(images, (batch, *images.shape[1:])).astype(np.float32)
    session.run(None, {name: x})  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {name: x})
    return batch * repeats / (time.perf_counter() - start)


def build_int8(
    fp32: Path,
    int8: Path,
    calibration: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    max_drop: float,
    multi_label: bool = False,
) -> dict[str, Any]:
    """Quantize, measure fp32 and int8 val accuracy (multi-label: mAP) and speed; refuse (no file) if it drops
    more than `max_drop` points."""
    import dataclasses

    metric = gate_metric(multi_label)
    what = "val mAP" if multi_label else "val accuracy"
    tmp = int8.with_name(f".{int8.stem}.tmp-int8.onnx")
    try:
        quantize_int8(fp32, tmp, calibration)
        f32 = ort_session(fp32)
        i8 = ort_session(tmp)
        result = {
            "calibration_images": len(calibration),
            "val_images": len(val_images),
            "metric": metric,
            f"fp32_{metric}": val_score(f32, val_images, val_labels, multi_label),
            f"int8_{metric}": val_score(i8, val_images, val_labels, multi_label),
            "fp32_img_s": images_per_second(f32, val_images),
            "int8_img_s": images_per_second(i8, val_images),
        }
        result["drop_points"] = 100 * (result[f"fp32_{metric}"] - result[f"int8_{metric}"])
        result["speedup"] = result["int8_img_s"] / result["fp32_img_s"]
        result["max_drop"] = max_drop
        if result["drop_points"] > max_drop:
            raise QuantizationRefused(
                f"--int8: {what} drops {result['drop_points']:.2f} points "
                f"({result[f'fp32_{metric}']:.4f} -> {result[f'int8_{metric}']:.4f}), more than "
                f"--max-drop {max_drop}; the INT8 model was not written"
            )
        meta = ModelMetadata.from_props(read_props(fp32), str(fp32))
        gate = {k: result[k] for k in ("metric", f"fp32_{metric}", f"int8_{metric}", "drop_points", "max_drop")}
        write_props(tmp, dataclasses.replace(meta, precision="int8", extra={**meta.extra, "int8": gate}).to_props())
        tmp.replace(int8)
        result["path"] = str(int8)
        return result
    finally:
        tmp.unlink(missing_ok=True)
