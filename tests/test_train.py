"""The training loop: run folder, resume, the cache's equivalence, interruption, evaluate and predict."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from conftest import install_tiny_plugin, make_images
from zoo.cli import app
from zoo.core.errors import Interrupted
from zoo.model.checkpoint import read_checkpoint
from zoo.training.evaluate import evaluate, predict
from zoo.training.train import Trainer, finetune, resume_run

runner = CliRunner()


def _options(tmp_path, **extra):
    options = dict(epochs=3, batch_size=8, out=str(tmp_path / "runs"), weights="none", workers=0)
    options.update(extra)
    return options


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "data", per_class=12)


@pytest.mark.plots
def test_run_folder_holds_everything(tmp_path, tiny_registry, images):
    result = finetune("tiny", images, policy="finetune", **_options(tmp_path))
    files = {p.name for p in result.run_dir.iterdir()}
    assert {
        "best.pt",
        "last.pt",
        "config.json",
        "metrics.csv",
        "summary.json",
        "curves.png",
        "confusion_matrix.png",
        "predictions.png",
    } <= files
    assert not [f for f in files if ".tmp" in f]
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 3
    assert summary["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    ckpt = torch.load(result.run_dir / "best.pt", weights_only=True)  # plain data only
    assert ckpt["backbone"] == "tiny" and ckpt["plugin"] == "tinyplugin"
    assert ckpt["classes"] == ["cats", "dogs"] and tuple(ckpt["preprocess"]["input_size"]) == (32, 32)
    assert ckpt["policy"]["name"] == "finetune" and ckpt["epoch"] == summary["best_epoch"]
    assert json.loads((result.run_dir / "config.json").read_text())["batch_size"] == 8


def _stop_at_epoch(monkeypatch, stop: int):
    """Make training raise KeyboardInterrupt when epoch `stop` (0-based) starts, as Ctrl-C would."""
    original = Trainer._train_epoch

    def train_epoch(self, epoch):
        if epoch == stop:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    return lambda: monkeypatch.setattr(Trainer, "_train_epoch", original)


@pytest.mark.parametrize(
    "policy, augment",
    [
        ("finetune", "light"),
        ("feature-extract", "none"),
        pytest.param("gradual:1", "none", marks=pytest.mark.slow),
        pytest.param("fine-tune-fastai", "light", marks=pytest.mark.slow),
    ],
)
def test_resume_equals_the_uninterrupted_run(tmp_path, tiny_registry, images, policy, augment, monkeypatch):
    options = _options(tmp_path, epochs=4, policy=policy, augment=augment)
    _resumes_exactly(tmp_path, images, options, monkeypatch)


def test_resume_with_mixup_and_cutmix_is_exact(tmp_path, tiny_registry, images, monkeypatch):
    options = _options(tmp_path, epochs=4, policy="finetune", mixup=0.4, cutmix=1.0, accum_steps=2, batch_size=4)
    _resumes_exactly(tmp_path, images, options, monkeypatch)


def _resumes_exactly(tmp_path, images, options, monkeypatch):
    whole = finetune("tiny", images, name="whole", **options)
    restore = _stop_at_epoch(monkeypatch, 2)
    with pytest.raises(Interrupted):
        finetune("tiny", images, name="part", **options)
    restore()
    resumed = resume_run(tmp_path / "runs" / "part")
    a, b = read_checkpoint(whole.run_dir / "last.pt"), read_checkpoint(resumed.run_dir / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
    assert a["step"] == b["step"] and b["epoch"] == 4


def test_cached_and_uncached_paths_agree(tmp_path, tiny_registry, images):
    # one batch an epoch: the sample order cannot differ; float32: bf16 rounding differs between the two paths
    opts = _options(tmp_path, epochs=4, batch_size=64, amp="off")
    cached = finetune("tiny", images, policy="freeze:2", name="cached", **opts)
    plain = finetune("tiny", images, policy="freeze:2", name="plain", cache="off", **opts)
    assert cached.summary["cache"]["boundary"] == "stage1" and plain.summary["cache"] is None
    a, b = read_checkpoint(cached.run_dir / "last.pt"), read_checkpoint(plain.run_dir / "last.pt")
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-5), key
    assert cached.best_val_acc == plain.best_val_acc
    mini = _options(tmp_path, epochs=6)
    c = finetune("tiny", images, policy="feature-extract", name="c", lr=0.05, **mini)
    p = finetune("tiny", images, policy="feature-extract", name="p", lr=0.05, cache="off", **mini)
    assert c.best_val_acc == p.best_val_acc


def test_cache_augmented_copies(tmp_path, tiny_registry, images):
    result = finetune("tiny", images, policy="feature-extract", cache_augmented=3, **_options(tmp_path))
    assert result.summary["cache"]["copies"] == 3
    assert result.summary["augment"] == "light"


def test_large_cache_goes_to_disk_and_is_cleaned_up(tmp_path, tiny_registry, images, monkeypatch):
    import zoo.training.cache

    monkeypatch.setattr(zoo.training.cache, "MEMORY_LIMIT", 1000)
    opts = _options(tmp_path, batch_size=64)
    disk = finetune("tiny", images, policy="freeze:1", name="disk", **opts)
    memory_limit_default = finetune("tiny", images, policy="freeze:1", name="mem", cache="off", **opts)
    assert disk.summary["cache"]["on_disk"] is True
    assert not (disk.run_dir / "cache").exists()
    assert disk.best_val_acc == memory_limit_default.best_val_acc


def test_ctrl_c_saves_and_resume_completes(tmp_path, tiny_registry, images, monkeypatch):
    restore = _stop_at_epoch(monkeypatch, 1)
    with pytest.raises(Interrupted, match="1 complete epoch") as err:
        finetune("tiny", images, policy="finetune", name="stop", **_options(tmp_path))
    assert err.value.exit_code == 130
    run = tmp_path / "runs" / "stop"
    assert read_checkpoint(run / "last.pt")["epoch"] == 1
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    restore()
    assert resume_run(run).epochs_run == 3


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path, images):
    plugin = install_tiny_plugin(tmp_path / "site")
    env = dict(os.environ, PYTHONPATH=str(plugin))
    cmd = [
        sys.executable,
        "-m",
        "zoo",
        "finetune",
        "tiny",
        str(images),
        "--weights",
        "none",
        "--epochs",
        "400",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--augment",
        "light",
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "killed",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "runs" / "killed" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not (last.exists() and read_checkpoint(last)["epoch"] >= 2):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    epoch = read_checkpoint(last)["epoch"]  # whatever moment it died, the file is whole
    assert 2 <= epoch < 400
    resume = subprocess.run(
        [sys.executable, "-m", "zoo", "finetune", "--resume", str(last.parent), "--epochs", str(epoch + 2), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resume.returncode == 0, resume.stderr
    assert json.loads(resume.stdout)["epochs_run"] == epoch + 2


@pytest.mark.slow
def test_evaluate_and_predict(tmp_path, tiny_registry, images):
    result = finetune("tiny", images, policy="finetune", lr=0.01, **_options(tmp_path, epochs=6))
    report = evaluate(result.run_dir, images)  # the run's own data: its held-out val split, as the run split it
    assert report["images"] == 4 and report["classes"] == ["cats", "dogs"]
    assert "the run's val split" in report["evaluated_on"] and "held out" in report["evaluated_on"]
    assert report["accuracy"] == pytest.approx(result.summary["best_val"]["acc"])
    report = evaluate(result.run_dir, images, split="all")
    assert report["images"] == 24 and sum(map(sum, report["confusion_matrix"])) == 24
    assert report["per_class"][0]["support"] == 12
    elsewhere = tmp_path / "copy"
    shutil.copytree(images, elsewhere)
    assert evaluate(result.run_dir, elsewhere)["images"] == 24  # other data: all of it (it has no val/ or test/)
    image = next((images / "dogs").iterdir())
    top = predict(result.run_dir / "best.pt", [image], top_k=2)[0]["top"]
    assert len(top) == 2 and abs(sum(t["probability"] for t in top) - 1) < 1e-4
    cli = runner.invoke(app, ["predict", str(result.run_dir), str(image), "--json"])
    assert cli.exit_code == 0 and json.loads(cli.stdout)[0]["image"] == str(image)
    cli = runner.invoke(app, ["evaluate", str(result.run_dir), str(images)])
    assert cli.exit_code == 0 and "accuracy" in cli.output and "confusion matrix" in cli.output
    bad = make_images(tmp_path / "other", classes=("cows", "dogs"))
    cli = runner.invoke(app, ["evaluate", str(result.run_dir), str(bad)])
    assert cli.exit_code == 3 and "cows are not among the model's classes" in cli.output
    cli = runner.invoke(app, ["predict", str(tmp_path / "nowhere"), str(image)])
    assert cli.exit_code == 3 and "no such run folder" in cli.output


def test_finetune_cli_errors_are_one_line(tmp_path, tiny_registry, images):
    cases = [
        (["finetune", "tiny", str(tmp_path / "missing")], "no such folder"),
        (["finetune", "tiny", str(images), "--policy", "freeze:9"], "can freeze 0 to 3"),
        (["finetune", "tiny", str(images), "--optimizer", "lion"], "--optimizer lion"),
        (["finetune", "tiny", str(images), "--device", "cuda:7"], "--device cuda:7"),
        (["finetune", "tiny2", str(images)], "unknown backbone 'tiny2' (did you mean tiny?)"),
        (["finetune", "--resume", str(tmp_path)], "no last.pt"),
        (["finetune"], "needs BACKBONE and DATA"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_finetune_cli_json(tmp_path, tiny_registry, images):
    result = runner.invoke(
        app,
        [
            "finetune",
            "tiny",
            str(images),
            "--weights",
            "none",
            "--epochs",
            "2",
            "--policy",
            "freeze:1",
            "--out",
            str(tmp_path / "runs"),
            "--workers",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs_run"] == 2 and summary["policy"]["name"] == "freeze:1"


def test_policies_cli_lists_every_source():
    data = json.loads(runner.invoke(app, ["policies", "--json"]).stdout)
    sources = {d["name"]: d["source"] for d in data}
    assert sources["feature-extract"] == "built-in" and sources["ulmfit"] == "registry.toml"


@pytest.mark.slow
def test_demo_fine_tunes_real_weights_offline(tmp_path):
    """The README's main job: efficientnet_lite0 with its shipped ImageNet weights on the built-in photos."""
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--epochs", "6"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo-efficientnet_lite0" / "summary.json").read_text())
    assert summary["best_val_acc"] >= 0.85
    assert summary["cache"]["boundary"] == "stage4"
    assert "4/4 predict" in result.output
    assert (tmp_path / "demo-efficientnet_lite0" / "model.onnx").exists()


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_accumulating_gradients_equals_one_larger_batch(tmp_path, tiny_registry, images, cache):
    # feature-extract: BatchNorm is frozen, so the only difference can be the loss's arithmetic
    opts = _options(tmp_path, epochs=2, cache=cache, amp="off")  # float32: the claim is about arithmetic
    big = finetune("tiny", images, policy="feature-extract", name="big", **{**opts, "batch_size": 12})
    small = finetune("tiny", images, policy="feature-extract", name="small", accum_steps=3, **{**opts, "batch_size": 4})
    one = finetune("tiny", images, policy="feature-extract", name="one", **{**opts, "batch_size": 4})
    assert small.summary["effective_batch"] == 12 and small.summary["accum_steps"] == 3
    a, b, c = (read_checkpoint(r.run_dir / "last.pt") for r in (big, small, one))
    assert a["step"] == b["step"] == 4 and c["step"] == 10  # optimizer steps: 2 epochs x ceil(19 / 12) or / 4
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], atol=1e-6), key
    assert not torch.allclose(a["model"]["fc.weight"], c["model"]["fc.weight"], atol=1e-4)


def test_clip_grad_bounds_each_update(tmp_path, tiny_registry, images):
    # SGD without momentum or decay, one step: the update is lr x the (clipped) gradient
    opts = _options(tmp_path, epochs=1, batch_size=64, optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.1)
    start = finetune("tiny", images, policy="feature-extract", name="start", **{**opts, "lr": 1e-12})
    clipped = finetune("tiny", images, policy="feature-extract", name="clipped", clip_grad=1e-3, **opts)
    loose = finetune("tiny", images, policy="feature-extract", name="loose", clip_grad=1e9, **opts)
    plain = finetune("tiny", images, policy="feature-extract", name="plain", **opts)
    w0, w1, w2, w3 = (read_checkpoint(r.run_dir / "last.pt")["model"] for r in (start, clipped, loose, plain))
    step = torch.cat([(w1[k] - w0[k]).flatten() for k in ("fc.weight", "fc.bias")])
    assert step.norm().item() == pytest.approx(0.1 * 1e-3, rel=1e-3)
    assert all(torch.equal(w2[k], w3[k]) for k in w3)  # a bound it never reaches changes nothing
    assert clipped.summary["clip_grad"] == 1e-3


def test_accum_steps_and_clip_grad_flags(tmp_path, tiny_registry, images):
    for flag, value in (("--accum-steps", "0"), ("--clip-grad", "0"), ("--clip-grad", "nan")):
        result = runner.invoke(app, ["finetune", "tiny", str(images), flag, value, "--out", str(tmp_path / "r")])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and flag in result.stderr, result.stderr
    result = runner.invoke(app, ["finetune", "tiny", str(images), "--weights", "none", "--epochs", "1",
                                 "--batch-size", "4", "--accum-steps", "2", "--clip-grad", "1", "--workers", "0",
                                 "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "batch 4 x 2 accumulated steps = 8 images per optimizer step" in result.stderr
    assert "gradients clipped to norm 1" in result.stderr


def test_evaluate_with_tta_reports_ten_views_beside_the_plain_figures(tmp_path, tiny_registry, images, monkeypatch):
    import numpy as np

    import zoo.training.evaluate
    from zoo.data.images import load_for_eval, tta_views
    from zoo.model.checkpoint import load_model, preprocess_of

    result = finetune("tiny", images, policy="finetune", **_options(tmp_path, epochs=2))
    plain, both = evaluate(result.run_dir), evaluate(result.run_dir, tta=True)
    assert {k: both[k] for k in plain} == plain  # the plain figures do not change
    assert set(both["tta"]) >= {"accuracy", "balanced_accuracy", "macro_f1", "map", "views"}
    _, ckpt = load_model(result.run_dir)
    pre = preprocess_of(ckpt)
    image = next(images.rglob("*.png"))
    views = tta_views(image, pre)
    assert views.shape == (10, 3, 32, 32)
    assert np.array_equal(views[4], load_for_eval(image, pre))  # the centre crop is the plain input
    assert all(np.array_equal(views[5 + i], views[i][:, :, ::-1]) for i in range(5))  # then the five flipped
    cli = runner.invoke(app, ["evaluate", str(result.run_dir), "--tta"])
    assert cli.exit_code == 0, cli.stderr
    assert "with --tta" in cli.stdout and "ten crops" in cli.stdout
    # ten copies of the plain view average back to exactly the plain figures, image by image
    monkeypatch.setattr(zoo.training.evaluate, "tta_views", lambda path, pre: np.stack([load_for_eval(path, pre)] * 10))
    same = evaluate(result.run_dir, tta=True, batch_size=25)["tta"]
    assert same["accuracy"] == plain["accuracy"] and same["map"] == pytest.approx(plain["map"], abs=1e-6)


def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one():
    from torch.nn.functional import one_hot

    from zoo.core.errors import UsageError
    from zoo.training.mixing import make_mixer

    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    # torchvision pairs each image with the one before it (roll(1)); here no image has its partner's class
    partner, partner_labels = images.roll(1, 0), labels.roll(1, 0)
    assert make_mixer(None, None, 4, False) is None
    for mixup, cutmix in ((0.4, None), (None, 1.0), (0.4, 1.0)):
        mixer = make_mixer(mixup, cutmix, 4, False)
        kinds = set()
        for _ in range(20):
            mixed, soft = mixer(images, labels)
            assert mixed.shape == images.shape and soft.shape == (8, 4)
            assert torch.allclose(soft.sum(1), torch.ones(8)) and (soft >= 0).all()
            # mixed, not relabelled: each target is lam x its own label + (1 - lam) x its partner's, with the lam
            # the pixels were mixed with (mixup: blended; cutmix: the partner's box covers 1 - lam of the area)
            lam = soft[0, labels[0]].item()
            want = lam * one_hot(labels, 4) + (1 - lam) * one_hot(partner_labels, 4)
            assert 0 < lam <= 1 and torch.allclose(soft, want.float(), atol=1e-6), (lam, soft)
            assert torch.equal(mixed, images) == (lam == 1)  # lam 1: a cutmix box of no area, nothing pasted
            if lam == 1:
                continue
            if torch.allclose(mixed, lam * images + (1 - lam) * partner, atol=1e-6):
                kinds.add("mixup")
            else:
                assert ((mixed == images) | (mixed == partner)).all()
                pasted = (mixed == partner).all(1) & (mixed != images).any(1)
                assert pasted.float().mean().item() == pytest.approx(1 - lam, abs=1e-6)
                kinds.add("cutmix")
        assert kinds == {kind for kind, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha}
    with pytest.raises(UsageError, match="single-label"):
        make_mixer(0.2, None, 4, True)
    with pytest.raises(UsageError, match="--cutmix 0"):
        make_mixer(None, 0.0, 4, False)


def test_mixup_trains_uncached_and_says_why(tmp_path, tiny_registry, images):
    result = runner.invoke(app, ["finetune", "tiny", str(images), "--policy", "feature-extract", "--mixup", "0.2",
                                 "--cutmix", "1", "--weights", "none", "--epochs", "2", "--workers", "0",
                                 "--out", str(tmp_path / "r"), "--name", "mixed"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads((tmp_path / "r" / "mixed" / "summary.json").read_text())
    assert summary["cache"] is None and summary["mix"] == "mixup 0.2 or cutmix 1 per batch (soft targets)"
    assert "the frozen-prefix cache is off: the features of a mixed image are not the mix" in result.stderr
    for flag in ("--mixup", "--cutmix"):
        bad = runner.invoke(app, ["finetune", "tiny", str(images), flag, "-1", "--out", str(tmp_path / "r")])
        assert bad.exit_code == 2 and flag in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.parametrize("policy", ["finetune", "freeze:1"])  # freeze:1 evaluates through the cache's suffix
def test_ema_weights_are_evaluated_kept_and_resume_exactly(tmp_path, tiny_registry, images, monkeypatch, policy):
    options = _options(tmp_path, epochs=4, policy=policy, ema=0.99)
    _resumes_exactly(tmp_path, images, options, monkeypatch)  # the averaged and the trained weights
    a = read_checkpoint(tmp_path / "runs" / "whole" / "last.pt")
    assert a["ema"]["updates"] == a["step"] and a["trained_model"] is not None
    assert not torch.equal(a["model"]["fc.weight"], a["trained_model"]["fc.weight"])
    resumed = read_checkpoint(tmp_path / "runs" / "part" / "last.pt")
    for key, value in a["trained_model"].items():
        assert torch.equal(value, resumed["trained_model"][key]), key
    # evaluate and export read "model": the average, and what they measure is what the run measured
    best = read_checkpoint(tmp_path / "runs" / "whole" / "best.pt")
    report = evaluate(tmp_path / "runs" / "whole")
    row = best["history"][best["best_epoch"] - 1]
    assert report["accuracy"] == pytest.approx(best["best_val_acc"])
    assert report["map"] == pytest.approx(row["val_map"], abs=1e-5)


def test_ema_with_no_memory_is_the_trained_model(tmp_path, tiny_registry, images):
    """A decay of ~0 copies the trained weights at every step: the run is the run without --ema."""
    options = _options(tmp_path, epochs=2, policy="freeze:1")
    plain = finetune("tiny", images, name="plain", **options)
    copied = finetune("tiny", images, name="copied", ema=1e-12, **options)
    assert [h["val_loss"] for h in plain.history] == [h["val_loss"] for h in copied.history]
    a, b = read_checkpoint(plain.run_dir / "last.pt"), read_checkpoint(copied.run_dir / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    bad = runner.invoke(app, ["finetune", "tiny", str(images), "--ema", "1", "--out", str(tmp_path / "r")])
    assert bad.exit_code == 2 and "--ema 1.0" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_defaults_load_in_process_and_autocast_bf16_where_native(tmp_path, tiny_registry, images, monkeypatch,
                                                                      native_bf16):  # fmt: skip
    import zoo.training.device

    monkeypatch.setattr(zoo.training.device, "cpu_has_bf16", lambda: native_bf16)
    result = finetune("tiny", images, name=f"d{native_bf16}", **{**_options(tmp_path, epochs=1), "workers": None})
    assert result.summary["workers"] == 0
    assert result.summary["amp"] == ("bfloat16" if native_bf16 else "off")
    off = finetune("tiny", images, name=f"off{native_bf16}", amp="off", **_options(tmp_path, epochs=1))
    assert off.summary["amp"] == "off"
    # val figures are float32 either way: what `zoo evaluate` and the exported model compute
    assert evaluate(result.run_dir)["accuracy"] == pytest.approx(result.best_val_acc)


@pytest.mark.parametrize(
    "policy, asked, expected",
    [("finetune", None, (48, 48)), ("finetune", 32, (32, 32)), ("freeze:1", None, (64, 64))],
)
def test_training_crops_have_the_train_size_and_evaluation_the_input_size(
    tmp_path, use_registry, images, monkeypatch, policy, asked, expected
):
    """Full fine-tuning trains on crops 0.72x the input by default (--train-size sets them; a frozen prefix keeps
    the input size); evaluation, the checkpoint and so the export keep the input size."""
    from conftest import plugin_module, tiny_spec
    from zoo import Preprocess
    from zoo.training import loaders

    spec = tiny_spec(preprocess=Preprocess(input_size=(64, 64), crop_pct=1.0), min_input_size=16)
    use_registry(("tinyplugin", plugin_module("tinyplugin", spec)))
    seen: dict[str, set] = {"train": set(), "eval": set()}
    original = loaders.ImageDataset.__getitem__

    def spy(self, index):
        x, y = original(self, index)
        seen["eval" if isinstance(self.transform, loaders.EvalTransform) else "train"].add(tuple(x.shape[1:]))
        return x, y

    monkeypatch.setattr(loaders.ImageDataset, "__getitem__", spy)
    options = _options(tmp_path, epochs=1, augment="light", train_size=asked)
    result = finetune("tiny", images, policy=policy, **options)
    assert seen == {"train": {expected}, "eval": {(64, 64)}}
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["train_size"] == list(expected) and summary["input_size"] == [64, 64]
    ckpt = read_checkpoint(result.run_dir / "best.pt")
    assert tuple(ckpt["preprocess"]["input_size"]) == (64, 64)
