"""Real-world data in training: manifests, multi-label runs, class imbalance, and a test split evaluated once."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_images, make_tagged, plugin_module, tiny_spec
from zoo.cli import app
from zoo.core.errors import Interrupted
from zoo.export.exporter import export
from zoo.export.verify import verify
from zoo.model.checkpoint import read_checkpoint
from zoo.runtime.onnx_meta import ModelMetadata, read_props
from zoo.runtime.predictor import Predictor
from zoo.training.evaluate import evaluate, predict
from zoo.training.loaders import BalancedSampler
from zoo.training.setup import RunSetup
from zoo.training.train import Trainer, finetune, resume_run

runner = CliRunner()
METRIC_KEYS = {"acc", "balanced_acc", "macro_f1", "micro_f1", "map"}


def _options(tmp_path, **extra):
    options = dict(epochs=2, batch_size=8, out=str(tmp_path / "runs"), weights="none", workers=0, lr=0.02)
    options.update(extra)
    return options


@pytest.fixture
def tags(tmp_path):
    return make_tagged(tmp_path / "tags", n=36)


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param("feature-extract", marks=pytest.mark.plots),  # the pictures depend on the task, not the policy
        "freeze:2",
        "finetune",
        "scratch",
        "discriminative:0.5",
        "gradual:1",
        "cut:stage1",
    ],
)
@pytest.mark.slow
def test_multi_label_runs_with_every_policy(request, tmp_path, tiny_registry, tags, policy):
    result = finetune("tiny", tags, policy=policy, **_options(tmp_path))
    s = result.summary
    assert s["task"] == "multi-label" and s["select_by"] == "map" and result.select_by == "map"
    assert len(s["thresholds"]) == 3 and all(0 <= t <= 1 for t in s["thresholds"])
    assert set(s["best_val"]) == METRIC_KEYS
    assert {f"val_{k}" for k in METRIC_KEYS} <= set(result.history[0])
    assert [r["class"] for r in s["per_class"]] == ["blue", "green", "red"]
    if request.node.get_closest_marker("plots"):
        assert (result.run_dir / "labels.png").is_file() and not (result.run_dir / "confusion_matrix.png").exists()
    if policy == "feature-extract":
        assert s["cache"] is not None and all(row["cached"] for row in result.history)
    ckpt = read_checkpoint(result.run_dir / "best.pt")
    assert ckpt["task"] == "multi-label" and ckpt["thresholds"] == s["thresholds"]


@pytest.mark.slow
def test_multi_label_learns_the_tags(tmp_path, tiny_registry):
    tags = make_tagged(tmp_path / "tags", n=120)
    result = finetune("tiny", tags, policy="finetune", **_options(tmp_path, epochs=10, lr=0.01, augment="none"))
    assert result.summary["best_val"]["map"] > 0.9, result.summary["best_val"]
    assert result.summary["best_val"]["macro_f1"] > 0.8


@pytest.mark.parametrize(
    "balance, policy", [("sampler", "finetune"), ("sampler", "feature-extract"), ("loss", "finetune")]
)
def test_multi_label_resumes_exactly(tmp_path, tiny_registry, balance, policy, monkeypatch):
    tags = make_tagged(tmp_path / "tags", n=36, splits=["train", "train", "val", "train", "test", "train"])
    options = _options(tmp_path, balance=balance, policy=policy, epochs=3)
    whole = finetune("tiny", tags, name="whole", **options)
    original = Trainer._train_epoch

    def stop_at_third(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_at_third)
    with pytest.raises(Interrupted):
        finetune("tiny", tags, name="part", **options)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    resumed = resume_run(tmp_path / "runs" / "part")
    a, b = read_checkpoint(whole.run_dir / "last.pt"), read_checkpoint(resumed.run_dir / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    timing = {"train_img_s", "train_seconds"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in a["history"]] == [
        {k: v for k, v in h.items() if k not in timing} for h in b["history"]
    ]
    assert a["thresholds"] == b["thresholds"]
    assert whole.test == resumed.test and whole.test["images"] == 6


@pytest.mark.slow
def test_multi_label_evaluate_predict_export_and_runtime(tmp_path, tiny_registry, tags):
    result = finetune("tiny", tags, policy="finetune", **_options(tmp_path, epochs=3))
    thresholds = result.summary["thresholds"]
    report = evaluate(result.run_dir, tags)
    assert report["task"] == "multi-label" and report["thresholds"] == thresholds
    assert "the run's val split" in report["evaluated_on"]
    assert report["map"] == pytest.approx(result.summary["best_val"]["map"], abs=1e-6)
    image = tags.parent / "img" / "0.png"
    row = predict(result.run_dir, [image], top_k=2)[0]
    assert len(row["top"]) == 2 and "labels" in row
    probs = {t["label"]: t["probability"] for t in row["top"]}
    classes = ["blue", "green", "red"]
    for chosen in row["labels"]:
        assert chosen["probability"] >= thresholds[classes.index(chosen["label"])] - 1e-6
    model = tmp_path / "tags.onnx"
    exported = export(result.run_dir, model)
    assert exported.passed and exported.checks[0].agreement == "label-set"
    meta = ModelMetadata.from_props(read_props(model))
    assert meta.task == "multi-label" and list(meta.thresholds) == pytest.approx(thresholds)
    onnx_row = Predictor(model).predict([image], top_k=2)[0]
    assert [t["label"] for t in onnx_row["labels"]] == [t["label"] for t in row["labels"]]
    for t in onnx_row["top"]:
        assert t["probability"] == pytest.approx(probs[t["label"]], abs=1e-4)
    assert verify(model, result.run_dir).passed
    # preprocessing in the graph: its raw-pixel check compares label sets at the thresholds, as the export check
    embedded = export(result.run_dir, tmp_path / "raw.onnx", embed_preprocessing=True).embedded
    assert embedded["passed"] and embedded["agreement"] == "label-set"
    raw = verify(tmp_path / "raw.onnx", result.run_dir)
    assert raw.passed and raw.checks[0].output == "probabilities on raw pixels"
    cli = runner.invoke(app, ["predict", str(model), str(image), "--json"])
    assert cli.exit_code == 0 and "labels" in json.loads(cli.stdout)[0]
    cli = runner.invoke(app, ["evaluate", str(result.run_dir), str(tags)])
    assert cli.exit_code == 0 and "(exact label sets)" in cli.stdout and "threshold" in cli.stdout


def test_a_run_keeps_its_data_absolute_so_evaluate_and_resume_work_from_anywhere(
    tmp_path, tiny_registry, tags, monkeypatch
):
    monkeypatch.chdir(tags.parent)  # a manifest given relative to the working directory
    result = finetune("tiny", tags.name, policy="finetune", **_options(tmp_path, epochs=1))
    assert json.loads((result.run_dir / "config.json").read_text())["data"] == str(tags)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cli = runner.invoke(app, ["evaluate", str(result.run_dir), "--json"])
    assert cli.exit_code == 0, cli.stderr
    report = json.loads(cli.stdout)
    assert report["data"] == str(tags) and "the run's val split" in report["evaluated_on"]
    assert report["map"] == pytest.approx(result.summary["best_val"]["map"], abs=1e-6)
    assert resume_run(result.run_dir, epochs=2).epochs_run == 2


@pytest.mark.slow
def test_edited_thresholds_metadata_is_refused(tmp_path, tiny_registry, tags):
    from zoo.core.errors import ModelFileError
    from zoo.runtime.onnx_meta import write_props

    result = finetune("tiny", tags, policy="finetune", **_options(tmp_path, epochs=1))
    model = tmp_path / "m.onnx"
    export(result.run_dir, model)
    props = read_props(model)
    write_props(model, {**props, "zoo.thresholds": "[0.5, 2.0]"})
    with pytest.raises(ModelFileError, match=r"'zoo.thresholds' = '\[0.5, 2.0\]' is not 3 numbers in \[0, 1\]"):
        Predictor(model)


@pytest.mark.slow
def test_multi_label_runtime_works_without_torch(tmp_path, tiny_registry, tags):
    result = finetune("tiny", tags, policy="finetune", **_options(tmp_path, epochs=1))
    export(result.run_dir, tmp_path / "m.onnx")
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from zoo.cli import main\n"
        "sys.argv = ['zoo', 'predict', sys.argv[1], sys.argv[2], '--json']\n"
        "main()\n"
    )
    image = tags.parent / "img" / "3.png"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx"), str(image)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert {"top", "labels"} <= set(json.loads(out.stdout)[0])


@pytest.mark.slow
def test_multi_label_int8_is_judged_on_map(tmp_path, tiny_registry, tags):
    result = finetune("tiny", tags, policy="finetune", **_options(tmp_path, epochs=2))
    report = export(result.run_dir, tmp_path / "m.onnx", int8=True, max_drop=100)
    q = report.int8
    assert q["metric"] == "val_map" and {"fp32_val_map", "int8_val_map"} <= set(q)
    assert q["fp32_val_map"] == pytest.approx(result.summary["best_val"]["map"], abs=1e-4)
    assert verify(tmp_path / "m.int8.onnx", result.run_dir).checks[0].output == "int8 val mAP"


def test_multi_label_advise_probes_with_map(tmp_path, use_registry, tags):
    from conftest import build_tiny
    from zoo.catalogue.weights import sha256_of
    from zoo.model.build import Weights
    from zoo.training.advise import advise

    path = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(build_tiny(None).state_dict(), path)
    spec = tiny_spec(weights=(Weights("w", path.as_uri(), sha256=sha256_of(path)),), default_weights="w")
    use_registry(("p", plugin_module("p", spec)))
    advice = advise("tiny", tags)
    assert advice.probes and all(0 <= v <= 1 for v in advice.probes.values())
    assert any("linear-probe mAP" in line for line in advice.evidence)
    assert "the rarest label is on" in advice.evidence[0]
    assert 0 < advice.chance < 1


# --- imbalance ---------------------------------------------------------------------------------------------------


@pytest.fixture
def skewed(tmp_path):
    return make_images(tmp_path / "skewed", per_class={"common": 30, "rare": 6})


@pytest.mark.parametrize("balance", ["none", "loss", pytest.param("sampler", marks=pytest.mark.plots), "auto"])
@pytest.mark.slow
def test_every_balance_mode_keeps_the_cache(request, tmp_path, tiny_registry, skewed, balance):
    result = finetune("tiny", skewed, policy="feature-extract", balance=balance, **_options(tmp_path))
    s = result.summary
    assert s["cache"] is not None and all(row["cached"] for row in result.history)
    assert s["balance"]["mode"] == ("loss" if balance == "auto" else balance)
    assert s["balance"]["skew"] == pytest.approx(24 / 5)  # train split: 24 common, 5 rare
    assert s["select_by"] == "balanced_acc"
    assert {"val_balanced_acc", "val_macro_f1", "val_map"} <= set(result.history[0])
    if request.node.get_closest_marker("plots"):  # the picture depends on the task, not the balance mode
        assert (result.run_dir / "confusion_matrix.png").is_file()


def test_loss_weights_and_sampler_draws(tmp_path, tiny_registry, skewed):
    from zoo.training.config import TrainConfig

    cfg = TrainConfig(backbone="tiny", data=str(skewed), balance="loss", **_options(tmp_path))
    setup = RunSetup.build(cfg)
    assert setup.criterion.weight.tolist() == pytest.approx([29 / (2 * 24), 29 / (2 * 5)])
    setup.close()
    cfg = TrainConfig(backbone="tiny", data=str(skewed), balance="sampler", **_options(tmp_path, name="s"))
    setup = RunSetup.build(cfg)
    assert setup.criterion.weight is None
    drawn = torch.tensor([setup.split.train[i].label for i in BalancedSampler(setup.train_weights, seed=1)])
    assert len(drawn) == 29
    many = BalancedSampler(setup.train_weights.repeat(100), seed=2)  # 2900 draws: about half of each class
    counts = np.bincount([setup.split.train[i % 29].label for i in many], minlength=2)
    assert abs(counts[0] / counts.sum() - 0.5) < 0.05, counts
    setup.close()


def test_sampler_draws_on_cached_activations_are_balanced():
    from zoo.training.cache import FeatureCache

    labels = torch.tensor([0] * 90 + [1] * 10)
    cache = FeatureCache([torch.arange(100.0)[:, None]], labels)
    weights = torch.tensor([1 / 90] * 90 + [1 / 10] * 10, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat([t for _ in range(20) for _, t in cache.batches(16, gen, weights=weights)])
    assert len(drawn) == 2000 and abs(drawn.float().mean().item() - 0.5) < 0.05


def test_select_by_picks_the_checkpoint(tmp_path, tiny_registry, skewed):
    result = finetune("tiny", skewed, policy="finetune", select_by="macro_f1", **_options(tmp_path, epochs=3))
    values = [row["val_macro_f1"] for row in result.history]
    assert result.best_epoch == 1 + values.index(max(values))
    assert result.summary["best_value"] == pytest.approx(max(values), abs=1e-6)
    assert read_checkpoint(result.run_dir / "best.pt")["epoch"] == result.best_epoch


# --- test split -----------------------------------------------------------------------------------------------------


def test_a_test_split_is_evaluated_once_and_never_selects(tmp_path, tiny_registry):
    with_test = make_images(tmp_path / "a", layout="train/val/test", per_class=10)
    without = make_images(tmp_path / "b", layout="train/val", per_class=10)
    a = finetune("tiny", with_test, policy="finetune", **_options(tmp_path, epochs=3, name="a"))
    b = finetune("tiny", without, policy="finetune", **_options(tmp_path, epochs=3, name="b"))
    timing = {"train_img_s", "train_seconds"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in a.history] == [
        {k: v for k, v in h.items() if k not in timing} for h in b.history
    ]
    assert a.best_epoch == b.best_epoch  # the test images changed nothing
    test = a.test
    assert test["images"] == 10 and set(METRIC_KEYS) - {"micro_f1"} <= set(test)
    assert b.test is None and a.summary["test_images"] == 10
    report = evaluate(a.run_dir, with_test)  # the run's own data: its test split, with the best checkpoint
    assert report["images"] == 10 and report["accuracy"] == pytest.approx(test["acc"])
    assert "the run's test split" in report["evaluated_on"]


def test_finetune_cli_with_a_manifest_reports_bad_rows_and_test(tmp_path, tiny_registry):
    csv = make_tagged(tmp_path / "d", n=24, splits=["train", "train", "val", "train", "test", "train"])
    with csv.open("a") as f:
        f.write("img/missing.png,red,train\nimg/0.png,,val\n")
    result = runner.invoke(app, ["finetune", "tiny", str(csv), "--weights", "none", "--epochs", "1", "--workers",
                                 "0", "--out", str(tmp_path / "runs")])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "line 26: img/missing.png: no such file" in result.stderr
    assert "line 27: empty label" in result.stderr
    assert "2 of 26 row(s) skipped" in result.stderr
    assert "test (4 images, evaluated once with the best checkpoint)" in result.stdout
    assert "done: best val mAP" in result.stdout
    summary = json.loads(next((tmp_path / "runs").iterdir()).joinpath("summary.json").read_text())
    assert summary["manifest"]["bad_rows"] == 2 and summary["test"]["images"] == 4
    bad = runner.invoke(app, ["finetune", "tiny", str(tmp_path / "d" / "img"), "--label-column", "x"])
    assert bad.exit_code == 2 and "--label-column: only for a manifest" in bad.stderr
