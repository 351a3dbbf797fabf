"""zoo: a plugin-based model-zoo registry, fine-tuner and verified ONNX exporter.

Importing `zoo` imports no torch; the parts that need it load on first use.
"""

from __future__ import annotations

from zoo.catalogue.backbone import Backbone, Group, Preprocess, Weights
from zoo.catalogue.hookspecs import hookimpl
from zoo.catalogue.registry import get_backbone, get_registry
from zoo.core.errors import ZooError
from zoo.core.version import __version__

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
    "rank",
]


# These import torch, so they load on first use: `import zoo` stays fast for `zoo list`.
_LAZY = {
    "create_model": "zoo.model.build",
    "finetune": "zoo.training.train",
    "resume_run": "zoo.training.train",
    "FinetuneResult": "zoo.training.train",
    "evaluate": "zoo.training.evaluate",
    "predict": "zoo.training.evaluate",
    "rank": "zoo.select.rank",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute '{name}'")
