"""Checks a plugin author runs in their own pytest: does my `Backbone` spec describe my model?

    from zoo.testing import check_backbone

    def test_my_backbone():
        check_backbone(MY_SPEC)

`check_backbone` builds the model without pretrained weights, replaces the head
for a few classes, checks that the layer groups partition the parameters and the
head is in the last one, runs a forward pass, cuts the model at every group
boundary (what the frozen-prefix cache and `cut:` do), and exports it to ONNX with
zoo's verification. Each failure raises AssertionError (or InvalidBackbone) with
the plugin's name and what is wrong.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from zoo.catalogue.backbone import Backbone, check_spec


def check_backbone(
    spec: Backbone,
    num_classes: int = 3,
    input_size: int | None = None,
    export: bool = True,
    cut: bool = True,
    exporter: str = "auto",
) -> dict[str, int]:
    """Assert that `spec` builds, re-heads, partitions, runs, cuts and exports; returns params per group.

    `exporter="torchscript"` tries the faster TorchScript exporter first (`zoo export` tries dynamo first).
    """
    import torch

    from zoo.model.build import GroupMap, create_model, split_outputs

    spec = spec if spec.source else dataclasses.replace(spec, source="(under test)")
    check_spec(spec)
    where = f"plugin '{spec.source}', backbone '{spec.name}'"
    torch.manual_seed(0)
    model = create_model(spec, num_classes=num_classes, weights="none", check=False).eval()
    groups = GroupMap(model, spec)
    counts = groups.counts()
    assert all(counts.values()), f"{where}: empty group(s) {[g for g, n in counts.items() if not n]}"
    from zoo.data.check_images import generated_inputs

    hw = (input_size, input_size) if input_size else tuple(spec.preprocess.input_size)
    pre = dataclasses.replace(spec.preprocess, input_size=hw, crop_pct=1.0)
    # smooth random images, normalised like real ones: what the export check below compares on, too
    calibrate_batchnorm(model, torch.from_numpy(generated_inputs(pre, 16, seed=1)))
    x = torch.from_numpy(generated_inputs(pre, 2))
    with torch.no_grad():
        out = model(x)
    out = split_outputs(out)[0]
    assert tuple(out.shape) == (2, num_classes), (
        f"{where}: output shape {tuple(out.shape)}, expected (2, {num_classes})"
    )
    assert torch.isfinite(out).all(), f"{where}: the forward pass gives non-finite logits"
    if cut:
        from zoo.model.cut import cut_at

        for k in range(1, len(spec.groups)):
            prefix, suffix = cut_at(model, spec, k, groups)
            with torch.no_grad():
                again = suffix(*prefix(x))
            diff = (again - out).abs().max().item()
            assert diff <= 1e-4 * max(1.0, out.abs().max().item()), (
                f"{where}: cut after group '{spec.groups[k - 1].name}' changes the output by {diff:.3g}"
            )
    if export:
        from zoo.export.exporter import export_model

        with tempfile.TemporaryDirectory() as tmp:
            report = export_model(
                model,
                spec,
                pre,
                [f"class_{i}" for i in range(num_classes)],
                Path(tmp) / "check.onnx",
                check_batch=2,
                exporter=exporter,
            )
        failures = [f for c in report.checks for f in c.failures]
        assert report.passed, f"{where}: the ONNX export does not match torch: {failures}"
    return counts


def calibrate_batchnorm(model, images) -> None:
    """Running statistics from `images`, as pretrained weights would have them.

    At random init, BatchNorm's running statistics (mean 0, variance 1) do not match the activations, and
    a deep net's eval-mode logits grow into the thousands, where float32 rounding alone breaks any export
    comparison. Averaged over a few batches, they are what a trained model has: logits of a sane size.
    """
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for batch in images.split(4):
            model(batch)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
