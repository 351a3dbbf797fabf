"""What timm's registry says of an architecture, without building a model: its pretrained tags and preprocessing.

`_registry._model_default_cfgs[arch]` (`.tags[0]` is the tag `create_model(arch, pretrained=True)` loads) and
`get_arch_pretrained_cfgs(arch)`: every pretrained tag with its input size, mean, std, interpolation, crop_pct,
crop_mode, number of classes, Hugging Face hub id and license.
"""

from __future__ import annotations

import math

from timm.models import _registry as R

PREPROCESS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")  # of a tag record


def _r(x, nd=6):
    return round(float(x), nd)


def zoo_crop_pct(size: list[int], crop_pct: float) -> float:
    """timm resizes to floor(size / crop_pct), zoo to round(size / crop_pct): the crop_pct that gives timm's pixels."""
    side = max(size)
    resize = math.floor(side / crop_pct)
    effective = round(side / resize, 6)
    assert round(side / effective) == resize, (size, crop_pct)
    return effective


def label_set(cfg) -> str | None:
    """Which ImageNet label set a tag's classifier predicts ('imagenet-1k', 'imagenet-12k', ...), if any."""
    from timm.data import infer_imagenet_subset

    if not cfg.num_classes:
        return None
    try:
        return infer_imagenet_subset(cfg)
    except Exception:
        return None


def cfg_record(cfg) -> dict:
    """The zoo-relevant fields of one timm PretrainedCfg."""
    size = list(cfg.input_size[1:])
    rec = {
        "input_size": size,
        "mean": [_r(v) for v in cfg.mean],
        "std": [_r(v) for v in cfg.std],
        "interpolation": cfg.interpolation,
        "crop_pct": zoo_crop_pct(size, cfg.crop_pct or 0.875),
        "num_classes": cfg.num_classes,
        "license": cfg.license or "",
    }
    if cfg.crop_mode and cfg.crop_mode != "center":
        rec["crop_mode"] = cfg.crop_mode
    if cfg.hf_hub_id:
        rec["hf_hub_id"] = cfg.hf_hub_id
    elif cfg.url:
        rec["url"] = cfg.url
    labels = label_set(cfg)
    if labels:
        rec["labels"] = labels
    return rec


def registry_data(arch: str) -> dict:
    """An architecture's tags, default tag, preprocessing and classifier, from timm's registry alone."""
    dc = R._model_default_cfgs[arch]
    cfgs = R.get_arch_pretrained_cfgs(arch)  # 'arch.tag' -> PretrainedCfg, in DefaultCfg.tags order
    tags = {}
    for full, cfg in cfgs.items():
        if cfg.has_weights:
            tags[R.split_model_name_tag(full)[1]] = cfg_record(cfg)
    default_cfg = dc.default  # == get_pretrained_cfg(arch)
    return {
        "default_tag": dc.tags[0] if dc.is_pretrained else None,
        "tags": tags,
        "preprocess": {k: v for k, v in cfg_record(default_cfg).items() if k in PREPROCESS},
        "fixed_input_size": bool(default_cfg.fixed_input_size),
        "cfg_min_input_size": list(default_cfg.min_input_size[1:]) if default_cfg.min_input_size else None,
        "classifier": default_cfg.classifier,
        "default_num_classes": default_cfg.num_classes,
    }


def module_of(arch: str) -> str | None:
    """The timm module that defines the architecture (the record's family)."""
    return R._model_to_module.get(arch)
