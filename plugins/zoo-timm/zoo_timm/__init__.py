"""zoo plugin: every timm architecture as a zoo backbone, named `timm/ARCH`.

Registration reads `models.json` only (generated from timm's own metadata by
`python -m zoo_timm.generate`): no torch, no timm import, so `zoo list` stays fast.

- Names: `timm/<architecture>` (`timm/resnet50`, `timm/vit_base_patch16_224`), so they never collide
  with another plugin's (`resnet50` stays torchvision's). `zoo list --source timm`, `zoo list 'timm/conv*'`.
- Weights: every pretrained tag of the architecture (`--weights a1_in1k`, `--weights fb_in22k_ft_in1k`);
  the default is timm's default tag. Each tag carries its own preprocessing where it differs.
- Head: timm's `pretrained_cfg['classifier']` (a second classifier, such as distilled DeiT's `head_dist`,
  is replaced too). Groups: timm's `group_matcher(coarse=True)`: stem, stages or blocks, pre_logits, head.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from zoo import hookimpl
from zoo.catalogue.backbone import PREPROCESS_KEYS, Backbone, Group, Preprocess, Weights

DATA = Path(__file__).with_name("models.json")
PREFIX = "timm/"
TRACE_HINTS = "zoo_timm.build:trace_hints"
NO_CUT = (
    "torch.fx cannot trace this model, so zoo trains it without the frozen-prefix cache and cannot cut it "
    "(cut:GROUP, zoo advise); every other policy works"
)


def preprocess_of(data: dict[str, Any]) -> Preprocess:
    """A tag's (or the architecture's) preprocessing: its preprocess keys; the others (license, ...) are the tag's."""
    return Preprocess.from_dict({k: v for k, v in data.items() if k in PREPROCESS_KEYS})


def weights_of(tag: str, data: dict[str, Any], arch: str, categories: dict[str, tuple[str, ...]], default) -> Weights:
    pre = preprocess_of(data)
    return Weights(
        tag=tag,
        url=f"hf-hub:{data['hf_hub_id']}" if data.get("hf_hub_id") else data.get("url", ""),
        categories=categories.get(data.get("labels", ""), ()),
        license=data.get("license", ""),
        preprocess=pre if pre != default else None,
        num_classes=data.get("num_classes"),
    )


def spec_of(record: dict[str, Any], categories: dict[str, tuple[str, ...]]) -> Backbone:
    """The Backbone for one architecture's record of models.json."""
    arch = record["name"]
    tags = record.get("tags", {})
    default_tag = record.get("default_tag")
    preprocess = preprocess_of(tags[default_tag] if default_tag in tags else record["preprocess"])
    notes = [] if "fx" not in record else [NO_CUT]
    if default_tag in tags and not tags[default_tag].get("num_classes"):
        notes.append(f"the default weights ({default_tag}) have no classifier: zoo adds a new head")
    family = record.get("module") or "timm"
    return Backbone(
        name=PREFIX + arch,
        family=family,
        build="zoo_timm.build:build",
        head=record["head"],
        aux_heads=tuple(record.get("aux_heads", ())),
        groups=tuple(Group(name, tuple(members)) for name, members in record["groups"]),
        tags=("timm", family) + (() if tags else ("no-weights",)),
        description=f"timm {arch}",
        preprocess=preprocess,
        weights=tuple(weights_of(t, d, arch, categories, preprocess) for t, d in tags.items()),
        default_weights=default_tag if default_tag in tags else None,
        num_params=record.get("num_params"),
        min_input_size=record.get("min_input_size", 32),
        features_layout=record.get("features_layout", "NCHW"),
        build_kwargs={"arch": arch, **record.get("build_kwargs", {})},
        trace_hints=TRACE_HINTS if record.get("trace_hints") else None,
        notes=tuple(notes),
    )


@cache
def specs() -> tuple[Backbone, ...]:
    doc = json.loads(DATA.read_text(encoding="utf-8"))
    categories = {name: tuple(labels) for name, labels in doc["categories"].items()}
    return tuple(spec_of(r, categories) for r in doc["models"] if not r.get("error"))


@hookimpl
def register_backbones(register):
    for spec in specs():
        register(spec)
