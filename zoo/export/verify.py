"""`zoo verify`: an exported file checked again against the checkpoint it claims to come from (catches a tampered
or stale file): float32 against torch on real images, INT8 against its accuracy gate, a model with its
preprocessing inside on raw pixels."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from zoo.catalogue.backbone import Preprocess
from zoo.core.check import CheckResult
from zoo.core.errors import ModelFileError
from zoo.data.check_images import labelled_inputs, load_sample_inputs, run_files
from zoo.data.images import decode_size
from zoo.export.exporter import ExportReport, Logits, compare
from zoo.runtime.embedded import is_embedded
from zoo.runtime.onnx_io import ort_session
from zoo.runtime.onnx_meta import ModelMetadata


def verify(
    model_path: str | Path,
    source: str | Path,
    check_data: str | Path | None = None,
    check_batch: int = 8,
    min_agreement: float = 1.0,
    provider: str | None = None,
) -> ExportReport:
    """Check an existing ONNX file against the checkpoint it claims to come from (catches tampering).

    An INT8 file is held to INT8's criteria: the labels match, and its val accuracy is within the
    `--max-drop` it was exported with of the checkpoint's (on the run's val images).
    """
    from zoo.model.checkpoint import load_model, preprocess_of

    start = time.perf_counter()
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelFileError(f"{model_path}: no such model file")
    session = ort_session(model_path, provider=provider)
    info = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(model_path))
    model, ckpt = load_model(source)
    from zoo.catalogue.registry import get_registry

    spec = get_registry().get(ckpt["backbone"])
    pre = preprocess_of(ckpt)
    thresholds = ckpt.get("thresholds") if ckpt.get("task") == "multi-label" else None
    if info.precision == "int8":
        checks, where = _verify_int8(model, session, info, ckpt, pre)
    elif is_embedded(session):
        checks, where = _verify_embedded(model, session, ckpt, pre, check_data, thresholds is not None)
    else:
        images, where = load_sample_inputs(
            pre, check_batch, Path(check_data) if check_data else None, run_files(ckpt["config"])
        )
        checks = compare(Logits(model), session, images, spec.atol, (1, check_batch), min_agreement, thresholds)
    if list(info.labels) != list(ckpt["classes"]):
        checks[0].failures.append(f"labels {list(info.labels)} != the checkpoint's {ckpt['classes']}")
    if info.task != ckpt.get("task", "single-label"):
        checks[0].failures.append(f"task {info.task} != the checkpoint's {ckpt.get('task', 'single-label')}")
    elif thresholds is not None and list(info.thresholds or ()) != [float(t) for t in thresholds]:
        checks[0].failures.append("the label thresholds differ from the checkpoint's")
    passed = all(c.passed for c in checks)
    return ExportReport(
        str(model_path), "existing file", 0, where, checks, min_agreement, passed, time.perf_counter() - start,
        precision=info.precision,
    )  # fmt: skip


def _verify_embedded(model, session, ckpt: dict, pre: Preprocess, check_data, multi: bool):
    """A model with its preprocessing inside: on raw pixels against torch after zoo's preprocessing."""
    from zoo.data.check_images import check_files
    from zoo.export.embed import MAX_MEDIAN_DIFF, MIN_AGREEMENT, check_raw
    from zoo.runtime.predictions import probabilities

    files, where = check_files(Path(check_data) if check_data else None, run_files(ckpt["config"]))
    files = files[:64]

    def reference(x):
        with torch.no_grad():
            return probabilities(Logits(model)(torch.from_numpy(x)).numpy(), multi)

    r = check_raw(session, reference, files, pre, decode_size(pre), ckpt.get("thresholds") if multi else None)
    n = r["images"]
    row = CheckResult(n, "probabilities on raw pixels", [n], [n], r.get("median_prob_diff", float("inf")),
                      MAX_MEDIAN_DIFF, r.get("top1_agreement", 0.0), agreement=r["agreement"])  # fmt: skip
    if not r["passed"]:
        row.failures.append(f"raw pixels: {r} (needs {r['agreement']} agreement >= {MIN_AGREEMENT}, median <= "
                            f"{MAX_MEDIAN_DIFF})")  # fmt: skip
    return [row], f"the raw pixels of {n} images of {where or 'no data folder'} (median probability difference)"


def _verify_int8(model, session, info: ModelMetadata, ckpt: dict, pre: Preprocess) -> tuple[list[CheckResult], str]:
    from zoo.core.metrics import mean_average_precision
    from zoo.data.split import load_for_run
    from zoo.export.quantize import val_score

    cfg = ckpt["config"]
    multi = info.multi_label
    split = load_for_run(cfg, decode_size(pre))
    images, labels = labelled_inputs(split.val, pre, None, len(ckpt["classes"]), multi)
    with torch.no_grad():
        logits = Logits(model)(torch.from_numpy(images)).numpy()
    if multi:
        torch_score = mean_average_precision(labels, torch.sigmoid(torch.from_numpy(logits)).numpy())[0]
    else:
        torch_score = float((logits.argmax(1) == labels).mean())
    int8_score = val_score(session, images, labels, multi)
    what = "val mAP" if multi else "val accuracy"
    allowed = float((info.extra.get("int8") or {}).get("max_drop", 1.0))
    drop = 100 * (torch_score - int8_score)
    row = CheckResult(len(images), f"int8 {what}", [len(images)], [len(images)], drop, allowed, int8_score)
    if drop > allowed:
        row.failures.append(f"{what} {torch_score:.4f} -> {int8_score:.4f}: -{drop:.2f} points > {allowed} allowed")
    return [row], f"{len(images)} val images of the run ({cfg['data']}), INT8 criteria"
