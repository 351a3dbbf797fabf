"""Every registered backbone: builds, has its head replaced, and its groups partition its parameters."""

from __future__ import annotations

import pytest
import torch

from zoo.catalogue.registry import get_registry
from zoo.model.build import GroupMap, check_groups, create_model, on_meta_device, replace_head

# the built-in plugins' backbones. ONNX registry entries need their file (a download): tests/test_onnx_import.py
# covers them; timm's 1364 are the zoo-timm plugin's own tests (a representative set) and bench/timm_check_all.py
SPECS = [s for s in get_registry().list() if s.source in ("torchvision", "efficientnet_lite")]
SMALL = 30_000_000  # models up to this size also run a real forward pass on the CPU


# The fast loop builds one backbone of each family, its smallest (and both layouts of the two families whose
# groups are counted over `features` indices, VGG with and without BatchNorm, SqueezeNet 1.0 and 1.1): the
# others are the same layout rule at other depths and widths, and are built with the slow tests.
# RegNet cannot be built on the meta device (it computes widths with .tolist()): the big ones take seconds.
FAST_BUILD = {
    min((s for s in SPECS if s.family == f), key=lambda s: s.num_params or 0).name for f in {s.family for s in SPECS}
}
FAST_BUILD |= {"vgg11_bn", "squeezenet1_0"}
BUILD = [
    s if s.name in FAST_BUILD and not s.family.startswith("regnet") else pytest.param(s, marks=pytest.mark.slow)
    for s in SPECS
]


@pytest.mark.parametrize("spec", BUILD, ids=[s.name for s in SPECS])
def test_build_replace_head_and_groups(spec):
    model = on_meta_device(lambda: create_model(spec, num_classes=3, weights="none"))
    model.eval()
    groups = GroupMap(model, spec).params
    assert list(groups) == list(spec.group_names)
    assert all(groups.values()), "every group holds parameters"
    owned = [name for pairs in groups.values() for name, _ in pairs]
    assert sorted(owned) == sorted(name for name, _ in model.named_parameters())  # a partition
    assert any(name.startswith(spec.head + ".") for name, _ in groups[spec.group_names[-1]])
    size = spec.preprocess.input_size
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(torch.zeros(2, 3, *size, device=device))
    assert tuple(out.shape) == (2, 3)
    for aux in spec.aux_heads:
        try:
            head = model.get_submodule(aux)
        except AttributeError:
            continue
        assert getattr(head, "out_features", None) == 3


SMALL_SPECS = [s for s in SPECS if (s.num_params or 0) <= SMALL]


@pytest.mark.slow
@pytest.mark.parametrize("spec", SMALL_SPECS, ids=[s.name for s in SMALL_SPECS])
def test_small_models_forward_on_cpu_at_low_resolution(spec):
    torch.manual_seed(0)
    model = create_model(spec, num_classes=5, weights="none").eval()
    size = max(64, spec.min_input_size)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


def test_group_check_names_plugin_and_parameter(tiny_registry):
    import dataclasses

    from zoo import Group
    from zoo.core.errors import InvalidBackbone

    spec = tiny_registry.get("tiny")
    model = create_model(spec, weights="none")
    missing = dataclasses.replace(spec, groups=(Group("stem", ("stem",)), Group("head", ("fc",))))
    with pytest.raises(
        InvalidBackbone,
        match=r"plugin 'tinyplugin', backbone 'tiny': parameter 'stage1.0.weight' "
        "belongs to no group",
    ):
        check_groups(model, missing)
    twice = dataclasses.replace(spec, groups=(Group("a", ("re:stage",)), *spec.groups))
    with pytest.raises(InvalidBackbone, match=r"'stage1.0.weight' belongs to 2 groups \(a, stage1\)"):
        check_groups(model, twice)
    typo = dataclasses.replace(spec, groups=(Group("stem", ("stem", "stme")), *spec.groups[1:]))
    with pytest.raises(InvalidBackbone, match="group 'stem' names 'stme', which is not in the model"):
        check_groups(model, typo)
    nohead = dataclasses.replace(spec, head="classifier")
    with pytest.raises(InvalidBackbone, match="head 'classifier' is not a module"):
        replace_head(model, nohead, 2)


def test_head_replacement_keeps_a_conv_head_a_conv():
    spec = get_registry().get("squeezenet1_1")
    model = create_model(spec, num_classes=7, weights="none")
    head = model.get_submodule(spec.head)
    assert isinstance(head, torch.nn.Conv2d) and head.out_channels == 7 and head.kernel_size == (1, 1)


def test_resnet18_groups_are_the_classic_six():
    spec = get_registry().get("resnet18")
    assert spec.group_names == ("stem", "layer1", "layer2", "layer3", "layer4", "head")
