"""`zoo finetune` flags -> the exact TrainConfig and LaunchConfig the library receives (no training runs).

Like fastapi-cli's tests of what reaches uvicorn.run: the library entry point is patched, so each
test takes milliseconds, and a flag whose value drifts on its way (`--epochs 0` once became 10) fails.
"""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

import zoo.cli.training
from zoo.cli import app
from zoo.training.config import LaunchConfig, TrainConfig
from zoo.training.train import FinetuneResult

runner = CliRunner()


@pytest.fixture
def calls(monkeypatch, tmp_path):
    seen = []

    def fake(cfg, launch=None, *, resume=None, overrides=None, callback=None):
        seen.append({"cfg": cfg, "launch": launch, "resume": resume, "overrides": overrides})
        return FinetuneResult(tmp_path, 0.5, 1, 1, ["a", "b"], [], {"wall_seconds": 1.0})

    monkeypatch.setattr(zoo.cli.training, "run_finetune", fake)
    return seen


def invoke(*args):
    result = runner.invoke(app, ["finetune", *args])
    assert result.exit_code == 0, result.output
    return result


def test_defaults_are_the_dataclass_defaults(calls):
    invoke("resnet18", "data/")
    assert calls[0]["cfg"] == TrainConfig(backbone="resnet18", data="data/")
    assert calls[0]["launch"] == LaunchConfig()
    assert calls[0]["resume"] is None


@pytest.mark.parametrize(
    "args, changes",
    [
        (["--epochs", "0"], {"epochs": 0}),  # reaches TrainConfig.check as 0, never a silent 10
        (["--epochs", "3"], {"epochs": 3}),
        (["--policy", "freeze:head"], {"policy": "freeze:head"}),
        (["--policy", "discriminative:0.5"], {"policy": "discriminative:0.5"}),
        (["--weights", "none"], {"weights": "none"}),
        (["--batch-size", "4"], {"batch_size": 4}),
        (["--lr", "0.05"], {"lr": 0.05}),
        (["--optimizer", "sgd", "--momentum", "0.8"], {"optimizer": "sgd", "momentum": 0.8}),
        (["--weight-decay", "0"], {"weight_decay": 0.0}),
        (
            ["--schedule", "step", "--step-size", "2", "--gamma", "0.5"],
            {"schedule": "step", "step_size": 2, "gamma": 0.5},
        ),
        (["--warmup-epochs", "0.5"], {"warmup_epochs": 0.5}),
        (["--label-smoothing", "0"], {"label_smoothing": 0.0}),
        (["--patience", "2"], {"patience": 2}),
        (["--augment", "strong"], {"augment": "strong"}),
        (["--train-size", "176"], {"train_size": 176}),
        (["--cache", "off", "--cache-engine", "torch"], {"cache": "off", "cache_engine": "torch"}),
        (["--cache-augmented", "3"], {"cache_augmented": 3}),
        (["--train-bn"], {"train_bn": True}),
        (["--val-fraction", "0.3", "--seed", "7"], {"val_fraction": 0.3, "seed": 7}),
        (["--deterministic"], {"deterministic": True}),
        (["--device", "cpu", "--amp", "off"], {"device": "cpu", "amp": "off"}),
        (["--no-channels-last"], {"channels_last": False}),
        (["--channels-last"], {"channels_last": True}),
        (["--workers", "0"], {"workers": 0}),
        (["--sync-bn", "--dist-timeout", "30"], {"sync_bn": True, "dist_timeout": 30.0}),
        (["--out", "elsewhere", "--name", "mine"], {"out": "elsewhere", "name": "mine"}),
    ],
)
def test_each_flag_sets_exactly_its_field(calls, args, changes):
    invoke("resnet18", "data/", *args)
    expected = dataclasses.replace(TrainConfig(backbone="resnet18", data="data/"), **changes)
    assert calls[0]["cfg"] == expected


@pytest.mark.parametrize(
    "args, ema",
    [
        (["resnet18", "data/"], None),  # absent: off
        (["resnet18", "data/", "--ema"], 0.999),  # alone, last: the default decay
        (["--ema", "resnet18", "data/"], 0.999),  # alone, before the positionals: they are not taken as its value
        (["resnet18", "data/", "--ema", "--epochs", "3"], 0.999),  # alone, before another option
        (["resnet18", "data/", "--ema", "0.99"], 0.99),
        (["resnet18", "data/", "--ema=0.99"], 0.99),
    ],
)
def test_ema_takes_an_optional_decay(calls, args, ema):
    invoke(*args)
    cfg = calls[0]["cfg"]
    assert (cfg.backbone, cfg.data, cfg.ema) == ("resnet18", "data/", ema)
    if args.count("--ema") and ema == 0.999:  # the default decay is the one the field declares
        assert next(f for f in dataclasses.fields(TrainConfig) if f.name == "ema").metadata["flag_value"] == ema


def test_ema_alone_on_resume_is_an_override(calls):
    invoke("--resume", "runs/x", "--ema")
    assert calls[0]["overrides"] == {"ema": 0.999}


def test_launch_flags_set_the_launch_config(calls):
    invoke("resnet18", "data/", "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1",
           "--master-addr", "10.0.0.1", "--master-port", "29500")  # fmt: skip
    assert calls[0]["launch"] == LaunchConfig(2, 2, 1, "10.0.0.1", 29500)
    assert calls[0]["cfg"] == TrainConfig(backbone="resnet18", data="data/")


def test_output_flags_are_not_training_options(calls):
    invoke("resnet18", "data/", "--quiet")
    invoke("resnet18", "data/", "--json")
    assert calls[0]["cfg"] == calls[1]["cfg"] == TrainConfig(backbone="resnet18", data="data/")


def test_resume_passes_exactly_the_options_typed(calls):
    invoke("--resume", "runs/x", "--epochs", "5", "--lr", "0.1", "--workers", "1")
    call = calls[0]
    assert call["cfg"] is None and call["resume"] == "runs/x"
    # the library applies or refuses each (--lr is a number or "auto": a string until TrainConfig reads it)
    assert call["overrides"] == {"epochs": 5, "lr": "0.1", "workers": 1}


def test_resume_with_backbone_is_refused(calls):
    result = runner.invoke(app, ["finetune", "resnet18", "--resume", "runs/x"])
    assert result.exit_code == 2 and "leave them out" in result.output and not calls


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "--epochs 0: must be >= 1"),
        (["--workers", "-1"], "--workers -1: must be >= 0"),
        (["--patience", "0"], "--patience 0: must be >= 1"),
        (["--weight-decay", "-1"], "--weight-decay -1.0: must be a finite number >= 0"),
        (["--warmup-epochs", "-1"], "--warmup-epochs -1.0: must be a finite number >= 0"),
        (["--gamma", "-1"], "--gamma -1.0: must be a finite number > 0"),
        (["--lr", "nan"], "--lr nan: must be a finite number > 0"),
        (["--optimizer", "adam"], "--optimizer adam: choose one of adamw, sgd"),
        (["--nproc-per-node", "0"], "--nproc-per-node 0: must be >= 1"),
        (["--train-size", "8"], "--train-size 8: must be >= 16"),
    ],
)
def test_bad_values_stop_before_anything_is_built(tmp_path, args, message):
    """The real library: TrainConfig/LaunchConfig checks run before the registry, the data or a run folder."""
    result = runner.invoke(app, ["finetune", "resnet18", str(tmp_path / "missing"), "--out", str(tmp_path / "runs"),
                                 *args])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "runs").exists()
