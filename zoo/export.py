"""`zoo export`: ONNX that proves itself.

The model is exported with `torch.onnx.export` (the dynamo exporter first, the
TorchScript one where dynamo fails, and the report says which), checked by
`onnx.checker`, and then run by onnxruntime beside torch on real images at batch
1 and batch N. Every output is compared (shape, max abs difference against the
backbone's tolerance, top-1 agreement); any failure is collected, reported as a
table, and the file is not left at its final path. The file carries its
preprocessing, labels and the check's results as metadata, so `zoo.runtime` can
use it without torch.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo import atomic
from zoo.backbone import Backbone, Preprocess
from zoo.data import DataError, class_dirs, decode_size, image_files, load_for_eval
from zoo.errors import ZooError
from zoo.models import split_outputs

log = logging.getLogger(__name__)


class ExportError(ZooError):
    """The model could not be exported, or the exported model does not match torch."""


@dataclass
class CheckResult:
    """One comparison of onnxruntime against torch."""

    batch: int
    output: str
    torch_shape: list[int]
    onnx_shape: list[int]
    max_abs_diff: float
    atol: float
    top1_agreement: float
    failures: list[str] = field(default_factory=list)


@dataclass
class ExportReport:
    path: str
    exporter: str
    opset: int
    images: str  # where the check images came from
    checks: list[CheckResult]
    min_agreement: float
    passed: bool
    seconds: float
    notes: list[str] = field(default_factory=list)
    int8: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _export(model, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> tuple[str, list[str]]:
    """Write the ONNX file; returns (exporter used, notes)."""
    notes = []
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
            program.save(str(path), external_data=False)
        return "dynamo", notes
    except Exception as exc:  # the exporters differ in coverage: try the other one, and say so
        notes.append(
            f"dynamo exporter failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "used the TorchScript exporter"
        )
        log.warning(notes[-1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=min(opset, 20),
            )
        return "torchscript", notes
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export failed with both exporters: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from None


class _Logits(torch.nn.Module):
    """The model in eval mode returning only its main logits (auxiliary heads are never exported)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return split_outputs(out)[0]


def check_images(
    pre: Preprocess, count: int, check_data: Path | None, fallback: Path | None, seed: int = 0
) -> tuple[np.ndarray, str]:
    """`count` real images as model inputs: from --check-data, else the run's data, else generated ones."""
    for folder, what in ((check_data, "--check-data"), (fallback, "the run's data")):
        if folder is None:
            continue
        folder = Path(folder)
        if not folder.is_dir():
            if what == "--check-data":
                raise DataError(f"--check-data {folder}: no such folder")
            continue
        root = folder / "val" if (folder / "val").is_dir() else folder
        files = [f for d in class_dirs(root) for f in image_files(d)] or image_files(root)
        arrays = []
        rng = np.random.default_rng(seed)
        for i in rng.permutation(len(files)):
            try:
                arrays.append(
                    load_for_eval(
                        files[i],
                        pre.input_size,
                        pre.resize_size,
                        pre.mean,
                        pre.std,
                        pre.interpolation,
                        decode_size(pre),
                    )
                )
            except Exception:  # an unreadable file is not a reason to fail an export check
                continue
            if len(arrays) == count:
                break
        if arrays:
            return np.stack(arrays), f"{len(arrays)} images from {what} ({root})"
        if what == "--check-data":
            raise DataError(f"--check-data {folder}: no readable images")
    rng = np.random.default_rng(seed)
    # smooth random images, normalised like real ones, when no real image is at hand
    base = rng.random((count, pre.channels, 8, 8), dtype=np.float32)
    h, w = pre.input_size
    up = np.repeat(np.repeat(base, -(-h // 8), axis=2), -(-w // 8), axis=3)[:, :, :h, :w]
    arr = (up - np.asarray(pre.mean, np.float32)[:, None, None]) / np.asarray(pre.std, np.float32)[:, None, None]
    return arr.astype(np.float32), f"{count} generated images (no data folder)"


def compare(model, session, images: np.ndarray, atol: float, batch_sizes: tuple[int, ...]) -> list[CheckResult]:
    """onnxruntime against torch at each batch size: shape, max abs difference, top-1 agreement.

    The tolerance scales with the logits: `atol * max(1, max |torch logits|)`, since float32
    rounding grows with magnitude (random-init Inception v3 gives logits in the thousands).
    """
    results = []
    for b in batch_sizes:
        b = min(b, len(images))
        x = images[:b]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).float().numpy()
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        results.append(check_outputs(b, ref, got, atol, reference="torch"))
    return results


def check_outputs(batch: int, torch_out: np.ndarray, onnx_out: np.ndarray, atol: float, reference: str) -> CheckResult:
    """One comparison of torch and onnxruntime outputs: shape, then max abs difference within
    `atol * max(1, max |reference|)`, and top-1 agreement. `reference` ("torch" or "onnxruntime")
    is the side taken as right: the exporter checks ONNX against torch, the importer torch against ONNX."""
    ref, got = (torch_out, onnx_out) if reference == "torch" else (onnx_out, torch_out)
    failures = []
    if list(got.shape) != list(ref.shape):
        failures.append(f"shape {list(got.shape)} != {reference} {list(ref.shape)}")
        diff, agree, allowed = float("inf"), 0.0, atol
    else:
        diff = float(np.abs(got - ref).max())
        agree = float((got.argmax(1) == ref.argmax(1)).mean())
        allowed = atol * max(1.0, float(np.abs(ref).max()))
        if not np.isfinite(diff) or diff > allowed:
            failures.append(f"max abs diff {diff:.3g} > tolerance {allowed:.3g}")
    return CheckResult(batch, "logits", list(torch_out.shape), list(onnx_out.shape), diff, allowed, agree, failures)


def _metadata(model_path: Path, props: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(model_path))
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(model_path))


def metadata_for(spec: Backbone, pre: Preprocess, labels: list[str], extra: dict[str, Any]) -> dict[str, str]:
    from zoo import __version__

    props = {
        "zoo.labels": json.dumps(labels),
        "zoo.input_size": json.dumps(list(pre.input_size)),
        "zoo.resize_size": str(pre.resize_size),
        "zoo.decode_size": str(decode_size(pre)),
        "zoo.crop_pct": str(pre.crop_pct),
        "zoo.mean": json.dumps(list(pre.mean)),
        "zoo.std": json.dumps(list(pre.std)),
        "zoo.interpolation": pre.interpolation,
        "zoo.backbone": spec.name,
        "zoo.plugin": spec.source,
        "zoo.version": __version__,
    }
    props.update({f"zoo.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return props


def export_model(
    model,
    spec: Backbone,
    pre: Preprocess,
    labels: list[str],
    output: Path | str,
    *,
    opset: int = 18,
    batch: str = "dynamic",
    check_data: Path | None = None,
    data_fallback: Path | None = None,
    check_batch: int = 8,
    min_agreement: float = 1.0,
    keep_on_mismatch: bool = False,
    extra_metadata: dict[str, Any] | None = None,
    atol: float | None = None,
) -> ExportReport:
    """Export `model`, verify it against torch, write it with metadata and a JSON report beside it."""
    import onnx
    import onnxruntime as ort

    start = time.perf_counter()
    output = Path(output)
    if output.suffix != ".onnx":
        raise ExportError(f"-o {output}: the file name must end in .onnx")
    dynamic = batch == "dynamic"
    if not dynamic:
        try:
            fixed = int(batch)
        except ValueError:
            raise ExportError(f"--batch {batch}: use 'dynamic' or a number") from None
        if fixed < 1:
            raise ExportError(f"--batch {batch}: must be >= 1")
    wrapped = _Logits(model.eval().float().cpu()).eval()
    images, source = check_images(pre, max(check_batch, 2), check_data, data_fallback)
    # an example batch > 1: with batch 1 the exporter may bake the batch size in (pytorch#148629)
    example_batch = 2 if dynamic else fixed
    example = torch.from_numpy(np.resize(images, (example_batch, *images.shape[1:])).astype(np.float32))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp-export.onnx")
    try:
        exporter, notes = _export(wrapped, example, tmp, opset, dynamic)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as exc:
            raise ExportError(f"onnx.checker rejected the exported model: {str(exc).splitlines()[0][:300]}") from None
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        sizes = (1, check_batch) if dynamic else (fixed,)
        checks = compare(
            wrapped,
            session,
            images if dynamic else np.resize(images, (fixed, *images.shape[1:])),
            atol if atol is not None else spec.atol,
            sizes,
        )
        for c in checks:
            if c.top1_agreement < min_agreement:
                c.failures.append(f"top-1 agreement {c.top1_agreement:.1%} < {min_agreement:.1%}")
        passed = not any(c.failures for c in checks)
        report = ExportReport(
            str(output), exporter, opset, source, checks, min_agreement, passed, time.perf_counter() - start, notes
        )
        check_summary = {
            "passed": passed,
            "exporter": exporter,
            "images": source,
            "max_abs_diff": max(c.max_abs_diff for c in checks),
            "top1_agreement": min(c.top1_agreement for c in checks),
        }
        _metadata(tmp, metadata_for(spec, pre, labels, {**(extra_metadata or {}), "check": check_summary}))
        final = output if passed else output.with_name(f"{output.stem}.FAILED.onnx")
        if passed or keep_on_mismatch:
            tmp.replace(final)
            report.path = str(final)
        atomic.write_json(final.with_suffix(".json"), report.to_dict())
        return report
    finally:
        tmp.unlink(missing_ok=True)


def mismatch_error(report: ExportReport) -> ExportError:
    rows = [f"batch {c.batch} {c.output}: " + "; ".join(c.failures) for c in report.checks if c.failures]
    if report.exporter == "existing file":
        where = f"{report.path} does not come from this checkpoint, or was changed"
    else:
        kept = f"kept as {report.path}" if report.path.endswith(".FAILED.onnx") else "no model file written"
        where = f"{kept}; report: {Path(report.path).with_suffix('.json')}"
    return ExportError(f"onnxruntime does not match torch ({where}): " + " | ".join(rows))


def _labelled(samples, pre: Preprocess, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    arrays, labels = [], []
    for s in samples[:limit] if limit else samples:
        arrays.append(
            load_for_eval(
                s.path, pre.input_size, pre.resize_size, pre.mean, pre.std, pre.interpolation, decode_size(pre)
            )
        )
        labels.append(s.label)
    return np.stack(arrays), np.asarray(labels)


def export(
    source: str | Path,
    output: str | Path,
    *,
    num_classes: int | None = None,
    weights: str = "default",
    opset: int = 18,
    batch: str = "dynamic",
    check_data: str | Path | None = None,
    min_agreement: float = 1.0,
    keep_on_mismatch: bool = False,
    int8: bool = False,
    calib_size: int = 64,
    max_drop: float = 1.0,
) -> ExportReport:
    """Export a run folder, a checkpoint, or a registered backbone; verify it; optionally add an INT8 model.

    Raises ExportError (after writing the report) when onnxruntime and torch disagree.
    """
    from zoo.checkpoint import load_model, preprocess_of
    from zoo.models import create_model, resolve_weights
    from zoo.registry import get_registry

    if not 0 <= min_agreement <= 1:
        raise ExportError(f"--min-agreement {min_agreement}: a fraction between 0 and 1")
    path = Path(source).expanduser()
    run_data = None
    if path.exists():
        model, ckpt = load_model(path)
        spec = get_registry().get(ckpt["backbone"])
        pre, labels = preprocess_of(ckpt), list(ckpt["classes"])
        run_data = ckpt["config"]["data"]
        extra = {
            "policy": ckpt["policy"]["name"],
            "val_acc": ckpt["best_val_acc"],
            "epoch": ckpt["epoch"],
            "weights": ckpt.get("weights", ""),
        }
    else:
        if int8:
            raise ExportError(
                "--int8 needs a fine-tuned run or checkpoint: its data gives the calibration and val images"
            )
        spec = get_registry().get(str(source))
        choice = resolve_weights(spec, weights)
        pre = spec.preprocess_for(choice.tag)
        model = create_model(spec, num_classes=num_classes, weights=choice).eval()
        head = model.get_submodule(spec.head)
        n = getattr(head, "out_features", None) or getattr(head, "out_channels", None)
        cats = list(choice.tag.categories) if choice.tag and not num_classes else []
        labels = cats if len(cats) == n else [f"class_{i}" for i in range(n)]
        extra = {"weights": choice.label}
    report = export_model(
        model,
        spec,
        pre,
        labels,
        Path(output),
        opset=opset,
        batch=batch,
        check_data=Path(check_data) if check_data else None,
        data_fallback=Path(run_data) if run_data else None,
        min_agreement=min_agreement,
        keep_on_mismatch=keep_on_mismatch,
        extra_metadata=extra,
    )
    if not report.passed:
        raise mismatch_error(report)
    if int8:
        from zoo.data import scan
        from zoo.quantize import build_int8

        cfg = ckpt["config"]
        split = scan(cfg["data"], cfg["val_fraction"], cfg["seed"], decode_size(pre))
        if split.classes != labels:
            raise ExportError(f"--int8: the run's data ({cfg['data']}) no longer has the run's classes")
        calibration, _ = _labelled(split.train[:: max(1, len(split.train) // calib_size)], pre, calib_size)
        val_images, val_labels = _labelled(split.val, pre)
        out = Path(report.path)
        report.int8 = build_int8(
            out, out.with_name(f"{out.stem}.int8.onnx"), calibration, val_images, val_labels, max_drop
        )
        atomic.write_json(out.with_suffix(".json"), report.to_dict())
    return report


def verify(
    model_path: str | Path,
    source: str | Path,
    check_data: str | Path | None = None,
    check_batch: int = 8,
    min_agreement: float = 1.0,
) -> ExportReport:
    """Check an existing ONNX file against the checkpoint it claims to come from (catches tampering)."""
    import onnxruntime as ort

    from zoo.checkpoint import load_model, preprocess_of
    from zoo.registry import get_registry
    from zoo.runtime import read_metadata

    start = time.perf_counter()
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ExportError(f"{model_path}: no such model file")
    model, ckpt = load_model(source)
    spec = get_registry().get(ckpt["backbone"])
    try:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"{model_path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None
    info = read_metadata(session.get_modelmeta().custom_metadata_map, str(model_path))
    pre = preprocess_of(ckpt)
    images, where = check_images(
        pre, check_batch, Path(check_data) if check_data else None, Path(ckpt["config"]["data"])
    )
    checks = compare(_Logits(model), session, images, spec.atol, (1, check_batch))
    if info.labels != list(ckpt["classes"]):
        checks[0].failures.append(f"labels {info.labels} != the checkpoint's {ckpt['classes']}")
    for c in checks:
        if c.top1_agreement < min_agreement:
            c.failures.append(f"top-1 agreement {c.top1_agreement:.1%} < {min_agreement:.1%}")
    passed = not any(c.failures for c in checks)
    return ExportReport(
        str(model_path), "existing file", 0, where, checks, min_agreement, passed, time.perf_counter() - start
    )
