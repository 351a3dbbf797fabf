"""What an export or a verification found: `ExportReport` (written as NAME.json beside the model) and the one-line
error a mismatch becomes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from zoo.core.check import CheckResult
from zoo.core.errors import ExportError

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


def mismatch_error(report: ExportReport) -> ExportError:
    rows = [f"batch {c.batch} {c.output}: " + "; ".join(c.failures) for c in report.checks if c.failures]
    if report.exporter == "existing file":
        what = "the INT8 model" if report.precision == "int8" else "it"
        where = f"{report.path}: {what} does not come from this checkpoint, or was changed"
    else:
        kept = f"kept as {report.path}" if report.path.endswith(".FAILED.onnx") else "no model file written"
        where = f"{kept}; report: {report.report_path}"
    return ExportError(f"onnxruntime does not match torch ({where}): " + " | ".join(rows))
