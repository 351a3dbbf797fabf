"""onnx2torch converters for ops it lacks, added through its own `add_converter` registry.

A plugin adds more the same way (docs/plugins.md, "ONNX op converters"):

    from onnx2torch.node_converters.registry import add_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    @add_converter(operation_type="MyOp", version=13)
    def _(node, graph):
        return OperationConverterResult(torch_module=MyModule(), onnx_mapping=onnx_mapping_from_node(node))
"""

from __future__ import annotations

import torch
from torch import nn

_DONE = False


class GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


def _torch_compat() -> None:
    """onnx2torch 1.5 reads the export opset from `torch.onnx.symbolic_helper.GLOBALS`, which newer torch
    keeps in the TorchScript exporter's own module; without it, exporting Gather, Split or Reduce fails."""
    import torch.onnx.symbolic_helper as helper

    if hasattr(helper, "GLOBALS"):
        return
    try:
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return
    helper.GLOBALS = GLOBALS


def register() -> None:
    """Register zoo's converters once (onnx2torch refuses a second registration)."""
    global _DONE
    if _DONE:
        return
    _torch_compat()
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    def add(op: str, version: int, make) -> None:
        if OperationDescription(domain="", operation_type=op, version=version) in _CONVERTER_REGISTRY:
            return  # a newer onnx2torch has its own

        @add_converter(operation_type=op, version=version)
        def _(node, graph):
            return OperationConverterResult(torch_module=make(node), onnx_mapping=onnx_mapping_from_node(node))

    add("GlobalMaxPool", 1, lambda node: GlobalMaxPool())
    add("Gelu", 20, lambda node: nn.GELU(approximate=node.attributes.get("approximate", "none")))
    add("Mish", 18, lambda node: nn.Mish())
    add("ThresholdedRelu", 10, lambda node: nn.Threshold(node.attributes.get("alpha", 1.0), 0.0))
    _DONE = True
