"""Build an imported ONNX backbone: the verified file, normalised and converted to torch again."""

from __future__ import annotations

from zoo.catalogue.backbone import Backbone, Weights
from zoo.catalogue.weights import fetch
from zoo_onnx.convert import reinitialise, to_torch
from zoo_onnx.graph import load, prepare


def build(spec: Backbone, weights: Weights | None = None, layout: str | None = None, fallbacks: tuple[str, ...] = ()):
    """The converted module; `weights=None` keeps the architecture and re-initialises every layer.

    `fallbacks`: the entry's further URLs of the file, tried after the first when it must be downloaded again.
    Always built on the CPU: onnx2torch copies the file's tensors into its layers, which the
    meta device (used by `zoo info`) cannot hold.
    """
    import torch

    # the file is the weights: sha256-checked on every build
    path = fetch(weights or spec.weights[0], fallbacks=fallbacks)
    where = f"{spec.name} ({path})"
    prepared = prepare(load(path, where), where, input_size=spec.preprocess.input_size, layout=layout)
    with torch.device("cpu"):
        model = to_torch(prepared, where)
        if weights is None:
            reinitialise(model)
    return model
