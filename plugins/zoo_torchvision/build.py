"""Building torchvision models (imports torch; only called when a model is built)."""

from __future__ import annotations

import warnings

from torchvision.models import get_model

from zoo.catalogue.backbone import Backbone, Weights
from zoo.catalogue.weights import fetch


def build(spec: Backbone, weights: Weights | None = None, **kwargs):
    """torchvision's own builder, so its per-weights settings (transform_input, image_size...) apply.

    The weights file is fetched and hash-checked by zoo first, into the same torch
    cache path that torchvision then reads, so torchvision never downloads itself.
    """
    if weights is None:
        if spec.family in ("googlenet", "inception_v3"):
            kwargs.setdefault("init_weights", True)  # silences torchvision's "default init will change"
        return get_model(spec.name, weights=None, **kwargs)
    fetch(weights)
    kwargs.pop("image_size", None)  # the weights decide it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return get_model(spec.name, weights=weights.tag, **kwargs)
