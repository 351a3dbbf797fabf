"""`zoo info`: a backbone's spec, with what only building it can tell (group sizes, head shape)."""

from __future__ import annotations

from typing import Any

from zoo.catalogue.backbone import Backbone, Preprocess
from zoo.catalogue.registry import get_registry


def _preprocess(p: Preprocess) -> dict[str, Any]:
    return {**p.to_dict(), "resize_size": p.resize_size}


def describe(name: str) -> dict[str, Any]:
    """Everything about one backbone as plain data; builds it on the meta device (no weights, no memory)."""
    from zoo.model.build import GroupMap, build_for_inspection

    spec: Backbone = get_registry().get(name)
    model = build_for_inspection(spec)
    counts = GroupMap(model, spec).counts()
    head = model.get_submodule(spec.head)
    return {
        "name": spec.name,
        "family": spec.family,
        "source": spec.source,
        "description": spec.description,
        "tags": list(spec.tags),
        "head": {
            "path": spec.head,
            "module": type(head).__name__,
            "in_features": getattr(head, "in_features", getattr(head, "in_channels", None)),
            "out_features": getattr(head, "out_features", getattr(head, "out_channels", None)),
        },
        "aux_heads": list(spec.aux_heads),
        "groups": [{"name": g.name, "members": list(g.members), "params": counts[g.name]} for g in spec.groups],
        "num_params": sum(counts.values()),
        "preprocess": _preprocess(spec.preprocess),
        "min_input_size": spec.min_input_size,
        "default_weights": spec.default_weights,
        "weights": [
            {
                "tag": w.tag,
                "url": w.url,
                "sha256": w.sha256,
                "hash_prefix": w.hash_prefix,
                "acc1": w.acc1,
                "num_classes": len(w.categories) if w.categories else w.num_classes,
                "license": w.license,
                "input_size": list(spec.preprocess_for(w).input_size),
                "preprocess": _preprocess(w.preprocess) if w.preprocess else None,
            }
            for w in spec.weights
        ],
        "atol": spec.atol,
        "features_layout": spec.features_layout,
        "notes": list(spec.notes),
    }
