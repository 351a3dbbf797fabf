"""models.json is generated from torchvision: fail when it no longer matches the installed torchvision."""

from __future__ import annotations

import json

import pytest

from zoo_torchvision import DATA
from zoo_torchvision.generate import dumps, generate

pytestmark = pytest.mark.slow  # subprocesses and whole-model checks: minutes


def test_models_json_matches_torchvision():
    fresh = generate()
    committed = json.loads(DATA.read_text(encoding="utf-8"))
    assert committed["torchvision"] == fresh["torchvision"]
    assert [m["name"] for m in committed["models"]] == [m["name"] for m in fresh["models"]]
    for old, new in zip(committed["models"], fresh["models"], strict=True):
        assert old == new, f"{old['name']} changed: run python -m zoo_torchvision.generate"
    assert DATA.read_text(encoding="utf-8") == dumps(fresh)
