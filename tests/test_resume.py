"""`--resume` is honest: options are applied or refused by name, never dropped; the stored policy is the one used."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

from conftest import make_images, plugin_module, tiny_spec
from zoo.cli import app
from zoo.core.errors import ResumeError
from zoo.model.checkpoint import read_checkpoint
from zoo.training.train import finetune, resume_run

runner = CliRunner()


@pytest.fixture
def run(tmp_path, tiny_registry):
    data = make_images(tmp_path / "data", per_class=8)
    return finetune("tiny", data, epochs=2, batch_size=8, weights="none", workers=0, out=str(tmp_path / "runs"))


def test_safe_options_are_applied(run):
    result = resume_run(run.run_dir, epochs=4, patience=5, workers=0)
    assert result.epochs_run == 4
    ckpt = read_checkpoint(run.run_dir / "last.pt")
    assert ckpt["config"]["epochs"] == 4 and ckpt["config"]["patience"] == 5
    assert json.loads((run.run_dir / "config.json").read_text())["epochs"] == 4


def test_other_options_are_refused_by_name(run):
    result = runner.invoke(app, ["finetune", "--resume", str(run.run_dir), "--epochs", "4", "--lr", "0.1",
                                 "--policy", "finetune"])  # fmt: skip
    assert result.exit_code == 2
    assert "--lr, --policy cannot change in a resumed run" in result.output
    assert read_checkpoint(run.run_dir / "last.pt")["epoch"] == 2  # nothing trained


def test_epochs_already_reached_says_so(run):
    with pytest.raises(ResumeError, match=r"already trained 2 epoch\(s\), all it was asked for"):
        resume_run(run.run_dir)
    with pytest.raises(ResumeError, match=r"already trained 2 epoch\(s\), more than --epochs 1; pass --epochs N"):
        resume_run(run.run_dir, epochs=1)


@pytest.mark.parametrize(
    "target, message",
    [
        ("missing", "no such run folder"),
        ("file.pt", "not a folder; --resume takes a run folder"),
        ("empty", "not a zoo run folder"),
        ("started", "the run did not finish an epoch (no last.pt)"),
        ("lost", "last.pt is missing, though the run saved 2 epoch(s); put last.pt back"),
    ],
)
def test_resume_of_something_else_says_what_it_is(tmp_path, target, message):
    (tmp_path / "file.pt").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    for name in ("started", "lost"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "lost" / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n2,0.6\n")
    result = runner.invoke(app, ["finetune", "--resume", str(tmp_path / target)])
    assert result.exit_code == 2 and message in result.output
    assert ("did not finish an epoch" in result.output) == (target == "started")


def test_the_stored_policy_is_used_and_a_changed_registry_entry_reported(tmp_path, use_registry, caplog, monkeypatch):
    from zoo.catalogue.registry import zoo_home

    home = zoo_home()
    home.mkdir(parents=True, exist_ok=True)
    (home / "registry.toml").write_text("[policies.mine]\nfrozen = 1\n")
    use_registry(("tinyplugin", plugin_module("tinyplugin", tiny_spec())))
    data = make_images(tmp_path / "data", per_class=8)
    first = finetune("tiny", data, policy="mine", epochs=1, weights="none", workers=0, out=str(tmp_path / "runs"))
    (home / "registry.toml").write_text("[policies.mine]\nfrozen = 2\n")
    use_registry(("tinyplugin", plugin_module("tinyplugin", tiny_spec())))
    with caplog.at_level(logging.WARNING):
        resumed = resume_run(first.run_dir, epochs=2)
    assert "policy 'mine' is defined differently now" in caplog.text
    assert resumed.summary["policy"]["frozen"] == 1  # the run's own, not the edited one
    rows = read_checkpoint(first.run_dir / "last.pt")["history"]
    assert len(rows) == 2


@pytest.mark.slow
def test_auto_scans_the_data_and_builds_the_model_once(tmp_path, use_registry, monkeypatch):
    import zoo.training.setup
    from conftest import build_tiny
    from zoo import Weights
    from zoo.catalogue.weights import sha256_of

    path = tmp_path / "w.pt"
    import torch

    torch.save(build_tiny(None).state_dict(), path)
    spec = tiny_spec(weights=(Weights("w", path.as_uri(), sha256=sha256_of(path)),), default_weights="w")
    use_registry(("p", plugin_module("p", spec)))
    import zoo.model.build

    counts = {"load": 0, "create_model": 0}
    for name, module in (("load", zoo.training.setup), ("create_model", zoo.model.build)):
        original = getattr(module, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    data = make_images(tmp_path / "data", per_class=8)
    result = finetune("tiny", data, policy="auto", epochs=1, workers=0, out=str(tmp_path / "runs"))
    assert result.summary["auto"]["policy"] == result.summary["policy"]["name"]
    assert counts == {"load": 1, "create_model": 1}


def test_a_run_started_before_train_size_resumes_on_its_own_crops(tmp_path, use_registry):
    """A checkpoint whose config has no train_size (an older zoo trained full policies on crops of the input size)
    goes on with crops of the input size, not the smaller default."""
    import torch

    from zoo import Preprocess

    spec = tiny_spec(preprocess=Preprocess(input_size=(64, 64), crop_pct=1.0), min_input_size=16)
    use_registry(("tinyplugin", plugin_module("tinyplugin", spec)))
    data = make_images(tmp_path / "data", per_class=8)
    first = finetune("tiny", data, policy="finetune", epochs=1, weights="none", workers=0, out=str(tmp_path / "runs"))
    assert first.summary["train_size"] == [48, 48]
    last = first.run_dir / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["config"]["train_size"]
    torch.save(ckpt, last)
    resumed = resume_run(first.run_dir, epochs=2)
    assert resumed.summary["train_size"] == [64, 64]
