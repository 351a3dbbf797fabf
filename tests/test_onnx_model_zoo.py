"""The ONNX Model Zoo entries of registry.toml: complete and consistent, and importable once a file is reachable.

The real files are hundreds of megabytes on github.com, out of reach here: each kind of entry is imported from a
stand-in file of the same interface (input name, layout, size, outputs) served on 127.0.0.1, with the entry's own
preprocessing and labels, and its url and sha256 pointed at the stand-in.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from zoo.catalogue.registry import get_registry, load_registry_data, zoo_home
from zoo.cli import app

runner = CliRunner()
MODEL_ZOO = "https://github.com/onnx/models/raw/main/validated/vision/classification/"


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
        assert entry["url"].startswith(MODEL_ZOO) and entry["url"].endswith(f"/{name}.onnx"), name
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
