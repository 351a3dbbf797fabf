"""`zoo advise` and `--policy auto`: the quadrant logic, the probes, and runs end to end."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_images
from zoo.cli import app
from zoo.core.errors import ZooError
from zoo.training.advise import LARGE_PER_CLASS, boundary_features, decide, probe_accuracy

runner = CliRunner()
GROUPS = ("stem", "stage1", "stage2", "stage3", "head")


@pytest.mark.parametrize(
    "per_class, probes, policy, quadrant",
    [
        (
            {"a": 100, "b": 120},
            {"stem": 0.6, "stage1": 0.7, "stage2": 0.8, "stage3": 0.95},
            "feature-extract",
            "small and similar",
        ),
        (
            {"a": 100, "b": 120},
            {"stem": 0.6, "stage1": 0.9, "stage2": 0.85, "stage3": 0.8},
            "freeze:2",
            "small and different",
        ),
        (
            {"a": 900, "b": 800},
            {"stem": 0.6, "stage1": 0.7, "stage2": 0.8, "stage3": 0.95},
            "finetune",
            "large and similar",
        ),
        (
            {"a": 900, "b": 800},
            {"stem": 0.6, "stage1": 0.9, "stage2": 0.7, "stage3": 0.6},
            "finetune",
            "large and different",
        ),
    ],
)
def test_quadrants(per_class, probes, policy, quadrant):
    size, got_quadrant, similar, got_policy, evidence = decide(per_class, probes, GROUPS)
    assert (got_quadrant, got_policy) == (quadrant, policy)
    assert size == quadrant.split()[0]
    assert similar == quadrant.endswith("similar")
    assert len(evidence) >= 3 and "chance 0.500" in evidence[1]


def test_thresholds():
    similar_probes = {"stem": 0.5, "stage1": 0.5, "stage2": 0.9, "stage3": 0.885}  # 1.5 points below the best
    assert decide({"a": 10, "b": 10}, similar_probes, GROUPS)[3] == "feature-extract"
    different = {**similar_probes, "stage3": 0.87}  # 3 points below
    assert decide({"a": 10, "b": 10}, different, GROUPS)[3] == "freeze:3"
    assert decide({"a": LARGE_PER_CLASS, "b": LARGE_PER_CLASS}, similar_probes, GROUPS)[0] == "large"
    assert decide({"a": LARGE_PER_CLASS, "b": LARGE_PER_CLASS - 1}, similar_probes, GROUPS)[0] == "small"
    tie = {"stem": 0.9, "stage1": 0.9, "stage2": 0.9, "stage3": 0.9}
    assert decide({"a": 10, "b": 10}, tie, GROUPS)[3] == "feature-extract"  # ties go to the deeper group


def test_no_probes_gives_a_clear_safe_answer():
    size, quadrant, similar, policy, evidence = decide({"a": 1, "b": 1}, {}, GROUPS)
    assert size == "small"
    assert (quadrant, similar, policy) == ("small, similarity unknown", None, "feature-extract")
    assert "could not be probed" in evidence[-1]


@pytest.mark.slow
def test_probe_accuracy_separates_what_is_separable():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    separable = torch.randn(60, 16, generator=gen) + 4 * torch.nn.functional.one_hot(labels, 16).float()
    assert probe_accuracy(separable, labels) > 0.95
    noise = torch.randn(60, 16, generator=gen)
    assert probe_accuracy(noise, labels) < 0.6


def test_boundary_features_for_every_group_but_the_head(tiny_registry, tmp_path):
    from zoo.data.split import scan
    from zoo.model.build import create_model
    from zoo.training.loaders import ImageDataset, build_transform

    spec = tiny_registry.get("tiny")
    split = scan(make_images(tmp_path, per_class=4))
    loader = torch.utils.data.DataLoader(ImageDataset(split.train, build_transform(spec.preprocess)), batch_size=3)
    feats, labels = boundary_features(create_model(spec, num_classes=2, weights="none"), spec, loader)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"stem": (6, 8), "stage1": (6, 16), "stage2": (6, 32)}
    assert labels.tolist() == [s.label for s in split.train]


@pytest.mark.slow
def test_advise_cli_on_real_weights(tmp_path):
    data = make_images(tmp_path, per_class=6, size=48)
    result = runner.invoke(app, ["advise", "efficientnet_lite0", str(data), "--json"])
    assert result.exit_code == 0, result.output
    advice = json.loads(result.stdout)
    assert advice["size"] == "small" and advice["per_class"] == {"cats": 5, "dogs": 5}
    assert list(advice["probes"]) == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert advice["policy"] in ("feature-extract", *(f"freeze:{k}" for k in range(1, 6)))
    table = runner.invoke(app, ["advise", "lite0", str(data)])
    assert "recommended" in table.output and "linear probe" in table.output


def test_degenerate_data_gets_an_answer_not_a_crash(tmp_path):
    data = make_images(tmp_path, per_class=1, layout="train/val", size=48)
    result = runner.invoke(app, ["advise", "efficientnet_lite0", str(data), "--json"])
    assert result.exit_code == 0, result.output
    advice = json.loads(result.stdout)
    assert advice["policy"] == "feature-extract" and advice["probes"] == {}
    assert any("fewer than 2 train images" in line for line in advice["evidence"])


def test_advise_needs_pretrained_weights(tmp_path):
    from zoo.training.advise import advise

    with pytest.raises(ZooError, match="need pretrained weights"):
        advise("efficientnet_lite0", make_images(tmp_path), weights="none")


@pytest.mark.slow
def test_finetune_auto_records_its_choice(tmp_path):
    from zoo.model.checkpoint import read_checkpoint
    from zoo.training.train import finetune, resume_run

    data = make_images(tmp_path / "data", per_class=6, size=48)
    result = finetune("efficientnet_lite0", data, policy="auto", epochs=1, out=str(tmp_path / "runs"), workers=0)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["auto"]["policy"] == summary["policy"]["name"]
    assert summary["auto"]["evidence"]
    assert read_checkpoint(result.run_dir / "last.pt")["policy"]["name"] == summary["auto"]["policy"]
    resumed = resume_run(result.run_dir, epochs=2)
    assert resumed.summary["policy"]["name"] == summary["auto"]["policy"] and resumed.summary["auto"] is None
