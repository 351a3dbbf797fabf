"""Running an exported model without torch: onnxruntime, numpy and Pillow only.

The predictor, opening ONNX files in onnxruntime (and the one torch.onnx.export call, loaded on use),
the `zoo.*` metadata of an exported file, probabilities and top-k, streamed batch prediction, and the
contract of a model with its preprocessing inside.

Imports zoo.data, zoo.catalogue and zoo.core; never torch at import time.

`zoo.runtime.Predictor` is public (README.md): it loads on first use, so importing a sibling module
does not open onnxruntime.
"""

from __future__ import annotations

__all__ = ["DEFAULT_TOP_K", "Predictor"]

# labels per image unless asked: zoo predict, Predictor.predict, zoo.predict, zoo serve's ?top_k= (here, not in
# predictions.py, so that the CLI reads it without importing numpy)
DEFAULT_TOP_K = 3


def __getattr__(name: str):
    if name == "Predictor":
        from zoo.runtime.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'zoo.runtime' has no attribute '{name}'")
