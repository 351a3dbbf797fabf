"""The evaluation preprocessing: timm's crop modes (center, squash, border) and BGR channel order, everywhere."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoo import Preprocess
from zoo.data.images import preprocess_image


def _photo(w: int = 300, h: int = 200) -> Image.Image:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
def test_crop_modes_give_the_input_size(mode):
    pre = Preprocess(input_size=(96, 96), crop_pct=0.8, crop_mode=mode)
    for size in ((300, 200), (200, 300), (50, 40)):
        assert preprocess_image(_photo(*size), pre).shape == (3, 96, 96)


def test_bgr_is_the_rgb_array_with_channels_reversed():
    rgb = Preprocess(input_size=(64, 64), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    bgr = Preprocess(input_size=(64, 64), mean=(0.3, 0.2, 0.1), std=(0.6, 0.5, 0.4), channel_order="BGR")
    img = _photo()
    np.testing.assert_allclose(preprocess_image(img, bgr), preprocess_image(img, rgb)[::-1], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mode, crop_pct", [("center", 0.9), ("squash", 0.9), ("border", 0.9), ("center", 1.15)])
def test_the_same_pixels_as_timms_eval_transform(mode, crop_pct):
    """zoo's numpy/Pillow pipeline against timm's own transforms_imagenet_eval (torchvision transforms); a
    crop_pct above 1 (timm's VOLO at 448) pads the crop black, as torchvision's CenterCrop does."""
    import math

    from timm.data import create_transform

    size = (160, 160)
    resize = math.floor(size[0] / crop_pct)  # timm floors; zoo's plugin stores the crop_pct that rounds to it
    pre = Preprocess(input_size=size, crop_pct=size[0] / resize, crop_mode=mode, interpolation="bicubic")
    timm_tf = create_transform(input_size=(3, *size), crop_pct=crop_pct, crop_mode=mode, interpolation="bicubic")
    for img in (_photo(300, 200), _photo(200, 331)):
        ours = preprocess_image(img, pre)
        theirs = timm_tf(img).numpy()
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() < 1e-4, (mode, np.abs(ours - theirs).max())


@pytest.mark.slow
def test_bgr_squash_model_predicts_the_same_with_and_without_torch(tmp_path, use_registry):
    """A BGR, squash-resized backbone: training, the exported file's metadata and the torch-free runtime agree."""
    from conftest import make_images, plugin_module, tiny_spec
    from zoo.export.exporter import export
    from zoo.runtime.predictor import Predictor
    from zoo.training.evaluate import predict
    from zoo.training.train import finetune

    pre = Preprocess(input_size=(32, 32), mean=(0.3, 0.4, 0.5), std=(0.2, 0.2, 0.2), crop_pct=1.0,
                     crop_mode="squash", channel_order="BGR")  # fmt: skip
    use_registry(("p", plugin_module("p", tiny_spec(preprocess=pre))))
    data = make_images(tmp_path / "data", per_class=6, size=48)
    run = finetune("tiny", data, epochs=1, weights="none", workers=0, out=str(tmp_path / "runs")).run_dir
    export(run, tmp_path / "m.onnx")
    runtime = Predictor(tmp_path / "m.onnx")
    assert runtime.info.preprocess == pre
    images = sorted(data.glob("*/*.png"))[:4]
    a, b = runtime.predict(images, top_k=2), predict(run, images, top_k=2)
    for x, y in zip(a, b, strict=True):
        assert [t["label"] for t in x["top"]] == [t["label"] for t in y["top"]]
        assert abs(x["top"][0]["probability"] - y["top"][0]["probability"]) < 1e-4
