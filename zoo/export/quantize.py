"""INT8: onnxruntime static QDQ quantization, calibrated on training images, judged on val accuracy (multi-label:
val mAP, the metric whose drop matters when every label has its own threshold)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from zoo.core.errors import QuantizationRefused, UsageError
from zoo.export.options import CALIBRATIONS
from zoo.runtime.onnx_io import ort_session, quiet_stdout
from zoo.runtime.onnx_meta import ModelMetadata, read_props, write_props

log = logging.getLogger(__name__)


def quantize_int8(
    fp32: Path,
    int8: Path,
    calibration: np.ndarray,
    batch: int = 8,
    method: str = "percentile",
    exclude: tuple[str, ...] | list[str] = (),
) -> None:
    """Write a static QDQ INT8 model: per-channel int8 weights, uint8 activations, calibrated by `method`
    (percentile, entropy or minmax); the nodes named in `exclude` stay float32."""
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
                calibrate_method={
                    "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy,
                    "minmax": CalibrationMethod.MinMax,
                }[method],
                nodes_to_exclude=list(exclude),
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
    from zoo.core.metrics import mean_average_precision
    from zoo.runtime.predictions import sigmoid

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


def sensitive_nodes(fp32: Path) -> list[str]:
    """The nodes INT8 hurts most, by common experience: the first convolution (it sees the raw input) and the
    classifier (the last MatMul or Gemm)."""
    import onnx

    nodes = onnx.load(str(fp32), load_external_data=False).graph.node
    first = next((n.name for n in nodes if n.op_type == "Conv"), None)
    last = next((n.name for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul")), None)
    return [n for n in (first, last) if n]


def attempts(method: str, exclude: list[str], sensitive: list[str], retry: bool) -> list[tuple[str, list[str]]]:
    """The documented sequence: as asked; then also keeping the first conv and the classifier in float; then
    the other calibration methods with them kept."""
    tries = [(method, list(exclude))]
    if retry:
        kept = list(dict.fromkeys([*exclude, *sensitive]))
        for m in (method, *[c for c in CALIBRATIONS if c != method]):
            if (m, kept) not in tries:
                tries.append((m, kept))
    return tries


def build_int8(
    fp32: Path,
    int8: Path,
    calibration: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    max_drop: float,
    multi_label: bool = False,
    method: str = "percentile",
    exclude: list[str] | tuple[str, ...] = (),
    retry: bool = True,
) -> dict[str, Any]:
    """Quantize and measure fp32 and int8 val accuracy (multi-label: mAP) and speed; when the drop is over
    `max_drop` points, try again along `attempts` (with `retry`); write the first that passes, or refuse (no
    file) with every attempt's figures."""
    import dataclasses

    if method not in CALIBRATIONS:
        raise UsageError(f"--calibration {method}: choose one of {', '.join(CALIBRATIONS)}")
    metric = gate_metric(multi_label)
    what = "val mAP" if multi_label else "val accuracy"
    f32 = ort_session(fp32)
    fp32_score = val_score(f32, val_images, val_labels, multi_label)
    fp32_speed = images_per_second(f32, val_images)
    tmp = int8.with_name(f".{int8.stem}.tmp-int8.onnx")
    rows = []
    try:
        for m, excluded in attempts(method, list(exclude), sensitive_nodes(fp32), retry):
            quantize_int8(fp32, tmp, calibration, method=m, exclude=excluded)
            i8 = ort_session(tmp)
            score = val_score(i8, val_images, val_labels, multi_label)
            speed = images_per_second(i8, val_images)
            drop = 100 * (fp32_score - score)
            rows.append({"calibration": m, "excluded": excluded, f"int8_{metric}": score, "drop_points": drop,
                         "int8_img_s": speed, "speedup": speed / fp32_speed, "passed": drop <= max_drop})  # fmt: skip
            if drop <= max_drop:
                break
        chosen = rows[-1]
        result = {
            "calibration_images": len(calibration),
            "val_images": len(val_images),
            "metric": metric,
            f"fp32_{metric}": fp32_score,
            f"int8_{metric}": chosen[f"int8_{metric}"],
            "fp32_img_s": fp32_speed,
            "int8_img_s": chosen["int8_img_s"],
            "drop_points": chosen["drop_points"],
            "speedup": chosen["speedup"],
            "max_drop": max_drop,
            "calibration": chosen["calibration"],
            "excluded": chosen["excluded"],
            "attempts": rows,
        }
        if not chosen["passed"]:
            table = "; ".join(
                f"{r['calibration']}{' excluding ' + ', '.join(r['excluded']) if r['excluded'] else ''}: "
                f"-{r['drop_points']:.2f} points, {r['speedup']:.2f}x"
                for r in rows
            )
            raise QuantizationRefused(
                f"--int8: {what} drops more than --max-drop {max_drop} in every attempt ({fp32_score:.4f} in fp32; "
                f"{table}); the INT8 model was not written"
            )
        meta = ModelMetadata.from_props(read_props(fp32), str(fp32))
        gate = {k: result[k] for k in ("metric", f"fp32_{metric}", f"int8_{metric}", "drop_points", "max_drop",
                                       "calibration", "excluded")}  # fmt: skip
        write_props(tmp, dataclasses.replace(meta, precision="int8", extra={**meta.extra, "int8": gate}).to_props())
        tmp.replace(int8)
        result["path"] = str(int8)
        return result
    finally:
        tmp.unlink(missing_ok=True)


def int8_for_run(
    fp32: Path,
    int8: Path,
    ckpt: dict[str, Any],
    pre,
    labels: list[str],
    calib_size: int,
    max_drop: float,
    thresholds=None,
    method: str = "percentile",
    exclude: list[str] | tuple[str, ...] = (),
    retry: bool = True,
) -> dict[str, Any]:
    """`zoo export --int8`: calibrated on the run's training images, judged on its val images."""
    from zoo.core.errors import DataError
    from zoo.data.check_images import labelled_inputs
    from zoo.data.images import decode_size
    from zoo.data.split import load_for_run
    from zoo.runtime.onnx_io import external_data_files

    if external_data_files(fp32):
        raise UsageError("--int8: the model is over 2 GB (its weights are in a .data file); INT8 takes smaller ones")
    cfg = ckpt["config"]
    split = load_for_run(cfg, decode_size(pre))
    if split.classes != labels:
        raise DataError(f"--int8: the run's data ({cfg['data']}) no longer has the run's classes")
    multi = thresholds is not None
    step = max(1, len(split.train) // calib_size)
    calibration, _ = labelled_inputs(split.train[::step], pre, calib_size, len(labels), multi)
    val_images, val_labels = labelled_inputs(split.val, pre, None, len(labels), multi)
    return build_int8(fp32, int8, calibration, val_images, val_labels, max_drop, multi, method, exclude, retry)
