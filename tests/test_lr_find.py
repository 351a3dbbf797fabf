"""The LR range test: the suggestion rule, `zoo lr-find`, and `zoo finetune --lr auto` (recorded, kept on resume)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_images
from zoo.cli import app
from zoo.model.checkpoint import read_checkpoint
from zoo.training.config import TrainConfig
from zoo.training.lr_find import range_test, suggest
from zoo.training.setup import RunSetup
from zoo.training.train import finetune, resume_run

runner = CliRunner()


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "data", per_class=12)


def _options(tmp_path, **extra):
    return dict(epochs=2, batch_size=8, out=str(tmp_path / "runs"), weights="none", workers=0) | extra


def test_the_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-7, 0, 100)
    x = np.log10(lrs)
    losses = 1.0 - 0.8 / (1 + np.exp(-(x + 3) * 3)) + np.where(x > -0.5, (x + 0.5) * 20, 0)  # drop at 1e-3, blow-up
    assert suggest(list(lrs), list(losses)) == pytest.approx(1e-3, rel=0.2)
    with pytest.raises(Exception, match="too few"):
        suggest([1e-3, 1e-2], [1.0, 0.9])


def test_range_test_restores_the_weights_and_the_optimizer(tmp_path, tiny_registry, images):
    cfg = TrainConfig(backbone="tiny", data=str(images), policy="freeze:1", **_options(tmp_path), name="t")
    setup = RunSetup.build(cfg)
    before = {k: v.clone() for k, v in setup.model.state_dict().items()}
    result = range_test(setup, steps=20)
    assert len(result.lrs) == len(result.losses) <= 20 and result.lrs == sorted(result.lrs)
    assert result.lrs[0] == pytest.approx(1e-7) and result.suggestion in result.lrs
    assert all(torch.equal(v, setup.model.state_dict()[k]) for k, v in before.items())
    assert not setup.optimizer.torch.state  # no momentum or Adam moments left behind
    setup.close()


def test_lr_find_cli_writes_the_plot_and_prints_the_suggestion(tmp_path, tiny_registry, images):
    result = runner.invoke(app, ["lr-find", "tiny", str(images), "--weights", "none", "--policy", "freeze:1",
                                 "--workers", "0", "--out", str(tmp_path / "runs")])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "suggested lr" in result.stdout and "Lightning's rule" in result.stdout
    hint = next(line for line in result.stdout.splitlines() if line.startswith("use it: zoo finetune tiny"))
    assert "--policy freeze:1" in hint and "--weights none" in hint and "--workers 0" in hint  # the set-up tested
    assert "--lr-find-steps" not in hint and "--name" not in hint
    run = tmp_path / "runs" / "tiny-freeze-1-lr-find"
    assert (run / "lr_find.png").stat().st_size > 1000 and (run / "config.json").is_file()
    curve = json.loads((run / "lr_find.json").read_text())
    assert len(curve["lrs"]) == len(curve["losses"]) == curve["steps"] and not (run / "last.pt").exists()
    bad = runner.invoke(app, ["lr-find", "tiny", str(images), "--lr-find-steps", "2"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "--lr-find-steps 2" in bad.stderr


@pytest.mark.slow
def test_finetune_lr_auto_uses_and_records_the_suggestion_and_resume_keeps_it(tmp_path, tiny_registry, images):
    result = finetune("tiny", images, policy="finetune", lr="auto", lr_find_steps=30, name="auto",
                      **_options(tmp_path, epochs=3))  # fmt: skip
    found = result.summary["lr_find"]
    assert found["steps"] <= 30 and "steepest descent" in found["rule"]
    assert (result.run_dir / "lr_find.png").is_file()
    ckpt = read_checkpoint(result.run_dir / "last.pt")
    assert ckpt["lr_find"]["suggestion"] == found["suggestion"]
    assert all(g["base_lr"] == pytest.approx(found["suggestion"]) for g in ckpt["optimizer"]["param_groups"])
    stamp = (result.run_dir / "lr_find.json").stat().st_mtime_ns
    resumed = resume_run(result.run_dir, epochs=4)
    assert resumed.summary["lr_find"] == found and (result.run_dir / "lr_find.json").stat().st_mtime_ns == stamp
    bad = runner.invoke(app, ["finetune", "tiny", str(images), "--lr", "fast"])
    assert bad.exit_code == 2 and "--lr fast: a number > 0, or 'auto'" in bad.stderr
