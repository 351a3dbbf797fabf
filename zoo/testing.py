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

from zoo.backbone import Backbone, check_spec


def check_backbone(
    spec: Backbone, num_classes: int = 3, input_size: int | None = None, export: bool = True, cut: bool = True
) -> dict[str, int]:
    """Assert that `spec` builds, re-heads, partitions, runs, cuts and exports; returns params per group."""
    import torch

    from zoo.models import GroupMap, create_model, split_outputs

    spec = spec if spec.source else dataclasses.replace(spec, source="(under test)")
    check_spec(spec)
    where = f"plugin '{spec.source}', backbone '{spec.name}'"
    torch.manual_seed(0)
    model = create_model(spec, num_classes=num_classes, weights="none", check=False).eval()
    groups = GroupMap(model, spec)
    counts = groups.counts()
    assert all(counts.values()), f"{where}: empty group(s) {[g for g, n in counts.items() if not n]}"
    size = input_size or max(spec.min_input_size, min(spec.preprocess.input_size))
    x = torch.randn(2, spec.preprocess.channels, size, size)
    with torch.no_grad():
        out = model(x)
    out = split_outputs(out)[0]
    assert tuple(out.shape) == (2, num_classes), (
        f"{where}: output shape {tuple(out.shape)}, expected (2, {num_classes})"
    )
    assert torch.isfinite(out).all(), f"{where}: the forward pass gives non-finite logits"
    if cut:
        from zoo.cut import cut_at

        for k in range(1, len(spec.groups)):
            prefix, suffix = cut_at(model, spec, k, groups)
            with torch.no_grad():
                again = suffix(*prefix(x))
            diff = (again - out).abs().max().item()
            assert diff <= 1e-4 * max(1.0, out.abs().max().item()), (
                f"{where}: cut after group '{spec.groups[k - 1].name}' changes the output by {diff:.3g}"
            )
    if export:
        from zoo.export import export_model

        pre = dataclasses.replace(spec.preprocess, input_size=(size, size), crop_pct=1.0)
        with tempfile.TemporaryDirectory() as tmp:
            report = export_model(
                model, spec, pre, [f"class_{i}" for i in range(num_classes)], Path(tmp) / "check.onnx", check_batch=2
            )
        failures = [f for c in report.checks for f in c.failures]
        assert report.passed, f"{where}: the ONNX export does not match torch: {failures}"
    return counts
