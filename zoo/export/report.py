"""What an export or a verification found: `ExportReport` (written as NAME.json beside the model) and the one-line
error a mismatch becomes."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.core.check import CheckResult
from zoo.core.errors import ExportError

log = logging.getLogger(__name__)

REPORT_MARK = "zoo_report"  # a key every report zoo writes has: how zoo knows a .json beside a model is its own
EXPORTS_FILE = "exports.json"  # in a run folder: the report of every model exported from the run, wherever it went


def record_export(run_dir: Path, report: dict[str, Any]) -> None:
    """Keep `report` in RUN/exports.json (one entry per model path, the newest), so that the run's report and
    `zoo runs` show a model exported anywhere (`-o ../model.onnx`), not only into the run folder."""
    from zoo.core.atomic import write_json

    path = run_dir / EXPORTS_FILE
    try:
        entries = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    except (OSError, ValueError):
        entries = []
    entries = [e for e in entries if isinstance(e, dict) and e.get("path") != report.get("path")] + [report]
    try:
        write_json(path, entries)
    except OSError as exc:  # a read-only run folder: the model is verified and written all the same
        log.warning("could not record the export in %s (%s)", path, exc.strerror or exc)


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


def mismatch_error(report: ExportReport) -> ExportError:
    rows = [f"batch {c.batch} {c.output}: " + "; ".join(c.failures) for c in report.checks if c.failures]
    if report.exporter == "existing file":
        what = "the INT8 model" if report.precision == "int8" else "it"
        where = f"{report.path}: {what} does not come from this checkpoint, or was changed"
    else:
        kept = f"kept as {report.path}" if report.path.endswith(".FAILED.onnx") else "no model file written"
        where = f"{kept}; report: {report.report_path}"
    return ExportError(f"onnxruntime does not match torch ({where}): " + " | ".join(rows))
