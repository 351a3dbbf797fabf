"""Generate `models.json`: the static listing data of every torchvision classifier.

    python -m zoo_torchvision.generate          # rewrite models.json
    python -m zoo_torchvision.generate --check  # exit 1 if it no longer matches torchvision

Everything comes from torchvision's own metadata (`get_model_weights`, each
weight's `meta` and `transforms()`) and from the family rules in
`families.py`, applied to the model built on the meta device.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torchvision
from torchvision.models import get_model, get_model_weights, list_models

from zoo.model.build import on_meta_device
from zoo_torchvision.families import family_of, layout_for

DATA = Path(__file__).with_name("models.json")
TRANSFORMER_FAMILIES = {"vit", "swin", "swin_v2", "maxvit"}
TUTORIAL_FAMILIES = {"alexnet", "vgg", "resnet", "squeezenet", "densenet", "inception_v3", "googlenet", "shufflenet_v2"}


def _preprocess(weights) -> dict:
    t = weights.transforms()
    crop, resize = t.crop_size[0], t.resize_size[0]
    return {
        "input_size": [crop, crop],
        "mean": [round(v, 6) for v in t.mean],
        "std": [round(v, 6) for v in t.std],
        "interpolation": t.interpolation.value,
        "crop_pct": round(crop / resize, 6),
    }


def _entry(name: str, imagenet: list[str]) -> dict:
    enum = get_model_weights(name)
    default = enum.DEFAULT
    preprocess = _preprocess(default)
    weights = []
    for w in enum:
        meta = w.meta
        categories = list(meta["categories"] or [])  # vgg16 IMAGENET1K_FEATURES: a features-only checkpoint
        acc1 = meta["_metrics"]["ImageNet-1K"]["acc@1"]
        item = {
            "tag": w.name,
            "url": w.url,
            "hash_prefix": Path(w.url).stem.rsplit("-", 1)[-1],
            "categories": "imagenet-1k" if categories == imagenet else categories,
            "acc1": None if math.isnan(acc1) else acc1,
            "license": "torchvision (BSD-3-Clause); ImageNet-1k training data terms apply",
        }
        if (p := _preprocess(w)) != preprocess:
            item["preprocess"] = p
        weights.append(item)
    family = family_of(name)
    size = preprocess["input_size"][0]
    build_kwargs = {"image_size": size} if family == "vit" and size != 224 else {}
    extra = {"init_weights": True} if family in ("googlenet", "inception_v3") else {}
    model = on_meta_device(lambda: get_model(name, weights=None, **build_kwargs, **extra))
    layout = layout_for(name, model, size)
    num_params = sum(p.numel() for p in model.parameters())
    min_size = max(default.meta.get("min_size", (1, 1)))
    tags = [family, "imagenet-1k"]
    tags.append("transformer" if family in TRANSFORMER_FAMILIES else "cnn")
    if family in TUTORIAL_FAMILIES:
        tags.append("tutorial")
    if num_params < 10_000_000:
        tags.append("mobile")
    return {
        "name": name,
        "family": family,
        "tags": tags,
        "description": f"torchvision {name}, ImageNet-1k acc@1 {default.meta['_metrics']['ImageNet-1K']['acc@1']}",
        "head": layout.head,
        "aux_heads": layout.aux_heads,
        "groups": [[g, members] for g, members in layout.groups],
        "preprocess": preprocess,
        "weights": weights,
        "default_weights": default.name,
        "num_params": num_params,
        "min_input_size": max(min_size, 32),
        "build_kwargs": build_kwargs,
        "features_layout": {"swin": "NHWC", "swin_v2": "NHWC", "vit": "NLC"}.get(family, "NCHW"),
    }


def generate() -> dict:
    """The full metadata document, exactly as it is committed."""
    names = sorted(list_models(module=torchvision.models))
    imagenet = list(get_model_weights("resnet18").DEFAULT.meta["categories"])
    return {
        "generated_by": "python -m zoo_torchvision.generate",
        "torchvision": torchvision.__version__.split("+")[0],
        "categories": {"imagenet-1k": imagenet},
        "models": [_entry(name, imagenet) for name in names],
    }


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    text = dumps(generate())
    if "--check" in argv:
        if DATA.read_text(encoding="utf-8") != text:
            print(f"{DATA} is out of date: run python -m zoo_torchvision.generate", file=sys.stderr)
            return 1
        return 0
    tmp = DATA.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(DATA)
    print(f"wrote {DATA} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
