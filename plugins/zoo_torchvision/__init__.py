"""Built-in plugin: every torchvision classification model.

The listing data lives in `models.json`, generated from torchvision's own
metadata by `python -m zoo_torchvision.generate`, so registering these
backbones imports no torch.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from zoo.catalogue.backbone import Backbone, Group, Preprocess, Weights
from zoo.catalogue.hookspecs import hookimpl

DATA = Path(__file__).with_name("models.json")


@cache
def specs() -> tuple[Backbone, ...]:
    doc = json.loads(DATA.read_text(encoding="utf-8"))
    categories = {key: tuple(value) for key, value in doc["categories"].items()}
    out = []
    for m in doc["models"]:
        weights = tuple(
            Weights(
                tag=w["tag"],
                url=w["url"],
                hash_prefix=w["hash_prefix"],
                categories=categories[w["categories"]] if isinstance(w["categories"], str) else tuple(w["categories"]),
                license=w["license"],
                acc1=w["acc1"],
                preprocess=Preprocess.from_dict(w["preprocess"]) if "preprocess" in w else None,
            )
            for w in m["weights"]
        )
        out.append(
            Backbone(
                name=m["name"],
                family=m["family"],
                build="zoo_torchvision.build:build",
                head=m["head"],
                aux_heads=tuple(m["aux_heads"]),
                groups=tuple(Group(name, tuple(members)) for name, members in m["groups"]),
                tags=tuple(m["tags"]),
                description=m["description"],
                preprocess=Preprocess.from_dict(m["preprocess"]),
                weights=weights,
                default_weights=m["default_weights"],
                num_params=m["num_params"],
                min_input_size=m["min_input_size"],
                build_kwargs=m["build_kwargs"],
                features_layout=m["features_layout"],
            )
        )
    return tuple(out)


@hookimpl
def register_backbones(register):
    for spec in specs():
        register(spec)
