"""zoo: a plugin-based model-zoo registry, fine-tuner and verified ONNX exporter.

Importing `zoo` imports no torch; the parts that need it load on first use.
"""

from __future__ import annotations

from importlib import metadata

from zoo.backbone import Backbone, Group, Preprocess, Weights
from zoo.errors import ZooError
from zoo.hookspecs import hookimpl
from zoo.registry import get_backbone, get_registry

try:
    __version__ = metadata.version("zoo-finetune")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Backbone",
    "Group",
    "Preprocess",
    "Weights",
    "ZooError",
    "__version__",
    "create_model",
    "get_backbone",
    "get_registry",
    "hookimpl",
]


def create_model(*args, **kwargs):
    """Build a backbone with weights and a new head: see `zoo.models.create_model`."""
    from zoo.models import create_model as _create_model

    return _create_model(*args, **kwargs)
