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
    "FinetuneResult",
    "Group",
    "Preprocess",
    "Weights",
    "ZooError",
    "__version__",
    "create_model",
    "evaluate",
    "finetune",
    "get_backbone",
    "get_registry",
    "hookimpl",
    "predict",
]


# These import torch, so they load on first use: `import zoo` stays fast for `zoo list`.
_LAZY = {
    "create_model": "zoo.models",
    "finetune": "zoo.train",
    "resume_run": "zoo.train",
    "FinetuneResult": "zoo.train",
    "evaluate": "zoo.evaluate",
    "predict": "zoo.evaluate",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute '{name}'")
