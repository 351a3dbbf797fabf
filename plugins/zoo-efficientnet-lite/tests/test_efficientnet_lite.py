"""The plugin's own tests, written as any third-party plugin would write them."""

from __future__ import annotations

import pytest

from zoo.catalogue.registry import get_registry
from zoo.testing import check_backbone


@pytest.mark.slow  # builds, cuts at every boundary and exports the real model: seconds
def test_spec_describes_the_model():
    counts = check_backbone(get_registry().get("efficientnet_lite0"), input_size=224)
    assert list(counts) == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert sum(counts.values()) == 4_652_008 - 1_281_000 + 1280 * 3 + 3  # a 3-class head


def test_registered_from_this_package():
    spec = get_registry().get("efficientnet_lite0")
    assert spec.source == "efficientnet_lite"
    assert spec.get_weights("imagenet").url.startswith("file://")
