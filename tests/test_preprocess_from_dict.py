"""`Preprocess.from_dict`, the inverse of `to_dict`, and the plugins that read preprocessing from their data with it."""

from __future__ import annotations

import json

import pytest

import zoo_torchvision
from zoo.catalogue.backbone import Preprocess
from zoo.core.errors import InvalidBackbone


def test_round_trip_keeps_every_field():
    pre = Preprocess(
        input_size=(160, 128),
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        interpolation="bicubic",
        crop_pct=0.95,
        crop_mode="squash",
        channel_order="BGR",
    )
    again = Preprocess.from_dict(pre.to_dict())
    assert again == pre and again.crop_mode == "squash"
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre  # lists from JSON become tuples


def test_missing_keys_take_the_defaults_and_unknown_ones_are_refused():
    assert Preprocess.from_dict({}) == Preprocess()
    partial = Preprocess.from_dict({"input_size": [96, 96], "crop_pct": 1})
    assert partial == Preprocess(input_size=(96, 96), crop_pct=1.0) and isinstance(partial.crop_pct, float)
    assert Preprocess.from_dict({**Preprocess().to_dict(), "resize_size": 256}) == Preprocess()  # derived: ignored
    with pytest.raises(InvalidBackbone, match=r"unknown key\(s\) size"):
        Preprocess.from_dict({"size": 3})
    with pytest.raises(TypeError):  # what callers caught before (registry overrides)
        Preprocess.from_dict({"size": 3})


def test_torchvision_plugin_keeps_crop_mode(tmp_path, monkeypatch):
    doc = json.loads(zoo_torchvision.DATA.read_text(encoding="utf-8"))
    model = next(m for m in doc["models"] if m["name"] == "resnet18")
    # the shipped data (no crop_mode: torchvision centre-crops) reads as before
    shipped = next(s for s in zoo_torchvision.specs() if s.name == "resnet18")
    assert shipped.preprocess == Preprocess.from_dict(model["preprocess"]) and shipped.preprocess.crop_mode == "center"
    model["preprocess"]["crop_mode"] = "border"
    model["weights"][0]["preprocess"] = {**model["preprocess"], "crop_mode": "squash", "input_size": [176, 176]}
    doc["models"] = [model]
    data = tmp_path / "models.json"
    data.write_text(json.dumps(doc), encoding="utf-8")
    monkeypatch.setattr(zoo_torchvision, "DATA", data)
    (spec,) = zoo_torchvision.specs.__wrapped__()  # uncached: reads DATA now
    assert spec.preprocess.crop_mode == "border"
    assert spec.weights[0].preprocess.crop_mode == "squash" and spec.weights[0].preprocess.input_size == (176, 176)
