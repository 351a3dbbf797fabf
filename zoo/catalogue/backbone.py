"""The `Backbone` spec: everything zoo knows about a model, as plain data.

A plugin registers one `Backbone` per model. It holds no tensors and imports no
torch, so listing thousands of them is cheap; the model itself is built lazily
through `build`, a "module:function" string (or a callable).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from zoo.core.errors import InvalidBackbone

# lower case; a plugin may put its backbones in a namespace of their own: `timm/resnet18`
NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*(/[a-z0-9][a-z0-9_.\-]*)?$")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
CROP_MODES = ("center", "squash", "border")
MAX_CROP_PCT = 2.0  # above 1 the crop is larger than the resized image and is padded black (timm's VOLO-448)
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC", "NLC")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the tensor the model was trained on."""

    input_size: tuple[int, int] = (224, 224)  # (height, width) of the crop fed to the model
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # per channel, on 0..1 pixels; one value: grayscale input
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"  # resize filter: nearest | bilinear | bicubic
    crop_pct: float = 0.875  # crop / resize: resize the short side to input/crop_pct, then centre-crop (> 1: pad)
    # how the evaluation resize keeps the aspect ratio (timm's crop_mode): center = short side to
    # resize_size, centre crop; squash = both sides to resize_size, centre crop; border = long side to
    # resize_size, pad with the mean colour, centre crop
    crop_mode: str = "center"
    channel_order: str = "RGB"  # BGR: Caffe-style models; mean and std are then given in BGR order

    @property
    def channels(self) -> int:
        """1 (grayscale input) or 3 (RGB), from the number of mean values."""
        return len(self.mean)

    @property
    def resize_size(self) -> int:
        """Short side before the centre crop (torchvision's `resize_size`)."""
        return round(max(self.input_size) / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, strings): the one serialisation for checkpoints, metadata and JSON."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "channel_order": self.channel_order,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        """The inverse of `to_dict`: keys it does not write keep the defaults; an unknown key raises
        `UnknownPreprocessKey` (an InvalidBackbone, and a TypeError as before)."""
        values = dict(data)
        values.pop("resize_size", None)  # derived, written by older versions
        unknown = sorted(set(values) - set(PREPROCESS_KEYS))
        if unknown:
            raise UnknownPreprocessKey(
                f"preprocess: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(PREPROCESS_KEYS)}"
            )
        for key in ("input_size", "mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        if "crop_pct" in values:
            values["crop_pct"] = float(values["crop_pct"])
        return cls(**values)


PREPROCESS_KEYS = tuple(f.name for f in dataclasses.fields(Preprocess))  # what to_dict writes, from_dict reads


class UnknownPreprocessKey(InvalidBackbone, TypeError):
    """A preprocess mapping with a key `Preprocess` does not have. A TypeError too, which `from_dict` raised
    before (callers that catch it, such as registry overrides, keep working)."""


@dataclass(frozen=True)
class Weights:
    """One set of pretrained weights a backbone can load."""

    tag: str  # name used on the command line: `--weights IMAGENET1K_V1`
    url: str  # http(s):// (downloaded into the torch hub cache) or file://
    sha256: str | None = None  # full hex digest, or None where only `hash_prefix` is published
    hash_prefix: str | None = None  # torchvision's convention: leading sha256 hex in the file name
    categories: tuple[str, ...] = ()  # label of each output of the pretrained head
    license: str = ""
    acc1: float | None = None  # ImageNet-1k top-1 accuracy as published, in percent
    preprocess: Preprocess | None = None  # when these weights want other preprocessing
    num_classes: int | None = None  # outputs of the pretrained head (0: none), when `categories` does not say


@dataclass(frozen=True)
class Group:
    """An ordered slice of the model: module paths (prefixes) or `re:` regexes."""

    name: str
    members: tuple[str, ...]

    def matches(self, param_name: str) -> bool:
        for member in self.members:
            if member.startswith("re:"):
                if re.match(member[3:], param_name):
                    return True
            elif param_name == member or param_name.startswith(member + "."):
                return True
        return False


@dataclass(frozen=True)
class Backbone:
    """A model that zoo can build, fine-tune and export.

    Example:
        Backbone(name="resnet18", family="resnet", build="zoo_torchvision.build:build",
                 head="fc", groups=(Group("stem", ("conv1", "bn1")), ..., Group("head", ("fc",))))
    """

    name: str  # unique, lower case: `zoo finetune NAME`
    family: str  # e.g. "resnet"; used for filtering and docs
    build: str | Callable[..., Any]  # "module:function"; called as build(spec, weights=Weights | None)
    head: str  # dotted path of the classifier that is replaced (Linear, or a 1x1 Conv2d)
    groups: tuple[Group, ...]  # input to output; the last one holds the head
    source: str = ""  # the plugin that registered it (filled in by the registry)
    tags: tuple[str, ...] = ()
    description: str = ""
    preprocess: Preprocess = field(default_factory=Preprocess)
    weights: tuple[Weights, ...] = ()
    default_weights: str | None = None  # tag used when --weights is not given; None: random init
    aux_heads: tuple[str, ...] = ()  # extra classifiers replaced with the head, dropped for export
    num_params: int | None = None  # of the pretrained model (for listing)
    min_input_size: int = 32  # smallest side the architecture accepts
    atol: float = 1e-4  # export check tolerance on logits
    features_layout: str = "NCHW"  # layout of a group's output: NCHW, NHWC (Swin) or NLC (ViT tokens); for cut:
    build_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # "module:function" for a backbone whose head and groups come from a file not yet at hand (an ONNX
    # model-zoo entry): called as resolve(spec) -> complete Backbone when the model is first needed
    resolve: str | None = None
    # "module:function" returning {"leaf_modules": classes, "autowrap_functions": functions} that torch.fx
    # must not trace into when zoo cuts the model (timm's own tracing hints)
    trace_hints: str | None = None
    notes: tuple[str, ...] = ()  # what a user should know: a limit of this model in zoo (shown by `zoo info`)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def get_weights(self, tag: str) -> Weights | None:
        return next((w for w in self.weights if w.tag == tag), None)

    def preprocess_for(self, weights: Weights | None) -> Preprocess:
        return weights.preprocess if weights and weights.preprocess else self.preprocess

    @property
    def where(self) -> str:
        """How errors name this spec: its plugin and its name."""
        return f"plugin '{self.source or '?'}', backbone '{self.name}'"


def load_callable(target: str | Callable[..., Any], spec: Backbone) -> Callable[..., Any]:
    """The function a spec names as "module:function" (its `build` or `resolve`), imported on first use."""
    if callable(target):
        return target
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidBackbone(f"{spec.where}: cannot load builder '{target}': {type(exc).__name__}: {exc}") from None


def with_overrides(spec: Backbone, **changes: Any) -> Backbone:
    """A copy of `spec` with fields changed, checked again."""
    new = dataclasses.replace(spec, **changes)
    check_spec(new)
    return new


def check_preprocess(pre: Preprocess, where: str) -> None:
    """Values an image pipeline can use; raise InvalidBackbone naming `where`."""
    if pre.interpolation not in _INTERPOLATIONS:
        raise InvalidBackbone(f"{where}: interpolation must be one of {', '.join(_INTERPOLATIONS)}")
    if pre.crop_mode not in CROP_MODES:
        raise InvalidBackbone(f"{where}: crop_mode must be one of {', '.join(CROP_MODES)}")
    if pre.channel_order not in CHANNEL_ORDERS:
        raise InvalidBackbone(f"{where}: channel_order must be one of {', '.join(CHANNEL_ORDERS)}")
    if pre.channel_order == "BGR" and pre.channels != 3:
        raise InvalidBackbone(f"{where}: channel_order BGR needs 3 channels")
    if not 0 < pre.crop_pct <= MAX_CROP_PCT or len(pre.input_size) != 2 or min(pre.input_size) < 1:
        raise InvalidBackbone(
            f"{where}: crop_pct must be in (0, {MAX_CROP_PCT}] and input_size (height, width) positive"
        )


def check_spec(spec: Backbone) -> None:
    """Static checks that need no model: raise InvalidBackbone naming the plugin."""
    where = spec.where
    if not isinstance(spec.name, str) or not NAME.match(spec.name):
        raise InvalidBackbone(
            f"{where}: name must be lower case letters, digits, '_', '.', '-' (and at most one '/' for a namespace)"
        )
    pending = spec.resolve is not None and not spec.groups  # head and groups come later
    if not spec.head and not pending:
        raise InvalidBackbone(f"{where}: no head path")
    if not spec.groups and not pending:
        raise InvalidBackbone(f"{where}: no layer groups")
    names = spec.group_names
    if len(set(names)) != len(names):
        raise InvalidBackbone(f"{where}: group names repeat: {', '.join(names)}")
    if spec.groups and not spec.groups[-1].matches(spec.head + ".weight"):
        raise InvalidBackbone(f"{where}: the last group '{names[-1]}' must hold the head '{spec.head}'")
    if len(spec.preprocess.mean) not in (1, 3) or len(spec.preprocess.std) != len(spec.preprocess.mean):
        raise InvalidBackbone(f"{where}: mean and std need 1 (grayscale) or 3 (RGB) values each")
    check_preprocess(spec.preprocess, where)
    tags = [w.tag for w in spec.weights]
    if len(set(tags)) != len(tags):
        raise InvalidBackbone(f"{where}: weights tags repeat: {', '.join(tags)}")
    if spec.default_weights is not None and spec.default_weights not in tags:
        raise InvalidBackbone(f"{where}: default weights '{spec.default_weights}' is not one of its tags")
    if spec.features_layout not in LAYOUTS:
        raise InvalidBackbone(f"{where}: features_layout must be one of {', '.join(LAYOUTS)}")
    if isinstance(spec.build, str) and ":" not in spec.build:
        raise InvalidBackbone(f"{where}: build must be 'module:function', got '{spec.build}'")
