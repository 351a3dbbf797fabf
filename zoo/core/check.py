"""The one comparison of two runs of a model (torch against onnxruntime), used by every check.

`zoo export` and `zoo verify` check an ONNX file against torch, `zoo import` checks
a converted module against onnxruntime, and the frozen-prefix cache checks the
onnxruntime prefix against torch: all through `compare_outputs`, with the
backbone's tolerance. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CheckResult:
    """One comparison: shape, max abs difference against the tolerance, top-1 agreement."""

    batch: int
    output: str  # which output, or which inputs ("generated", "real")
    torch_shape: list[int]
    onnx_shape: list[int]
    max_abs_diff: float
    atol: float  # the tolerance applied: atol * max(1, max |reference|)
    top1_agreement: float  # multi-label: the share of rows whose label set (at the thresholds) agrees
    failures: list[str] = field(default_factory=list)
    agreement: str = "top-1"  # or "label-set"

    @property
    def passed(self) -> bool:
        return not self.failures


def compare_outputs(
    reference: np.ndarray,
    got: np.ndarray,
    atol: float,
    *,
    batch: int | None = None,
    output: str = "logits",
    reference_is: str = "torch",
    min_agreement: float | None = None,
    thresholds: list[float] | None = None,
) -> CheckResult:
    """`got` against `reference`: same shape, max abs difference within `atol * max(1, max |reference|)`
    (float32 rounding grows with magnitude: random-init Inception v3 gives logits in the thousands),
    and, for 2-D outputs, the share of rows whose argmax agrees (at least `min_agreement` if given).

    `reference_is` ("torch" or "onnxruntime") names the side taken as right, for the shapes in the result.
    With `thresholds` (a multi-label model's logits), agreement is of label sets: sigmoid >= threshold.
    """
    torch_out, onnx_out = (reference, got) if reference_is == "torch" else (got, reference)
    kind = "label-set" if thresholds is not None else "top-1"
    failures = []
    batch = len(reference) if batch is None else batch
    if list(got.shape) != list(reference.shape):
        failures.append(f"shape {list(got.shape)} != {reference_is} {list(reference.shape)}")
        diff, agree, allowed = float("inf"), 0.0, atol
    else:
        diff = float(np.abs(got.astype(np.float64) - reference.astype(np.float64)).max()) if got.size else 0.0
        if got.ndim == 2 and got.size:
            cutoffs = None
            if thresholds is not None:  # the thresholds as logits
                cutoffs = np.log(np.clip(thresholds, 1e-12, 1 - 1e-12) / (1 - np.clip(thresholds, 1e-12, 1 - 1e-12)))
            agree = float(agreeing_rows(got, reference, cutoffs).mean())
        else:
            agree = 1.0
        allowed = atol * max(1.0, float(np.abs(reference).max()) if reference.size else 1.0)
        if not np.isfinite(diff) or diff > allowed:
            failures.append(f"max abs diff {diff:.3g} > tolerance {allowed:.3g}")
        if min_agreement is not None and agree < min_agreement:
            failures.append(f"{kind} agreement {agree:.1%} < {min_agreement:.1%}")
    return CheckResult(batch, output, list(torch_out.shape), list(onnx_out.shape), diff, allowed, agree, failures,
                       kind)  # fmt: skip


def agreeing_rows(got: np.ndarray, reference: np.ndarray, cutoffs=None) -> np.ndarray:
    """Per row of two (N, C) score arrays, whether they agree: the same argmax, or with `cutoffs` (one per
    column, in the scores' own units) the same set of columns at or above them (multi-label)."""
    if cutoffs is None:
        return got.argmax(-1) == reference.argmax(-1)
    cutoffs = np.asarray(cutoffs)
    return ((got >= cutoffs) == (reference >= cutoffs)).all(-1)


def all_close(references: list[np.ndarray], gots: list[np.ndarray], atol: float) -> bool:
    """Every output pair passes `compare_outputs` (the frozen-prefix cache's check of several activations)."""
    return len(references) == len(gots) and all(
        compare_outputs(r, g, atol).passed for r, g in zip(references, gots, strict=True)
    )
