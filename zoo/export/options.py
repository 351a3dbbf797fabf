"""`ExportOptions`: every option of `zoo export`, its default and why, checked before anything is loaded.

Each field is declared once (`zoo.core.options.option`): the CLI builds its flags from them and
`zoo.export.exporter.export(source, output, **options)` takes them as keyword arguments. Nothing
here imports torch, numpy or onnxruntime (`zoo --help` builds the flags from this module).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from zoo.core.errors import UsageError
from zoo.core.options import option
from zoo.runtime.onnx_io import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, PROVIDER_HELP, check_opset, execution_providers

CALIBRATIONS = ("percentile", "entropy", "minmax")  # --int8's calibration methods, the default first
EMBED_TOP_K = 5  # --embed-preprocessing: the top labels the graph returns (zoo.export.embed.embed's default)


@dataclass(frozen=True)
class ExportOptions:
    """Every option of `zoo export` (SOURCE and -o aside); `check` refuses what no export can use."""

    opset: int = option(DEFAULT_OPSET, f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}.")
    batch: str = option("dynamic", "'dynamic' or a fixed batch size.")
    check_data: str | None = option(None, "Images to verify with [default: the run's val set].")
    min_agreement: float = option(1.0, "Least top-1 agreement with torch, 0-1.")
    keep_on_mismatch: bool = option(False, "Keep a failing model as NAME.FAILED.onnx.", negatable=True)
    int8: bool = option(False, "Also write NAME.int8.onnx (static QDQ).")
    calib_size: int = option(64, "--int8: training images to calibrate on.")
    max_drop: float = option(1.0, "--int8: refuse if val accuracy drops more points.")
    num_classes: int | None = option(None, "Backbone export: a new head with N classes.")
    weights: str = option("default", "Backbone export: weights tag, 'none' or a file.")
    mkdir: bool = option(False, "Create the output's folder if it does not exist.")
    calibration: str = option(
        CALIBRATIONS[0], f"--int8: calibration method, {', '.join(CALIBRATIONS[:-1])} or {CALIBRATIONS[-1]}."
    )
    exclude: tuple[str, ...] = option((), "--int8: a node to keep in float (its ONNX name); repeatable.")
    int8_retry: bool = option(
        True,
        "--int8: when the --max-drop gate fails, retry keeping the first conv and the classifier in float, then "
        "with the other calibration methods; every attempt is reported.",
        negatable=True,
    )
    provider: str | None = option(None, PROVIDER_HELP)
    fp16: bool = option(False, "Also write NAME.fp16.onnx (float16, for GPU providers), checked against torch.")
    embed_preprocessing: bool = option(
        False,
        "Put resize, crop and normalisation in the graph: its input is uint8 RGB images[N, H, W, 3], its outputs "
        "probabilities and the top k; checked on raw pixels.",
    )
    top_k: int = option(EMBED_TOP_K, "--embed-preprocessing: how many top labels the graph returns.")
    triton_repo: str | None = option(None, "Also write a Triton Inference Server model repository into this folder.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude or ()))  # a list from a caller, None from typer

    @classmethod
    def checked(cls, options: ExportOptions | None = None, **changes) -> ExportOptions:
        """`options` (or the defaults) with `changes`, checked: how the library calls take their keyword arguments.
        An unknown name is a TypeError, as for any function."""
        options = cls(**changes) if options is None else dataclasses.replace(options, **changes)
        options.check()
        return options

    @property
    def fixed_batch(self) -> int | None:
        """--batch as a number, None for 'dynamic'."""
        return fixed_batch(self.batch)

    def check(self) -> None:
        """Refuse a value no export can use, before the model is loaded or a file written."""
        if not 0 <= self.min_agreement <= 1:
            raise UsageError(f"--min-agreement {self.min_agreement}: a fraction between 0 and 1")
        check_opset(self.opset)
        fixed_batch(self.batch)
        if self.int8:
            if self.calib_size < 1:
                raise UsageError(f"--calib-size {self.calib_size}: must be >= 1 (training images to calibrate on)")
            if not (math.isfinite(self.max_drop) and self.max_drop >= 0):
                raise UsageError(f"--max-drop {self.max_drop}: accuracy points, a finite number >= 0")
            if self.calibration not in CALIBRATIONS:
                raise UsageError(f"--calibration {self.calibration}: choose one of {', '.join(CALIBRATIONS)}")
        if self.embed_preprocessing and (self.int8 or self.fp16):
            raise UsageError(
                "--embed-preprocessing writes a model for raw pixels; add --int8 or --fp16 in another export"
            )
        if self.top_k < 1:
            raise UsageError(f"--top-k {self.top_k}: must be >= 1")
        if self.provider is not None:
            execution_providers(self.provider)


def check_destination(output, options: ExportOptions) -> None:
    """Where the model goes: -o, or without it the --triton-repo it is written into; neither is a UsageError
    (checked by the CLI before torch is imported, and by the library call)."""
    if output is None and options.triton_repo is None:
        raise UsageError("zoo export: give -o/--output FILE.onnx, or --triton-repo DIR to write the model into it")


def fixed_batch(batch: str) -> int | None:
    """--batch as a number, None for 'dynamic'; UsageError for anything else."""
    if batch == "dynamic":
        return None
    try:
        fixed = int(batch)
    except ValueError:
        raise UsageError(f"--batch {batch}: use 'dynamic' or a number") from None
    if fixed < 1:
        raise UsageError(f"--batch {batch}: must be >= 1")
    return fixed
