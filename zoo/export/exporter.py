"""`zoo export` and `zoo verify`: ONNX that proves itself.

The model is written by `zoo.runtime.onnx_io.write_onnx` (one opset policy), checked by
`onnx.checker`, and then run by onnxruntime beside torch on real images at
batch 1 and batch N; every output is compared by `zoo.core.check.compare_outputs`
(shape, max abs difference against the backbone's tolerance, top-1 agreement).
Any failure is collected, reported as a table, and the file is not left at its
final path. The file carries its preprocessing, labels and the check's results
as metadata (`zoo.runtime.onnx_meta`), so `zoo.runtime.predictor` can use it without torch.

Beside `NAME.onnx` zoo writes `NAME.json`, the verification report (and, with
`--int8`, `NAME.int8.onnx`); it never overwrites a file it did not write.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.catalogue.backbone import Backbone, Preprocess
from zoo.core import atomic
from zoo.core.check import CheckResult, compare_outputs
from zoo.core.errors import ExportError, OutputError, UsageError
from zoo.data.check_images import load_sample_inputs
from zoo.data.images import decode_size
from zoo.export.sources import model_source
from zoo.model.build import split_outputs
from zoo.runtime.onnx_io import (
    DEFAULT_OPSET,
    check_opset,
    exporter_order,
    external_data_files,
    needs_external_data,
    ort_session,
    resolve_providers,
    write_onnx,
)
from zoo.runtime.onnx_meta import ModelMetadata, read_props, write_props

log = logging.getLogger(__name__)

REPORT_MARK = "zoo_report"  # a key every report zoo writes has: how zoo knows a .json beside a model is its own


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
    report_path: str = ""
    precision: str = "fp32"
    provider: str = "cpu"
    embedded: dict[str, Any] | None = None  # --embed-preprocessing: the check on raw pixels
    fp16: dict[str, Any] | None = None  # --fp16: the float16 model's check against torch
    triton: str | None = None  # --triton-repo: the model's folder in the repository

    def to_dict(self) -> dict[str, Any]:
        return {REPORT_MARK: "export", **asdict(self)}


class Logits(torch.nn.Module):
    """The model in eval mode returning only its main logits (auxiliary heads are never exported)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return split_outputs(self.model(x))[0]


def compare(
    model, session, images: np.ndarray, atol: float, batch_sizes: tuple[int, ...], min_agreement=None, thresholds=None
):
    """onnxruntime against torch at each batch size (multi-label: label sets at `thresholds` must agree)."""
    results = []
    for b in batch_sizes:
        x = images[: min(b, len(images))]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).float().numpy()
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        results.append(compare_outputs(ref, got, atol, min_agreement=min_agreement, thresholds=thresholds))
    return results


def is_ours(path: Path) -> bool:
    """A file zoo wrote for an export: a report with zoo's mark, or an ONNX file with zoo metadata (and its data)."""
    if path.name.endswith(".onnx.data"):
        return is_ours(path.with_name(path.name[: -len(".data")]))
    try:
        if path.suffix == ".json":
            return REPORT_MARK in json.loads(path.read_text(encoding="utf-8"))
        if path.suffix == ".onnx":
            return any(k.startswith("zoo.") for k in read_props(path))
    except Exception:
        return False
    return False


def sidecars(output: Path) -> dict[str, Path]:
    return {
        "data": output.with_name(f"{output.name}.data"),  # the weights of a model over 2 GB
        "failed_data": output.with_name(f"{output.stem}.FAILED.onnx.data"),
        "report": output.with_suffix(".json"),
        "failed": output.with_name(f"{output.stem}.FAILED.onnx"),
        "failed_report": output.with_name(f"{output.stem}.FAILED.json"),
        "int8": output.with_name(f"{output.stem}.int8.onnx"),
        "fp16": output.with_name(f"{output.stem}.fp16.onnx"),
    }


def check_output(output: Path, mkdir: bool = False) -> None:
    """Before any work: the path can be written, and no file zoo would write there belongs to someone else."""
    if output.suffix != ".onnx":
        raise OutputError(f"-o {output}: the file name must end in .onnx")
    if output.is_dir():
        raise OutputError(f"-o {output}: is a folder; name the .onnx file to write")
    parent = output.parent
    if not parent.exists():
        if not mkdir:
            raise OutputError(f"-o {output}: the folder {parent} does not exist; create it, or add --mkdir")
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"-o {output}: cannot create {parent} ({exc.strerror or exc})") from None
    if not parent.is_dir() or not atomic.can_write_in(parent):
        raise OutputError(f"-o {output}: {parent} is not a writable folder")
    for path in (output, *sidecars(output).values()):
        if path.exists() and not is_ours(path):
            raise OutputError(
                f"-o {output}: {path} exists and zoo did not write it (zoo writes {output.name} and its report "
                f"{output.with_suffix('.json').name} beside it); choose another name"
            )


def export_model(
    model,
    spec: Backbone,
    pre: Preprocess,
    labels: list[str],
    output: Path | str,
    *,
    opset: int = DEFAULT_OPSET,
    batch: str = "dynamic",
    check_data: Path | None = None,
    data_fallback=None,
    check_batch: int = 8,
    min_agreement: float = 1.0,
    keep_on_mismatch: bool = False,
    extra_metadata: dict[str, Any] | None = None,
    atol: float | None = None,
    mkdir: bool = False,
    exporter: str = "auto",
    thresholds: list[float] | None = None,
    provider: str | None = None,
) -> ExportReport:
    """Export `model`, verify it against torch, write it with metadata and a JSON report beside it.

    `exporter`: "auto" (dynamo, TorchScript where it fails), or "torchscript" first (faster to write).
    `thresholds`: a multi-label model's per-label thresholds (its label sets must agree, and travel in the file).
    `provider`: the onnxruntime execution provider the check runs on (--provider; the CPU by default).
    """
    import onnx

    start = time.perf_counter()
    output = Path(output)
    check_opset(opset)
    dynamic = batch == "dynamic"
    fixed = 0
    if not dynamic:
        try:
            fixed = int(batch)
        except ValueError:
            raise UsageError(f"--batch {batch}: use 'dynamic' or a number") from None
        if fixed < 1:
            raise UsageError(f"--batch {batch}: must be >= 1")
    check_output(output, mkdir)
    wrapped = Logits(model.eval().float().cpu()).eval()
    images, source = load_sample_inputs(pre, max(check_batch, 2), check_data, data_fallback)
    # an example batch > 1: with batch 1 the exporter may bake the batch size in (pytorch#148629)
    example = torch.from_numpy(np.resize(images, (2 if dynamic else fixed, *images.shape[1:])).astype(np.float32))
    work = output.with_name(f".{output.stem}.tmp-export-{os.getpid()}")  # one folder per attempt inside
    large = needs_external_data(wrapped)  # over 2 GB: the weights go to NAME.onnx.data beside the file
    sizes = (1, check_batch) if dynamic else (fixed,)
    inputs = images if dynamic else np.resize(images, (fixed, *images.shape[1:]))
    tolerance = atol if atol is not None else spec.atol
    notes: list[str] = []
    chosen = None  # (written, checks, path): the passing attempt, else the first whose model did not match
    try:
        # the exporters differ in coverage: when one fails, or writes a model that does not match torch, the
        # other one is tried, and the notes say so
        for name in exporter_order(exporter, opset):
            path = work / name / output.name
            path.parent.mkdir(parents=True)
            try:
                written = write_onnx(wrapped, (example,), path, opset=opset, dynamic_batch=dynamic, exporter=name,
                                     fallback=False, external_data=large)  # fmt: skip
                onnx.checker.check_model(str(path), full_check=True)
            except ExportError as exc:
                notes.append(f"{name} exporter failed ({str(exc).split(': ', 1)[-1][:200]})")
                continue
            except Exception as exc:
                notes.append(f"onnx.checker rejected the {name} exporter's model ({str(exc).splitlines()[0][:200]})")
                continue
            session = ort_session(path, provider=provider)
            checks = compare(wrapped, session, inputs, tolerance, sizes, min_agreement, thresholds)
            if all(c.passed for c in checks):
                chosen = (written, checks, path)
                if notes:
                    notes.append(f"used the {name} exporter")
                break
            chosen = chosen or (written, checks, path)
            worst = max(c.max_abs_diff for c in checks)
            notes.append(f"the {name} exporter's model does not match torch (max abs diff {worst:.3g})")
        if chosen is None:
            raise ExportError(f"no exporter could write the model: {'; '.join(notes)}")
        written, checks, path = chosen
        passed = all(c.passed for c in checks)
        report = ExportReport(
            str(output), written.exporter, written.opset, source, checks, min_agreement, passed,
            time.perf_counter() - start, notes, provider=provider or "cpu",
        )  # fmt: skip
        summary = {
            "passed": passed,
            "exporter": written.exporter,
            "images": source,
            "max_abs_diff": max(c.max_abs_diff for c in checks),
            "top1_agreement": min(c.top1_agreement for c in checks),
            "agreement": checks[0].agreement,
        }
        meta = metadata_for(spec, pre, labels, {**(extra_metadata or {}), "check": summary}, thresholds)
        write_props(path, meta.to_props())
        paths = sidecars(output)
        final, report_path = (output, paths["report"]) if passed else (paths["failed"], paths["failed_report"])
        if passed or keep_on_mismatch:
            move_model(path, final)
            report.path = str(final)
        report.report_path = str(report_path)
        atomic.write_json(report_path, report.to_dict())
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def move_model(src: Path, dst: Path) -> None:
    """Put an ONNX file (and its external data, renamed to match) at `dst`; the model file arrives last."""
    data = external_data_files(src)
    if not data:
        src.replace(dst)
        return
    if data == [src.parent / f"{dst.name}.data"]:
        data[0].replace(dst.parent / data[0].name)
        src.replace(dst)
        return
    import onnx

    staged = src.parent / "renamed" / dst.name  # another name: the tensors' location changes with it
    staged.parent.mkdir()
    onnx.save_model(onnx.load(str(src)), str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{dst.name}.data", size_threshold=1024)  # fmt: skip
    move_model(staged, dst)


def metadata_for(
    spec: Backbone, pre: Preprocess, labels: list[str], extra: dict[str, Any], thresholds: list[float] | None = None
) -> ModelMetadata:
    from zoo.core.version import __version__

    return ModelMetadata(
        labels=tuple(labels),
        preprocess=pre,
        decode_size=decode_size(pre),
        backbone=spec.name,
        plugin=spec.source,
        zoo_version=__version__,
        extra=extra,
        task="multi-label" if thresholds is not None else "single-label",
        thresholds=tuple(thresholds) if thresholds is not None else None,
    )


def mismatch_error(report: ExportReport) -> ExportError:
    rows = [f"batch {c.batch} {c.output}: " + "; ".join(c.failures) for c in report.checks if c.failures]
    if report.exporter == "existing file":
        what = "the INT8 model" if report.precision == "int8" else "it"
        where = f"{report.path}: {what} does not come from this checkpoint, or was changed"
    else:
        kept = f"kept as {report.path}" if report.path.endswith(".FAILED.onnx") else "no model file written"
        where = f"{kept}; report: {report.report_path}"
    return ExportError(f"onnxruntime does not match torch ({where}): " + " | ".join(rows))


def export(
    source: str | Path,
    output: str | Path,
    *,
    num_classes: int | None = None,
    weights: str = "default",
    opset: int = DEFAULT_OPSET,
    batch: str = "dynamic",
    check_data: str | Path | None = None,
    min_agreement: float = 1.0,
    keep_on_mismatch: bool = False,
    int8: bool = False,
    calib_size: int = 64,
    max_drop: float = 1.0,
    mkdir: bool = False,
    calibration: str = "percentile",
    exclude: tuple[str, ...] | list[str] = (),
    int8_retry: bool = True,
    provider: str | None = None,
    fp16: bool = False,
    embed_preprocessing: bool = False,
    top_k: int = 5,
    triton_repo: str | Path | None = None,
) -> ExportReport:
    """Export a run folder, a checkpoint, or a registered backbone; verify it; optionally add an INT8 model, a
    float16 one, the preprocessing inside the graph, a Triton model repository.

    Raises ExportError (after writing the report) when onnxruntime and torch disagree.
    """
    if not 0 <= min_agreement <= 1:
        raise UsageError(f"--min-agreement {min_agreement}: a fraction between 0 and 1")
    check_opset(opset)
    if int8:
        if calib_size < 1:
            raise UsageError(f"--calib-size {calib_size}: must be >= 1 (training images to calibrate on)")
        if not (np.isfinite(max_drop) and max_drop >= 0):
            raise UsageError(f"--max-drop {max_drop}: accuracy points, a finite number >= 0")
    check_output(Path(output), mkdir)
    if embed_preprocessing and (int8 or fp16):
        raise UsageError("--embed-preprocessing writes a model for raw pixels; add --int8 or --fp16 in another export")
    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: must be >= 1")
    if provider is not None:
        resolve_providers(provider)
    if triton_repo is not None:  # before the export: a bad repository path costs nothing
        from zoo.export.triton import check_repository, model_name

        check_repository(Path(triton_repo), model_name(Path(output)))
    model, spec, pre, labels, run_data, extra, ckpt = model_source(source, num_classes, weights)
    if embed_preprocessing:
        from zoo.export.embed import check_embeddable

        check_embeddable(pre, opset)
    if int8 and ckpt is None:
        raise UsageError("--int8 needs a fine-tuned run or checkpoint: its data gives the calibration and val images")
    thresholds = ckpt.get("thresholds") if ckpt and ckpt.get("task") == "multi-label" else None
    check_dir = Path(check_data) if check_data else None
    report = export_model(
        model, spec, pre, labels, Path(output), opset=opset, batch=batch, check_data=check_dir, data_fallback=run_data,
        min_agreement=min_agreement, keep_on_mismatch=keep_on_mismatch, extra_metadata=extra, mkdir=mkdir,
        thresholds=thresholds, provider=provider,
    )  # fmt: skip
    if not report.passed:
        raise mismatch_error(report)
    out = Path(report.path)
    if int8:
        from zoo.export.quantize import int8_for_run

        report.int8 = int8_for_run(out, sidecars(out)["int8"], ckpt, pre, labels, calib_size, max_drop, thresholds,
                                   calibration, exclude, int8_retry)  # fmt: skip
    if fp16:
        from zoo.export.fp16 import write_fp16

        images, where = load_sample_inputs(pre, 8, check_dir, run_data)
        with torch.no_grad():
            reference = Logits(model)(torch.from_numpy(images)).numpy()
        report.fp16 = write_fp16(out, sidecars(out)["fp16"], images, reference, where, min_agreement, thresholds,
                                 provider)  # fmt: skip
    if embed_preprocessing:
        from zoo.data.check_images import check_files
        from zoo.export.embed import embed_in_place

        files, _ = check_files(check_dir, run_data)
        report.embedded = embed_in_place(out, pre, top_k, thresholds is not None, files)
        if not report.embedded["passed"]:
            out.unlink()
            report.passed = False
            atomic.write_json(Path(report.report_path), report.to_dict())
            e = report.embedded
            raise ExportError(
                f"--embed-preprocessing: on raw pixels the graph agrees with zoo's preprocessing on "
                f"{e.get('top1_agreement', 0):.3f} of {e['images']} images (median probability difference "
                f"{e.get('median_prob_diff', float('nan')):.4f}); needed >= {e['min_top1_agreement']} and <= "
                f"{e['max_median_prob_diff']}; no model file written; report: {report.report_path}"
            )
    if triton_repo is not None:
        from zoo.export.triton import write_repository

        report.triton = str(write_repository(out, Path(triton_repo)))
    if int8 or fp16 or embed_preprocessing or triton_repo is not None:  # the report says what was added
        atomic.write_json(Path(report.report_path), report.to_dict())
    if ckpt is not None:  # a fine-tuned run's model, verified: plugins hear of it (tracking, registries)
        from zoo.catalogue import events

        run_dir = Path(source).expanduser()
        run_dir = run_dir if run_dir.is_dir() else run_dir.parent
        events.Reporter(run_dir=str(run_dir.resolve())).emit(events.EXPORTED, path=report.path,
                                                              report=report.to_dict())  # fmt: skip
    return report
