"""Building EfficientNet-Lite0/1/2 (imports torch)."""

from __future__ import annotations

import torch
from efficientnet_lite_pytorch import EfficientNet

from zoo.catalogue.backbone import Backbone, Weights
from zoo.catalogue.weights import fetch


def build(spec: Backbone, weights: Weights | None = None, model_name: str = "efficientnet-lite0", **kwargs):
    model = EfficientNet.from_name(model_name, **kwargs)
    if weights is not None:
        state = torch.load(fetch(weights), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model
