"""The ONNX Model Zoo entries of registry.toml: complete and consistent, importable once a file is reachable, and
their declared preprocessing right on real inputs wherever the model file can be had here.

The real files are hundreds of megabytes on the Hugging Face hub, out of reach here: each kind of entry is imported
from a stand-in file of the same interface (input name, layout, size, outputs) served on 127.0.0.1, with the entry's
own preprocessing and labels, and its url and sha256 pointed at the stand-in.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from zoo.catalogue.registry import get_registry, load_registry_data, zoo_home
from zoo.cli import app

runner = CliRunner()
MODEL_ZOO = "https://github.com/onnx/models/raw/main/"  # no longer serves the files (LFS), kept as the fallback
HF_MIRROR = "https://huggingface.co/onnxmodelzoo/legacy_models/resolve/main/"  # the same tree, path for path
TREE = "validated/vision/classification/"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _entries() -> dict:
    data, _ = load_registry_data()
    return data["onnx"]


def test_every_fp32_classifier_is_listed_with_url_sha256_size_preprocessing_and_labels():
    entries = _entries()
    assert len(entries) == 94
    registry = get_registry()
    listed = {s.name for s in registry.list(source="onnx")}
    assert set(entries) <= listed
    for name, entry in entries.items():
        mirror, github = entry["url"]  # the Hugging Face mirror first, GitHub's LFS URL as the fallback
        path = github.removeprefix(MODEL_ZOO)
        assert path.startswith(TREE) and path.endswith(f"/model/{name}.onnx") and mirror == HF_MIRROR + path, name
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) and entry["size"] > 10_000, name
        spec = registry.backbones[name]  # listed without a download: no registry.get, which would import
        labels = spec.weights[0].categories
        expected = 10 if name.startswith("mnist") else 200 if name.startswith("rcnn") else 1000
        assert len(labels) == expected, (name, len(labels))
        assert spec.preprocess.channels == (1 if name.startswith("mnist") else 3)
        assert "onnx-model-zoo" in spec.tags and not spec.groups  # imported on first use
    assert registry.backbones["googlenet-12"].preprocess.channel_order == "BGR"
    assert registry.backbones["googlenet-12"].preprocess.crop_mode == "squash"
    assert registry.backbones["bvlcalexnet-12"].notes  # its README states no preprocessing: the entry says so
    assert entries["efficientnet-lite4-11"]["layout"] == "NHWC"
    assert registry.backbones["resnet50-v1-12"].weights[0].categories[:2] == ("tench", "goldfish")
    assert registry.backbones["resnet50-v1-12"].weights[0].url == HF_MIRROR + TREE + "resnet/model/resnet50-v1-12.onnx"
    assert registry.backbones["resnet50-v1-12"].build_kwargs["fallbacks"] == (entries["resnet50-v1-12"]["url"][1],)


def test_caffe2_densenet_and_resnet50_take_what_their_sources_say():
    """The preprocessing registry.toml's comments settle from the primary sources (shicai/DenseNet-Caffe, OpenVINO's
    densenet-121-caffe2 and resnet-50-caffe2): what a 0-255 BGR pixel becomes must be exactly theirs."""
    registry = get_registry()
    pixel = (200.0, 100.0, 50.0)  # B, G, R on 0..255
    for name in [n for n in _entries() if n.startswith("densenet-")]:
        pre = registry.backbones[name].preprocess
        assert pre.channel_order == "BGR" and pre.input_size == (224, 224) and pre.resize_size == 256, name
        ours = [(p / 255 - m) / s for p, m, s in zip(pixel, pre.mean, pre.std, strict=True)]
        theirs = [(p - m) * 0.017 for p, m in zip(pixel, (103.94, 116.78, 123.68), strict=True)]  # shicai's
        assert ours == pytest.approx(theirs, abs=2e-4), name
        assert registry.backbones[name].weights[0].acc1 == 74.9  # OpenVINO's, measured with this preprocessing
    for name in [n for n in _entries() if n.startswith("resnet50-caffe2-")]:
        pre = registry.backbones[name].preprocess
        assert pre.channel_order == "BGR" and pre.resize_size == 256, name
        ours = [(p / 255 - m) / s for p, m, s in zip(pixel, pre.mean, pre.std, strict=True)]
        mean, scale = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)  # OpenVINO's resnet-50-caffe2, BGR order
        assert ours == pytest.approx([(p - m) / s for p, m, s in zip(pixel, mean, scale, strict=True)], abs=2e-4)


class StandIn(nn.Module):
    """A classifier with the interface of a Model Zoo file: NCHW or NHWC input, N outputs (as N x 1 x 1 if asked)."""

    def __init__(self, channels: int, outputs: int, nhwc: bool, softmax: bool, spatial: bool):
        super().__init__()
        self.nhwc, self.softmax, self.spatial = nhwc, softmax, spatial
        self.body = nn.Sequential(
            nn.Conv2d(channels, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=4, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Conv2d(16, outputs, 1) if spatial else nn.Linear(16, outputs)  # DenseNet's fc6 is a 1x1 conv

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        features = self.body(x)
        y = self.fc(features[:, :, None, None]) if self.spatial else self.fc(features)
        return y.softmax(1) if self.softmax else y


KINDS = {  # entry: (softmax output, N x C x 1 x 1 output)
    "resnet18-v1-7": (False, False),
    "efficientnet-lite4-11": (True, False),
    "googlenet-12": (True, False),
    "densenet-12": (False, True),
    "rcnn-ilsvrc13-9": (False, False),
    "mnist-8": (False, False),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KINDS))
def test_an_entry_of_each_kind_imports_from_a_local_server(name, served, use_registry, tmp_path):
    root, base = served
    entry = dict(_entries()[name])
    spec = get_registry().backbones[name]
    pre = spec.preprocess
    softmax, spatial = KINDS[name]
    nhwc = entry.get("layout") == "NHWC"
    model = StandIn(pre.channels, len(spec.weights[0].categories), nhwc, softmax, spatial).eval()
    shape = (1, *pre.input_size, pre.channels) if nhwc else (1, pre.channels, *pre.input_size)
    path = root / f"{name}.onnx"
    torch.onnx.export(model, (torch.randn(*shape),), str(path), dynamo=False, opset_version=13,
                      input_names=["data_0"], output_names=["prob_1"])  # fmt: skip
    entry["url"] = f"{base}/{name}.onnx"
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    home = zoo_home()
    home.mkdir(parents=True, exist_ok=True)
    lines = [f'[onnx."{name}"]'] + [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
    (home / "registry.toml").write_text("\n".join(lines) + "\n")
    use_registry()
    result = runner.invoke(app, ["import", name, "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"]
    imported = get_registry().get(name)
    assert imported.groups and imported.preprocess == pre  # the entry's preprocessing, kept
    assert (home / "onnx" / name / "layout.json").is_file()


# The entries whose model file can be had here: a file under ../shared/models with the entry's sha256, and shared's
# mnist-8.onnx, another revision of the Model Zoo's mnist-8 (26463 bytes, CNTK 2.5.1; tests/test_onnx_import.py).
REVISIONS = {"mnist-8": SHARED / "models" / "mnist-8.onnx"}


def _files_here() -> dict[str, Path]:
    shared = sorted((SHARED / "models").glob("*.onnx"))
    by_sha256 = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in shared}
    found = {name: by_sha256[e["sha256"]] for name, e in _entries().items() if e["sha256"] in by_sha256}
    return {**{name: p for name, p in REVISIONS.items() if p.is_file()}, **found}


def _handwritten_digits(root: Path, per_class: int = 20) -> list[tuple[Path, str]]:
    """Real handwritten digits (scikit-learn's bundled UCI digits, 8x8 scans of 43 writers) drawn as MNIST's are:
    white on black, the digit in a 20x20 box centred in 28x28, saved as the PNG files a user would have."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    files, seen = [], dict.fromkeys(range(10), 0)
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if seen[int(label)] == per_class:
            continue
        seen[int(label)] += 1
        digit = Image.fromarray((pixels * 255 / 16).astype("uint8")).resize((20, 20), Image.Resampling.BILINEAR)
        canvas = Image.new("L", (28, 28), 0)
        canvas.paste(digit, (4, 4))
        canvas.convert("RGB").save(root / f"{i}.png")
        files.append((root / f"{i}.png", str(label)))
    return files


def _insect_photos(per_class: int = 10) -> list[tuple[Path, str]]:
    """Real photos of two ImageNet classes: the hymenoptera validation ants and bees."""
    val = SHARED / "data" / "hymenoptera" / "val"
    return [(p, label) for kind, label in (("ants", "ant"), ("bees", "bee"))
            for p in sorted((val / kind).glob("*.jpg"))[:per_class]]  # fmt: skip


@pytest.mark.parametrize("name", sorted(_files_here()))
def test_declared_preprocessing_gets_the_top1_right_on_real_inputs(name, tmp_path):
    """An entry's declared preprocessing, applied by zoo's own evaluation code to real inputs of classes the model
    knows, through the real model file: the top-1 must be right. For entries whose file cannot be had here, the
    evidence comment beside the entry in registry.toml is the check."""
    import numpy as np
    import onnxruntime

    from zoo.data.images import load_for_eval
    from zoo_onnx import labels_of, preprocess_of

    entry = _entries()[name]
    pre, labels = preprocess_of(entry), labels_of(entry)
    inputs = _handwritten_digits(tmp_path) if pre.channels == 1 else _insect_photos()
    session = onnxruntime.InferenceSession(str(_files_here()[name]), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    right, top_logits = 0, []
    for path, label in inputs:
        x = load_for_eval(path, pre)[None]
        if entry.get("layout") == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        scores = session.run(None, {feed: np.ascontiguousarray(x)})[0].ravel()
        right += labels[int(scores.argmax())] == label
        top_logits.append(float(scores.max()))
    assert right / len(inputs) >= 0.85, f"{name}: top-1 right on {right} of {len(inputs)} real inputs"
    if name.startswith("mnist"):
        # the scale it was trained at: logits in the tens on 0..1 pixels (thousands on raw 0-255 pixels)
        assert float(np.median(top_logits)) < 100, top_logits[:5]
