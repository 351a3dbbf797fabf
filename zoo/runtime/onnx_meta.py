"""The metadata an exported zoo model carries: one writer and one reader of every `zoo.*` key.

An exported file holds everything needed to use it without torch: the labels and
the preprocessing, plus where it came from and how it was checked. `zoo export`
writes these keys, `zoo.runtime.predictor` and `zoo verify` read them, and nothing else
spells a key. The reader trusts nothing: a value that is missing, malformed or
out of range is a `ModelFileError` naming the key.

Keys: zoo.labels (JSON list), zoo.input_size (JSON [h, w]), zoo.resize_size,
zoo.decode_size, zoo.crop_pct, zoo.mean, zoo.std (JSON lists), zoo.interpolation,
zoo.crop_mode (center | squash | border), zoo.channel_order (RGB | BGR),
zoo.catalogue.backbone, zoo.plugin, zoo.version, zoo.precision (fp32 | int8), zoo.task
(single-label | multi-label), zoo.thresholds (multi-label: JSON list, one per label, in [0, 1]:
a label is predicted when its sigmoid probability is at least its threshold), and `zoo.X` for
each entry of `extra` (JSON unless a string): policy, val_acc, epoch, weights, check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.catalogue.backbone import CHANNEL_ORDERS, CROP_MODES, MAX_CROP_PCT, Preprocess
from zoo.core.errors import ModelFileError

PREFIX = "zoo."
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_CORE = (
    "labels",
    "input_size",
    "resize_size",
    "decode_size",
    "crop_pct",
    "mean",
    "std",
    "interpolation",
    "crop_mode",
    "channel_order",
    "backbone",
    "plugin",
    "version",
    "precision",
    "task",
    "thresholds",
)
TASKS = ("single-label", "multi-label")


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model says about itself."""

    labels: tuple[str, ...]
    preprocess: Preprocess
    decode_size: int  # short side images are decoded at before the eval resize (as in training)
    backbone: str = ""
    plugin: str = ""
    zoo_version: str = ""
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)  # policy, val_acc, epoch, weights, check, ...
    task: str = "single-label"
    thresholds: tuple[float, ...] | None = None  # multi-label: one per label

    @property
    def multi_label(self) -> bool:
        return self.task == "multi-label"

    def to_props(self) -> dict[str, str]:
        pre = self.preprocess
        props = {
            "labels": json.dumps(list(self.labels)),
            "input_size": json.dumps(list(pre.input_size)),
            "resize_size": str(pre.resize_size),
            "decode_size": str(self.decode_size),
            "crop_pct": str(pre.crop_pct),
            "mean": json.dumps(list(pre.mean)),
            "std": json.dumps(list(pre.std)),
            "interpolation": pre.interpolation,
            "crop_mode": pre.crop_mode,
            "channel_order": pre.channel_order,
            "backbone": self.backbone,
            "plugin": self.plugin,
            "version": self.zoo_version,
            "precision": self.precision,
            "task": self.task,
        }
        if self.thresholds is not None:
            props["thresholds"] = json.dumps(list(self.thresholds))
        for key, value in self.extra.items():
            props[key] = value if isinstance(value, str) else json.dumps(value)
        return {PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> ModelMetadata:
        """Read and check every key; raise ModelFileError naming the first one that is wrong."""
        if not any(k.startswith(PREFIX) for k in props):
            raise ModelFileError(f"{where}: no zoo metadata; export the model with `zoo export`")

        def get(key: str, default: Any = ...) -> str:
            if PREFIX + key not in props:
                if default is ...:
                    raise ModelFileError(f"{where}: metadata key '{PREFIX}{key}' is missing; export it again")
                return default
            return props[PREFIX + key]

        def loads(key: str) -> Any:
            try:
                return json.loads(get(key))
            except ValueError:
                raise ModelFileError(f"{where}: metadata '{PREFIX}{key}' is not valid JSON") from None

        def bad(key: str, what: str) -> ModelFileError:
            return ModelFileError(f"{where}: metadata '{PREFIX}{key}' = {get(key, '')[:80]!r} is not {what}")

        labels = loads("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise bad("labels", "a list of label strings")
        size = loads("input_size")
        if not (isinstance(size, list) and len(size) == 2 and all(_positive_int(v) for v in size)):
            raise bad("input_size", "[height, width] in pixels")
        mean, std = loads("mean"), loads("std")
        if not (isinstance(mean, list) and len(mean) in (1, 3) and all(_finite(v) for v in mean)):
            raise bad("mean", "1 or 3 numbers")
        if not (isinstance(std, list) and len(std) == len(mean) and all(_finite(v) and v > 0 for v in std)):
            raise bad("std", f"{len(mean)} positive numbers")
        interpolation = get("interpolation", "bilinear")
        if interpolation not in _INTERPOLATIONS:
            raise bad("interpolation", f"one of {', '.join(_INTERPOLATIONS)}")
        crop_mode, channel_order = get("crop_mode", "center"), get("channel_order", "RGB")
        if crop_mode not in CROP_MODES:
            raise bad("crop_mode", f"one of {', '.join(CROP_MODES)}")
        if channel_order not in CHANNEL_ORDERS or (channel_order == "BGR" and len(mean) != 3):
            raise bad("channel_order", "RGB, or BGR with 3 channels")
        try:
            crop_pct = float(get("crop_pct", "0.875"))
            resize = int(get("resize_size"))
            decode = int(get("decode_size", str(resize)))
        except ValueError:
            raise ModelFileError(f"{where}: metadata crop_pct/resize_size/decode_size are not numbers") from None
        if not 0 < crop_pct <= MAX_CROP_PCT or not 0 < resize <= 16384 or not 0 < decode <= 16384:
            raise ModelFileError(
                f"{where}: metadata crop_pct/resize_size/decode_size are out of range; export it again"
            )
        pre = Preprocess(tuple(size), tuple(mean), tuple(std), interpolation, crop_pct, crop_mode, channel_order)
        if pre.resize_size != resize:  # keep the resize the file was verified with
            pre = Preprocess(
                tuple(size), tuple(mean), tuple(std), interpolation, max(size) / resize, crop_mode, channel_order
            )
        task = get("task", "single-label")
        if task not in TASKS:
            raise bad("task", f"one of {', '.join(TASKS)}")
        thresholds = None
        if task == "multi-label":
            thresholds = loads("thresholds")
            if not (isinstance(thresholds, list) and len(thresholds) == len(labels)
                    and all(_finite(t) and 0 <= t <= 1 for t in thresholds)):  # fmt: skip
                raise bad("thresholds", f"{len(labels)} numbers in [0, 1], one per label")
            thresholds = tuple(float(t) for t in thresholds)
        extra = {}
        for key, value in props.items():
            name = key[len(PREFIX) :]
            if key.startswith(PREFIX) and name not in _CORE:
                try:
                    extra[name] = json.loads(value)
                except ValueError:
                    extra[name] = value
        return cls(
            labels=tuple(labels),
            preprocess=pre,
            decode_size=decode,
            backbone=get("backbone", ""),
            plugin=get("plugin", ""),
            zoo_version=get("version", ""),
            precision=get("precision", "fp32"),
            extra=extra,
            task=task,
            thresholds=thresholds,
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 16384


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def write_props(path: Path | str, props: dict[str, str]) -> None:
    """Replace the file's metadata with `props` (onnx protobuf, in place; external tensors stay where they are)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def read_props(path: Path | str) -> dict[str, str]:
    """The file's metadata as a dict (onnx protobuf; no session)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
