"""Registry lookups, filters, aliases, registry.toml data and the user's overrides."""

from __future__ import annotations

import pytest

from conftest import TUTORIAL_MODELS, plugin_module, tiny_spec
from zoo.catalogue import registry as reg
from zoo.core.errors import RegistryError, UnknownBackbone


def test_every_torchvision_classifier_and_the_lites_are_listed():
    import json

    from zoo_torchvision import DATA

    names = {m["name"] for m in json.loads(DATA.read_text())["models"]}
    listed = {s.name for s in reg.get_registry().list() if s.source in ("torchvision", "efficientnet_lite")}
    assert len(names) == 80
    assert names | {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} == listed
    for family in (
        *TUTORIAL_MODELS,
        "mobilenet_v3_large",
        "efficientnet_v2_s",
        "regnet_y_400mf",
        "convnext_tiny",
        "vit_b_16",
        "swin_t",
        "maxvit_t",
        "mnasnet1_0",
        "resnext50_32x4d",
        "wide_resnet50_2",
    ):
        assert family in listed


def test_list_filters_by_glob_substring_tag_and_source():
    r = reg.get_registry()
    assert [s.name for s in r.list("resnet1*", source="torchvision")] == ["resnet101", "resnet152", "resnet18"]
    assert "resnet18-v1-7" in {s.name for s in r.list("resnet1*")}  # and the ONNX Model Zoo's
    assert {s.name for s in r.list("lite", source="efficientnet_lite")} == {
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    }
    assert "efficientnet-lite4-11" in {s.name for s in r.list("lite")}  # the ONNX Model Zoo's, among others
    tutorial = {s.family for s in r.list(tag="tutorial")}
    assert tutorial == {
        "alexnet",
        "vgg",
        "resnet",
        "squeezenet",
        "densenet",
        "inception_v3",
        "googlenet",
        "shufflenet_v2",
    }
    assert [s.name for s in r.list(source="efficientnet_lite")] == [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ]
    assert r.list("resnet18", source="efficientnet_lite") == []


def test_aliases_resolve_and_unknown_names_suggest():
    r = reg.get_registry()
    assert r.get("lite0").name == "efficientnet_lite0"
    with pytest.raises(UnknownBackbone, match=r"unknown backbone 'resnet19' \(did you mean resnet18\?\)") as err:
        r.get("resnet19")
    assert err.value.exit_code == 2
    with pytest.raises(UnknownBackbone, match="zoo list"):
        r.get("qqqqqq")


def test_user_registry_adds_aliases_and_overrides(tmp_path, monkeypatch):
    home = tmp_path / "zoohome"
    home.mkdir()
    (home / "registry.toml").write_text(
        '[aliases]\nmine = "resnet18"\n'
        '[defaults]\nweights = "none"\n'
        '[backbones.resnet18]\ndefault_weights = "IMAGENET1K_V1"\ntags = ["resnet", "favourite"]\n'
        "[backbones.resnet18.preprocess]\ninput_size = [160, 160]\n"
    )
    monkeypatch.setenv("ZOO_HOME", str(home))
    r = reg.build_registry()
    spec = r.get("mine")
    assert spec.name == "resnet18"
    assert spec.tags == ("resnet", "favourite")
    assert spec.preprocess.input_size == (160, 160)
    assert spec.preprocess.mean == (0.485, 0.456, 0.406)  # untouched fields keep the plugin's value
    assert r.data["defaults"]["weights"] == "none"
    assert home / "registry.toml" in r.files


@pytest.mark.parametrize(
    "text, message",
    [
        ("[aliases\n", "not valid TOML"),
        ("[colours]\nred = 1\n", "unknown table"),
        ("[backbones.resnet18]\nhead = 'fc2'\n", "cannot override head"),
        ("[backbones.resnet18]\ndefault_weights = 'NOPE'\n", "default weights 'NOPE'"),
        ("[backbones.resnet18.preprocess]\nsize = 3\n", "preprocess"),
    ],
)
def test_bad_user_registry_is_named(tmp_path, monkeypatch, text, message):
    (tmp_path / "registry.toml").write_text(text)
    monkeypatch.setenv("ZOO_HOME", str(tmp_path))
    with pytest.raises(RegistryError, match=message):
        reg.build_registry()


def test_zoo_home_defaults_to_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("ZOO_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert reg.zoo_home() == tmp_path / "zoo"


def test_load_plugins_env_restricts_plugins(monkeypatch):
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "efficientnet_lite")
    r = reg.build_registry()
    assert list(r.plugins) == ["efficientnet_lite"]
    assert [s.name for s in r.list()] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "")
    assert reg.build_registry().list() == []


def test_policies_hook_collects_plugin_policies(use_registry):
    def factory(arg=None):
        return ("my-policy", arg)

    r = use_registry(
        ("p1", plugin_module("p1", policies=[("mine", factory)])),
        ("p2", plugin_module("p2", policies=[("mine", factory)])),
    )
    assert r.policies["mine"].source == "p1"
    assert r.policies["mine"].factory("3") == ("my-policy", "3")
    assert r.plugins["p1"].policies == ["mine"]
    assert "already registered by 'p1'" in r.plugins["p2"].errors[0]


def test_duplicate_backbone_is_refused_by_name(use_registry):
    r = use_registry(("a", plugin_module("a", tiny_spec())), ("b", plugin_module("b", tiny_spec())))
    assert r.get("tiny").source == "a"
    assert "already registered by 'a'" in r.plugins["b"].errors[0]
