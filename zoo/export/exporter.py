"""`zoo export`: ONNX that proves itself.

The model is written by `zoo.runtime.onnx_io.write_onnx` (one opset policy), checked by
`onnx.checker`, and then run by onnxruntime beside torch on real images at
batch 1 and batch N; every output is compared by `zoo.core.check.compare_outputs`
(shape, max abs difference against the backbone's tolerance, top-1 agreement).
Any failure is collected, reported as a table, and the file is not left at its
final path. The file carries its preprocessing, labels and the check's results
as metadata (`zoo.runtime.onnx_meta`), so `zoo.runtime.predictor` can use it without torch.

Beside `NAME.onnx` zoo writes `NAME.json`, the verification report (`zoo.export.report`; and, with
`--int8`, `NAME.int8.onnx`); it never overwrites a file it did not write (`zoo.export.outputs`).
The options are `zoo.export.options.ExportOptions`, taken as it or as keyword arguments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.catalogue.backbone import Backbone, Preprocess
from zoo.core import atomic
from zoo.core.check import compare_outputs
from zoo.core.errors import ExportError, RunLocked, UsageError
from zoo.core.interrupts import stops_as_interrupted
from zoo.data.check_images import load_sample_inputs
from zoo.data.images import decode_size
from zoo.export.options import ExportOptions
from zoo.export.outputs import check_output, is_ours, move_model, sidecars
from zoo.export.report import REPORT_MARK, ExportReport, mismatch_error, record_export
from zoo.export.sources import model_source
from zoo.model.build import split_outputs
from zoo.runtime.onnx_io import exporter_order, needs_external_data, ort_session, write_onnx
from zoo.runtime.onnx_meta import ModelMetadata, write_props

__all__ = ["REPORT_MARK", "ExportOptions", "ExportReport", "Logits", "check_output", "compare", "export",
           "export_model", "is_ours", "metadata_for", "mismatch_error", "move_model", "sidecars"]  # fmt: skip

log = logging.getLogger(__name__)

# the fields of ExportOptions that `export_model` uses; the others are what `export` adds beside the model
MODEL_OPTIONS = ("opset", "batch", "check_data", "min_agreement", "keep_on_mismatch", "mkdir", "provider")


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


def export_model(
    model,
    spec: Backbone,
    pre: Preprocess,
    labels: list[str],
    output: Path | str,
    options: ExportOptions | None = None,
    *,
    data_fallback=None,
    check_batch: int = 8,
    extra_metadata: dict[str, Any] | None = None,
    atol: float | None = None,
    exporter: str = "auto",
    thresholds: list[float] | None = None,
    **kw,
) -> ExportReport:
    """Export `model`, verify it against torch, write it with metadata and a JSON report beside it.

    `options`: an `ExportOptions`, or as keyword arguments the fields of it this uses (`MODEL_OPTIONS`: opset,
    batch, check_data, min_agreement, keep_on_mismatch, mkdir, provider: the onnxruntime execution provider the
    check runs on, the CPU by default).
    `exporter`: "auto" (dynamo, TorchScript where it fails), or "torchscript" first (faster to write).
    `thresholds`: a multi-label model's per-label thresholds (its label sets must agree, and travel in the file).
    """
    start = time.perf_counter()
    unknown = sorted(set(kw) - set(MODEL_OPTIONS))
    if unknown:
        raise TypeError(f"export_model() got an unexpected keyword argument {unknown[0]!r}")
    o = ExportOptions.checked(options, **kw)
    output = Path(output)
    check_output(output, o.mkdir)
    wrapped = Logits(model.eval().float().cpu()).eval()
    check_dir = Path(o.check_data) if o.check_data else None
    images, source = load_sample_inputs(pre, max(check_batch, 2), check_dir, data_fallback)
    work = output.with_name(f".{output.stem}.tmp-export-{os.getpid()}")  # one folder per attempt inside
    try:
        tolerance = atol if atol is not None else spec.atol
        written, checks, path, notes = _write_and_check(wrapped, images, work, output.name, o, exporter, tolerance,
                                                        check_batch, thresholds)  # fmt: skip
        passed = all(c.passed for c in checks)
        report = ExportReport(
            str(output), written.exporter, written.opset, source, checks, o.min_agreement, passed,
            time.perf_counter() - start, notes, provider=o.provider or "cpu",
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
        _place(report, path, output, o.keep_on_mismatch)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_and_check(wrapped, images: np.ndarray, work: Path, name: str, o: ExportOptions, exporter: str,
                     tolerance: float, check_batch: int, thresholds):  # fmt: skip
    """Each exporter in turn (they differ in coverage), in a folder of `work`: (written, checks, path, notes) of the
    first whose model matches torch, else of the first that wrote one; the notes say what failed and why."""
    import onnx

    fixed = o.fixed_batch
    # an example batch > 1: with batch 1 the exporter may bake the batch size in (pytorch#148629)
    example = torch.from_numpy(np.resize(images, (fixed or 2, *images.shape[1:])).astype(np.float32))
    sizes = (fixed,) if fixed else (1, check_batch)
    inputs = np.resize(images, (fixed, *images.shape[1:])) if fixed else images
    large = needs_external_data(wrapped)  # over 2 GB: the weights go to NAME.onnx.data beside the file
    notes: list[str] = []
    chosen = None  # (written, checks, path): the first attempt whose model did not match
    for each in exporter_order(exporter, o.opset):
        path = work / each / name
        path.parent.mkdir(parents=True)
        try:
            written = write_onnx(wrapped, (example,), path, opset=o.opset, dynamic_batch=fixed is None, exporter=each,
                                 fallback=False, external_data=large)  # fmt: skip
            onnx.checker.check_model(str(path), full_check=True)
        except ExportError as exc:
            notes.append(f"{each} exporter failed ({str(exc).split(': ', 1)[-1][:200]})")
            continue
        except Exception as exc:
            notes.append(f"onnx.checker rejected the {each} exporter's model ({str(exc).splitlines()[0][:200]})")
            continue
        session = ort_session(path, provider=o.provider)
        checks = compare(wrapped, session, inputs, tolerance, sizes, o.min_agreement, thresholds)
        if all(c.passed for c in checks):
            if notes:
                notes.append(f"used the {each} exporter")
            return written, checks, path, notes
        chosen = chosen or (written, checks, path)
        worst = max(c.max_abs_diff for c in checks)
        notes.append(f"the {each} exporter's model does not match torch (max abs diff {worst:.3g})")
    if chosen is None:
        raise ExportError(f"no exporter could write the model: {'; '.join(notes)}")
    return (*chosen, notes)


def _place(report: ExportReport, path: Path, output: Path, keep_on_mismatch: bool) -> None:
    """A passing model to -o, a failing one to NAME.FAILED.onnx with --keep-on-mismatch (else nowhere); the report
    beside it."""
    paths = sidecars(output)
    final, report_path = (output, paths["report"]) if report.passed else (paths["failed"], paths["failed_report"])
    if report.passed or keep_on_mismatch:
        move_model(path, final)
        report.path = str(final)
    report.report_path = str(report_path)
    atomic.write_json(report_path, report.to_dict())


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


def export(
    source: str | Path, output: str | Path | None = None, options: ExportOptions | None = None, **kw
) -> ExportReport:
    """Export a run folder, a checkpoint, or a registered backbone; verify it; optionally add an INT8 model, a
    float16 one, the preprocessing inside the graph, a Triton model repository.

    `options`: an `ExportOptions`, or its fields as keyword arguments (`export(run, "m.onnx", int8=True)`).
    `output` None: `triton_repo` is required and the model goes into it, DIR/NAME/1/model.onnx with its report
    beside it (`zoo.export.triton.export_into_repository`).
    Raises UsageError for a bad option before any work, ExportError (after writing the report) when onnxruntime
    and torch disagree. Ctrl-C or SIGTERM: Interrupted; the temporary files are removed and no file is left
    half-written (a model verified before the signal, and its report, are kept).
    """
    o = ExportOptions.checked(options, **kw)
    if output is None:  # the verified model goes into the Triton repository (--triton-repo), else a UsageError
        from zoo.export.triton import export_into_repository

        return export_into_repository(source, o)
    output = Path(output)
    check_output(output, o.mkdir)
    before = _stamps(output, o)
    # SIGTERM as Ctrl-C: the `finally`s of the export remove the temporary files
    with (
        one_writer(output),
        stops_as_interrupted(lambda name: f"interrupted ({name}); {_what_was_written(before, output, o)}"),
    ):
        return _export(source, output, o)


@contextlib.contextmanager
def one_writer(output: Path):
    """One export at a time to `output` (and its INT8, fp16 and report files): a second one, while the first runs,
    stops with one line instead of both reporting "verified" and the last writer silently winning. flock on
    `.NAME.lock` beside it, released (and removed) when the export ends, or by the system if the process dies."""
    import fcntl

    lock = output.with_name(f".{output.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 300).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(
                f"{output}: another zoo export is writing it ({holder}); wait for it to finish or choose another -o"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:  # still the file at that path: not one a finishing
                break  # export has just removed
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}".encode())
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _stamps(output: Path, o: ExportOptions) -> dict[Path, int | None]:
    """The model files asked for, each with its modification time (None: not there)."""
    paths = sidecars(output)
    wanted = [output] + [paths[k] for k, on in (("int8", o.int8), ("fp16", o.fp16)) if on]
    return {p: p.stat().st_mtime_ns if p.exists() else None for p in wanted}


def _what_was_written(before: dict[Path, int | None], output: Path, o: ExportOptions) -> str:
    """After a signal: the model files this export wrote (each whole, verified) and those it did not."""
    now = _stamps(output, o)
    written = [str(p) for p, stamp in now.items() if stamp is not None and stamp != before[p]]
    if not written:
        return "no model file was written"
    missing = [str(p) for p in now if str(p) not in written]
    return f"written whole and verified: {', '.join(written)}; not written: {', '.join(missing) or 'the rest'}"


def _export(source: str | Path, output: Path, o: ExportOptions) -> ExportReport:
    if o.triton_repo is not None:  # before the export: a bad repository path costs nothing
        from zoo.export.triton import check_repository, model_name

        check_repository(Path(o.triton_repo), model_name(output))
    model, spec, pre, labels, run_data, extra, ckpt = model_source(source, o.num_classes, o.weights)
    if o.embed_preprocessing:
        from zoo.export.embed import check_embeddable

        check_embeddable(pre, o.opset)
    if o.int8 and ckpt is None:
        raise UsageError("--int8 needs a fine-tuned run or checkpoint: its data gives the calibration and val images")
    thresholds = ckpt.get("thresholds") if ckpt and ckpt.get("task") == "multi-label" else None
    report = export_model(model, spec, pre, labels, output, o, data_fallback=run_data, extra_metadata=extra,
                          thresholds=thresholds)  # fmt: skip
    if not report.passed:
        raise mismatch_error(report)
    if o.int8 or o.fp16 or o.embed_preprocessing or o.triton_repo is not None:
        _add(report, o, model, pre, labels, ckpt, run_data, thresholds)
        atomic.write_json(Path(report.report_path), report.to_dict())  # the report says what was added
    if ckpt is not None:  # a fine-tuned run's model, verified: plugins hear of it (tracking, registries)
        from zoo.catalogue import events

        run_dir = Path(source).expanduser()
        run_dir = run_dir if run_dir.is_dir() else run_dir.parent
        events.Reporter(run_dir=str(run_dir.resolve())).emit(events.EXPORTED, path=report.path,
                                                              report=report.to_dict())  # fmt: skip
        if (run_dir / "config.json").is_file():  # a run folder: its report and `zoo runs` list the model
            record_export(run_dir, report.to_dict())
    return report


def _add(report: ExportReport, o: ExportOptions, model, pre: Preprocess, labels: list[str], ckpt, run_data,
         thresholds) -> None:  # fmt: skip
    """What was asked for beside the verified model, in `report`: INT8, float16, the preprocessing in the graph
    (which replaces the model; an ExportError if it disagrees on raw pixels), a Triton repository."""
    out = Path(report.path)
    check_dir = Path(o.check_data) if o.check_data else None
    if o.int8:
        from zoo.export.quantize import int8_for_run

        report.int8 = int8_for_run(out, sidecars(out)["int8"], ckpt, pre, labels, o.calib_size, o.max_drop,
                                   thresholds, o.calibration, o.exclude, o.int8_retry)  # fmt: skip
    if o.fp16:
        from zoo.export.fp16 import write_fp16

        images, where = load_sample_inputs(pre, 8, check_dir, run_data)
        with torch.no_grad():
            reference = Logits(model)(torch.from_numpy(images)).numpy()
        report.fp16 = write_fp16(out, sidecars(out)["fp16"], images, reference, where, o.min_agreement, thresholds,
                                 o.provider)  # fmt: skip
    if o.embed_preprocessing:
        _embed(report, out, pre, o.top_k, thresholds is not None, check_dir, run_data)
    if o.triton_repo is not None:
        from zoo.export.triton import write_repository

        report.triton = str(write_repository(out, Path(o.triton_repo)))


def _embed(report: ExportReport, out: Path, pre: Preprocess, top_k: int, multi: bool, check_dir, run_data) -> None:
    """--embed-preprocessing: the model at `out` replaced by one that takes raw pixels, checked on real images."""
    from zoo.data.check_images import check_files
    from zoo.export.embed import embed_in_place

    files, _ = check_files(check_dir, run_data)
    report.embedded = embed_in_place(out, pre, top_k, multi, files)
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
