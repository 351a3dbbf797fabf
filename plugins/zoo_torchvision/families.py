"""Where the head is, and how each torchvision family splits into layer groups.

One rule per family, read off the model itself. These rules run only when the
static metadata (`models.json`) is generated: `zoo list` never imports torch.
Groups are ordered from input to output and the head group is last.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Layout:
    head: str
    groups: list[tuple[str, list[str]]]
    aux_heads: list[str] = field(default_factory=list)


def _has_params(model: nn.Module, path: str) -> bool:
    return any(True for _ in model.get_submodule(path).parameters())


def split_by_resolution(model: nn.Module, container: str, size: int) -> list[list[str]]:
    """Children of `container` in runs of equal output resolution (a new run where it shrinks).

    Runs without parameters (a trailing pool) join the run before them.
    """
    seq = model.get_submodule(container)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        child.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[-2:])))
        for n, child in seq.named_children()
    ]
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model.eval()(torch.zeros(1, 3, size, size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    runs: list[list[str]] = []
    last = None
    for name, _ in seq.named_children():
        if shapes[name] != last:
            runs.append([])
            last = shapes[name]
        runs[-1].append(f"{container}.{name}")
    merged: list[list[str]] = []
    for run in runs:
        if merged and not any(_has_params(model, p) for p in run):
            merged[-1].extend(run)
        else:
            merged.append(run)
    return merged


def _stages(runs: list[list[str]], first: str | None = "stem", prefix: str = "stage") -> list[tuple[str, list[str]]]:
    """Names runs `stem, stage1, stage2, ...`, or `block1, block2, ...` when there is no `first`."""
    if first is None:
        return [(f"{prefix}{i + 1}", run) for i, run in enumerate(runs)]
    return [(first if i == 0 else f"{prefix}{i}", run) for i, run in enumerate(runs)]


def _classifier(model: nn.Module, container: str, head: str) -> list[tuple[str, list[str]]]:
    """Layers of the classifier before the head with parameters form `pre_logits`; then the head."""
    pre = [
        f"{container}.{n}"
        for n, m in model.get_submodule(container).named_children()
        if f"{container}.{n}" != head and any(True for _ in m.parameters())
    ]
    return ([("pre_logits", pre)] if pre else []) + [("head", [head])]


def _features_family(
    head: str, container: str = "features", first: str | None = "stem", prefix: str = "stage"
) -> Callable[[nn.Module, int], Layout]:
    def rule(model: nn.Module, size: int) -> Layout:
        runs = split_by_resolution(model, container, size)
        return Layout(head, _stages(runs, first, prefix) + _classifier(model, head.rsplit(".", 1)[0], head))

    return rule


def resnet(model: nn.Module, size: int) -> Layout:
    layers = [(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)]
    return Layout("fc", [("stem", ["conv1", "bn1"]), *layers, ("head", ["fc"])])


def regnet(model: nn.Module, size: int) -> Layout:
    blocks = [(f"block{i}", [f"trunk_output.block{i}"]) for i in range(1, 5)]
    return Layout("fc", [("stem", ["stem"]), *blocks, ("head", ["fc"])])


def shufflenet(model: nn.Module, size: int) -> Layout:
    return Layout(
        "fc",
        [
            ("stem", ["conv1"]),
            ("stage2", ["stage2"]),
            ("stage3", ["stage3"]),
            ("stage4", ["stage4", "conv5"]),
            ("head", ["fc"]),
        ],
    )


def densenet(model: nn.Module, size: int) -> Layout:
    blocks = [(f"block{i}", [f"features.denseblock{i}", f"features.transition{i}"]) for i in range(1, 4)]
    return Layout(
        "classifier",
        [
            ("stem", ["features.conv0", "features.norm0"]),
            *blocks,
            ("block4", ["features.denseblock4", "features.norm5"]),
            ("head", ["classifier"]),
        ],
    )


def inception_v3(model: nn.Module, size: int) -> Layout:
    children = [n for n, _ in model.named_children()]
    pick = lambda prefix: [n for n in children if n.startswith(prefix)]  # noqa: E731
    return Layout(
        "fc",
        [
            ("stem", pick("Conv2d_")),
            ("mixed5", pick("Mixed_5")),
            ("mixed6", pick("Mixed_6")),
            ("mixed7", pick("Mixed_7")),
            ("head", ["fc", "AuxLogits"]),
        ],
        aux_heads=["AuxLogits.fc"],
    )


def googlenet(model: nn.Module, size: int) -> Layout:
    children = [n for n, _ in model.named_children()]
    pick = lambda prefix: [n for n in children if n.startswith(prefix)]  # noqa: E731
    return Layout(
        "fc",
        [
            ("stem", ["conv1", "conv2", "conv3"]),
            ("inception3", pick("inception3")),
            ("inception4", pick("inception4")),
            ("inception5", pick("inception5")),
            ("head", ["fc", "aux1", "aux2"]),
        ],
        aux_heads=["aux1.fc2", "aux2.fc2"],
    )


def staged_features(head: str, norm: str) -> Callable[[nn.Module, int], Layout]:
    """ConvNeXt and Swin: features = [stem, stage, downsample, stage, downsample, stage, downsample, stage]."""

    def rule(model: nn.Module, size: int) -> Layout:
        n = len(model.features)
        groups = [("stem", ["features.0"]), ("stage1", ["features.1"])]
        for i, start in enumerate(range(2, n, 2), start=2):
            groups.append((f"stage{i}", [f"features.{start}", f"features.{start + 1}"]))
        groups[-1][1].append(norm)
        return Layout(head, [*groups, ("head", [head])])

    return rule


def maxvit(model: nn.Module, size: int) -> Layout:
    stages = [(f"stage{i + 1}", [f"blocks.{i}"]) for i in range(len(model.blocks))]
    return Layout("classifier.5", [("stem", ["stem"]), *stages, *_classifier(model, "classifier", "classifier.5")])


def vit(model: nn.Module, size: int) -> Layout:
    layers = [f"encoder.layers.{n}" for n, _ in model.encoder.layers.named_children()]
    quarter = len(layers) // 4
    blocks = [(f"blocks{i + 1}", layers[i * quarter : (i + 1) * quarter if i < 3 else None]) for i in range(4)]
    blocks[-1][1].append("encoder.ln")
    return Layout(
        "heads.head", [("stem", ["conv_proj", "class_token", "encoder.pos_embedding"]), *blocks, ("head", ["heads"])]
    )


RULES: list[tuple[str, Callable[[nn.Module, int], Layout]]] = [
    (r"(wide_)?res(net|next)", resnet),
    (r"regnet", regnet),
    (r"shufflenet", shufflenet),
    (r"densenet", densenet),
    (r"inception_v3", inception_v3),
    (r"googlenet", googlenet),
    (r"alexnet|vgg", _features_family("classifier.6", first=None, prefix="block")),
    (r"squeezenet", _features_family("classifier.1")),
    (r"mobilenet_v2", _features_family("classifier.1")),
    (r"mobilenet_v3", _features_family("classifier.3")),
    (r"efficientnet", _features_family("classifier.1")),
    (r"mnasnet", _features_family("classifier.1", container="layers")),
    (r"convnext", staged_features("classifier.2", "classifier.0")),
    (r"swin", staged_features("head", "norm")),
    (r"maxvit", maxvit),
    (r"vit_", vit),
]


def layout_for(name: str, model: nn.Module, size: int) -> Layout:
    for pattern, rule in RULES:
        if re.match(pattern, name):
            return rule(model, size)
    raise KeyError(f"no layer-group rule for torchvision model '{name}': add one to RULES")


def family_of(name: str) -> str:
    """resnet18 -> resnet, vgg11_bn -> vgg, efficientnet_v2_s -> efficientnet_v2, ..."""
    for family in (
        "wide_resnet",
        "resnext",
        "efficientnet_v2",
        "mobilenet_v2",
        "mobilenet_v3",
        "swin_v2",
        "inception_v3",
        "shufflenet_v2",
        "regnet_x",
        "regnet_y",
        "maxvit",
        "vit",
    ):
        if name.startswith(family):
            return family
    return re.match(r"[a-z]+", name).group(0)
