"""Export: ONNX that proves itself, its metadata, INT8, tamper detection, and the torch-free runtime."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from conftest import TUTORIAL_MODELS, tiny_run
from zoo.catalogue.registry import get_registry
from zoo.cli import app
from zoo.core.errors import QuantizationRefused
from zoo.export.exporter import export, export_model
from zoo.export.verify import verify
from zoo.model.build import create_model
from zoo.runtime.onnx_meta import ModelMetadata
from zoo.runtime.predictor import Predictor

runner = CliRunner()


@pytest.mark.slow
@pytest.mark.parametrize("name", TUTORIAL_MODELS)
def test_tutorial_families_export_and_verify(tmp_path, name):
    spec = get_registry().get(name)
    size = max(64, spec.min_input_size)
    pre = dataclasses.replace(spec.preprocess, input_size=(size, size), crop_pct=1.0)
    torch.manual_seed(0)
    model = create_model(spec, num_classes=3, weights="none")
    report = export_model(model, spec, pre, ["a", "b", "c"], tmp_path / f"{name}.onnx", check_batch=4)
    assert report.passed, report.checks
    assert [c.batch for c in report.checks] == [1, 4]
    assert all(c.top1_agreement == 1.0 for c in report.checks)
    proto = onnx.load(str(tmp_path / f"{name}.onnx"))
    onnx.checker.check_model(proto)
    if spec.aux_heads:  # auxiliary heads are not part of the exported graph
        assert len(proto.graph.output) == 1
    assert json.loads((tmp_path / f"{name}.json").read_text())["passed"] is True


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A fine-tuned tiny backbone, through an installed-like in-test plugin."""
    with tiny_run(tmp_path_factory.mktemp("export")) as made:
        yield made


@pytest.mark.slow
def test_export_run_writes_verified_model_metadata_and_report(run, tmp_path):
    result, _, _ = run
    report = export(result.run_dir, tmp_path / "model.onnx")
    assert report.passed and "from the run's data" in report.images
    meta = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props})
    assert meta.labels == ("cats", "dogs") and meta.preprocess.input_size == (32, 32)
    assert meta.preprocess.mean == (0.485, 0.456, 0.406) and meta.preprocess.interpolation == "bilinear"
    assert meta.backbone == "tiny" and meta.extra["policy"] == "finetune" and meta.precision == "fp32"
    assert meta.extra["val_acc"] == result.best_val_acc
    assert meta.extra["check"]["passed"] is True
    # a dynamic batch axis: batch 5 runs too
    assert Predictor(tmp_path / "model.onnx").logits(np.zeros((5, 3, 32, 32), np.float32)).shape == (5, 2)
    # the run keeps the report of a model exported outside its folder: its report.html and `zoo runs` show it
    from zoo.report.folder import RunFolder

    recorded = json.loads((result.run_dir / "exports.json").read_text())
    assert [e["path"] for e in recorded] == [str(tmp_path / "model.onnx")]
    assert [e["path"] for e in RunFolder(result.run_dir).exports()] == [str(tmp_path / "model.onnx")]
    export(result.run_dir, tmp_path / "model.onnx")  # exported again to the same file: still one entry
    assert len(json.loads((result.run_dir / "exports.json").read_text())) == 1


@pytest.mark.slow
def test_runtime_predictions_equal_torch(run, tmp_path):
    from zoo.training.evaluate import predict

    result, data, _ = run
    export(result.run_dir, tmp_path / "model.onnx")
    images = sorted((data / "val").rglob("*.png"))
    onnx_top = Predictor(tmp_path / "model.onnx").predict(images, top_k=2)
    torch_top = predict(result.run_dir, images, top_k=2)
    for a, b in zip(onnx_top, torch_top, strict=True):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        for x, y in zip(a["top"], b["top"], strict=True):
            assert abs(x["probability"] - y["probability"]) < 1e-4


class _Sneaky(torch.nn.Module):
    """Computes something else when it is being exported: the check must catch it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
            return out.flip(1) * 3
        return out


@pytest.mark.slow
def test_a_graph_that_computes_something_else_is_caught(tmp_path):
    spec = get_registry().get("resnet18")
    pre = dataclasses.replace(spec.preprocess, input_size=(64, 64), crop_pct=1.0)
    model = _Sneaky(create_model(spec, num_classes=3, weights="none"))
    report = export_model(model, spec, pre, ["a", "b", "c"], tmp_path / "bad.onnx", check_batch=4)
    assert not report.passed
    assert not (tmp_path / "bad.onnx").exists()
    assert any("max abs diff" in f for c in report.checks for f in c.failures)
    assert json.loads((tmp_path / "bad.FAILED.json").read_text())["passed"] is False
    kept = export_model(model, spec, pre, ["a", "b", "c"], tmp_path / "bad.onnx", check_batch=4, keep_on_mismatch=True)
    assert kept.path.endswith("bad.FAILED.onnx") and (tmp_path / "bad.FAILED.onnx").exists()


@pytest.mark.slow
def test_a_wrong_tolerance_is_caught(tmp_path):
    spec = get_registry().get("resnet18")
    pre = dataclasses.replace(spec.preprocess, input_size=(64, 64), crop_pct=1.0)
    model = create_model(spec, num_classes=3, weights="none")
    report = export_model(model, spec, pre, ["a", "b", "c"], tmp_path / "m.onnx", atol=0.0)
    assert not report.passed and not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_tampered_file_is_caught_by_verify(run, tmp_path):
    result, _, _ = run
    export(result.run_dir, tmp_path / "model.onnx")
    assert verify(tmp_path / "model.onnx", result.run_dir).passed
    proto = onnx.load(str(tmp_path / "model.onnx"))
    init = next(i for i in proto.graph.initializer if len(onnx.numpy_helper.to_array(i).shape) == 2)
    weights = onnx.numpy_helper.to_array(init).copy()
    weights[0] += 0.5  # a small, silent edit of the classifier
    init.CopyFrom(onnx.numpy_helper.from_array(weights, init.name))
    onnx.save(proto, str(tmp_path / "model.onnx"))
    assert not verify(tmp_path / "model.onnx", result.run_dir).passed
    cli = runner.invoke(app, ["verify", str(tmp_path / "model.onnx"), str(result.run_dir)])
    assert cli.exit_code == 4 and "does not come from this checkpoint, or was changed" in cli.output


@pytest.mark.slow
def test_export_cli_exit_codes(run, tmp_path):
    result, _, _ = run
    ok = runner.invoke(app, ["export", str(result.run_dir), "-o", str(tmp_path / "m.onnx")])
    assert ok.exit_code == 0, ok.output
    assert "verified" in ok.output
    bad = runner.invoke(app, ["export", str(result.run_dir), "-o", str(tmp_path / "m.pt")])
    assert bad.exit_code == 2 and "must end in .onnx" in bad.output
    unknown = runner.invoke(app, ["export", "resnet19", "-o", str(tmp_path / "x.onnx")])
    assert unknown.exit_code == 2 and "did you mean resnet18" in unknown.output
    no_int8 = runner.invoke(app, ["export", "resnet18", "--weights", "none", "--int8", "-o", str(tmp_path / "x.onnx")])
    assert no_int8.exit_code == 2 and "--int8 needs a fine-tuned run" in no_int8.output


@pytest.mark.slow
def test_int8_reports_accuracy_and_refuses_a_big_drop(run, tmp_path, monkeypatch):
    result, _, _ = run
    report = export(result.run_dir, tmp_path / "m.onnx", int8=True, max_drop=100.0, calib_size=16)
    q = report.int8
    assert (tmp_path / "m.int8.onnx").exists()
    assert {"fp32_val_acc", "int8_val_acc", "speedup", "drop_points"} <= set(q)
    meta = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(tmp_path / "m.int8.onnx")).metadata_props})
    assert meta.labels and meta.precision == "int8" and meta.extra["int8"]["max_drop"] == 100.0
    import zoo.export.quantize

    accuracies = iter([0.9, 0.5])  # fp32, then int8 without retries: a 40-point drop
    monkeypatch.setattr(zoo.export.quantize, "accuracy", lambda *a, **k: next(accuracies))
    with pytest.raises(QuantizationRefused, match=r"more than --max-drop 1\.0 in every attempt"):
        export(result.run_dir, tmp_path / "n.onnx", int8=True, max_drop=1.0, calib_size=16, int8_retry=False)
    assert not (tmp_path / "n.int8.onnx").exists()
    # with retries: the first attempt fails the gate, the second (first conv and classifier kept float) passes
    accuracies = iter([0.9, 0.5, 0.895])
    report = export(result.run_dir, tmp_path / "r.onnx", int8=True, max_drop=1.0, calib_size=16)
    tries = report.int8["attempts"]
    assert [t["passed"] for t in tries] == [False, True]
    assert (
        tries[0]["excluded"] == []
        and len(tries[1]["excluded"]) == 2
        and report.int8["excluded"] == tries[1]["excluded"]
    )
    meta = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(tmp_path / "r.int8.onnx")).metadata_props})
    assert meta.extra["int8"]["excluded"] == tries[1]["excluded"]
    # every attempt fails: refused, each attempt named in the one-line error
    scores = iter([0.9] + [0.5] * 10)
    monkeypatch.setattr(zoo.export.quantize, "accuracy", lambda *a, **k: next(scores))
    with pytest.raises(QuantizationRefused) as refused:
        export(result.run_dir, tmp_path / "x.onnx", int8=True, max_drop=1.0, calib_size=16)
    message = str(refused.value)
    assert "percentile:" in message and message.count("excluding") == 3 and "entropy" in message and "minmax" in message
    assert not (tmp_path / "x.int8.onnx").exists()


@pytest.mark.slow
def test_int8_retry_rescues_a_real_model_that_fails_the_gate(tmp_path):
    """Real photos, real weights, no monkeypatch: lite0 fine-tuned on ants/bees, calibrated with minmax, loses a
    val image at the first attempt; keeping the first conv and the classifier in float (attempt 2) loses none."""
    from pathlib import Path

    from zoo.training.train import finetune

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hymenoptera"
    if not data.is_dir():
        pytest.skip(f"{data}: the shared ants/bees photos are not here")
    # lr 1e-3 (the head-only default before it became 1e-2): the model this test was written on, which loses a val
    # image at the first INT8 attempt; the default's better head happens not to, and the retry would go untested
    run = finetune("efficientnet_lite0", data, policy="feature-extract", epochs=5, lr=1e-3, out=str(tmp_path / "runs"))
    q = export(run.run_dir, tmp_path / "m.onnx", int8=True, max_drop=0.0, calibration="minmax").int8
    tries = q["attempts"]
    assert [t["passed"] for t in tries] == [False, True] and tries[0]["drop_points"] > 0
    assert tries[1]["drop_points"] == 0 and len(tries[1]["excluded"]) == 2
    assert (tmp_path / "m.int8.onnx").exists()


@pytest.mark.slow
def test_int8_retry_runs_on_a_real_model_with_the_photos_zoo_ships(tmp_path, monkeypatch):
    """The test above needs ../shared (outside the checkout) and skips without it; this one runs wherever zoo is
    installed. lite0 with its real ImageNet weights on the built-in ants/bees photos, quantized for a gate of 0 points,
    no monkeypatched accuracy: whatever this CPU's INT8 arithmetic loses, the report is the documented sequence on
    real figures (as asked; then lite0's first conv and classifier kept float, with each calibration in turn),
    every attempt but the last over the gate, and the INT8 file written exactly when the last one passed."""
    import re

    import zoo.export.quantize
    from zoo.data.check_images import generated_inputs
    from zoo.demo import example_data
    from zoo.export.quantize import quantize_int8, sensitive_nodes
    from zoo.training.train import finetune

    monkeypatch.setattr(zoo.export.quantize, "images_per_second", lambda *a, **k: 1.0)  # speed is not checked here
    run = finetune("efficientnet_lite0", example_data(), policy="feature-extract", epochs=2, workers=0,
                   out=str(tmp_path / "runs"))  # fmt: skip
    fp32 = tmp_path / "fp32.onnx"
    assert export(run.run_dir, fp32).passed
    proto = onnx.load(str(fp32))
    graph = proto.graph
    ops = {n.name: n.op_type for n in graph.node}
    sensitive = sensitive_nodes(fp32)
    assert sensitive[0] == next(n.name for n in graph.node if n.op_type == "Conv") and ops[sensitive[0]] == "Conv"
    assert [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")] == sensitive[1:]  # lite0's classifier
    # the nodes a retry keeps in float really stay float: their weights are float initialisers, not dequantized
    pre = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props}).preprocess
    quantize_int8(fp32, tmp_path / "kept.onnx", generated_inputs(pre, 8), method="minmax", exclude=sensitive)
    kept = onnx.load(str(tmp_path / "kept.onnx")).graph
    floats = {i.name for i in kept.initializer if i.data_type == onnx.TensorProto.FLOAT}
    dequantized = {o for n in kept.node if n.op_type == "DequantizeLinear" for o in n.output}
    weight = {n.name: n.input[1] for n in kept.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    assert all(weight[name] in floats for name in sensitive)
    assert sum(w in dequantized for w in weight.values()) >= len(weight) - len(sensitive) > 10  # the rest: INT8
    sequence = [("minmax", []), ("minmax", sensitive), ("percentile", sensitive), ("entropy", sensitive)]
    try:
        q = export(run.run_dir, tmp_path / "m.onnx", int8=True, max_drop=0.0, calibration="minmax").int8
    except QuantizationRefused as refused:  # every attempt lost a val image on this CPU: each is named, in order
        named = re.findall(r"(\w+)(?: excluding ([\w, ]+))?: -([\d.]+) points", str(refused))
        assert [(m, ex) for m, ex, _ in named] == [(m, ", ".join(ex)) for m, ex in sequence], str(refused)
        assert all(float(drop) > 0 for _, _, drop in named) and not (tmp_path / "m.int8.onnx").exists()
        return
    tries = q["attempts"]
    assert [(t["calibration"], t["excluded"]) for t in tries] == sequence[: len(tries)]
    assert [t["passed"] for t in tries] == [False] * (len(tries) - 1) + [True]
    assert all(t["drop_points"] > 0 for t in tries[:-1]) and tries[-1]["drop_points"] <= 0
    assert (tmp_path / "m.int8.onnx").exists() and q["excluded"] == tries[-1]["excluded"]


@pytest.mark.slow
def test_int8_calibrates_on_any_number_of_images(run, tmp_path):
    """onnxruntime's histogram calibration stacks the batches: a smaller last batch must never reach it."""
    from zoo.data.check_images import generated_inputs
    from zoo.export.quantize import quantize_int8

    result, _, _ = run
    export(result.run_dir, tmp_path / "m.onnx")
    pre = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props})
    for count in (13, 28):  # a prime (batches of 1) and 28 (batches of 7)
        quantize_int8(tmp_path / "m.onnx", tmp_path / f"q{count}.onnx", generated_inputs(pre.preprocess, count))
        assert (tmp_path / f"q{count}.onnx").is_file()


@pytest.mark.slow
def test_predict_onnx_works_without_torch(run, tmp_path):
    result, data, _ = run
    export(result.run_dir, tmp_path / "model.onnx")
    image = next((data / "val" / "dogs").iterdir())
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
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "model.onnx"), str(image)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["top"][0]["label"] in ("cats", "dogs")


def test_a_shape_mismatch_on_the_first_batch_is_a_failed_check_not_a_crash():
    """onnxruntime giving another shape than torch: reported as a failure row (this used to raise NameError)."""
    import numpy as np

    from zoo.export.exporter import compare

    class WrongSession:
        def get_inputs(self):
            return [type("I", (), {"name": "input"})()]

        def run(self, _outputs, feed):
            return [np.zeros((len(feed["input"]), 7), np.float32)]

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    rows = compare(model, WrongSession(), np.ones((2, 3, 2, 2), np.float32), 1e-4, (1, 2))
    assert [r.failures for r in rows] == [["shape [1, 7] != torch [1, 3]"], ["shape [2, 7] != torch [2, 3]"]]
    assert all(r.max_abs_diff == float("inf") and r.top1_agreement == 0.0 for r in rows)


@pytest.mark.slow
def test_a_model_over_2_gb_keeps_its_weights_beside_the_file(run, tmp_path, monkeypatch):
    """ONNX files hold at most 2 GB: larger weights go to NAME.onnx.data (the limit is lowered to test it)."""
    import zoo.runtime.onnx_io

    monkeypatch.setattr(zoo.runtime.onnx_io, "EXTERNAL_DATA_BYTES", 1000)
    result, data, _ = run
    report = export(result.run_dir, tmp_path / "big.onnx")
    assert report.passed and (tmp_path / "big.onnx.data").is_file()
    assert [p.name for p in zoo.runtime.onnx_io.external_data_files(tmp_path / "big.onnx")] == ["big.onnx.data"]
    image = next((data / "val" / "cats").iterdir())
    assert Predictor(tmp_path / "big.onnx").predict([image])[0]["top"][0]["label"] in ("cats", "dogs")
    assert export(result.run_dir, tmp_path / "big.onnx").passed  # its own files: overwritten, not refused
    assert verify(tmp_path / "big.onnx", result.run_dir).passed


@pytest.mark.slow
def test_a_second_export_to_the_same_file_stops_while_the_first_writes(run, tmp_path):
    """Two concurrent exports to one -o must not both say "verified" while the last writer wins."""
    import fcntl

    result, _, _ = run
    output = tmp_path / "m.onnx"
    lock = tmp_path / ".m.onnx.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 12345")
    fcntl.flock(fd, fcntl.LOCK_EX)  # an export in progress
    try:
        busy = runner.invoke(app, ["export", str(result.run_dir), "-o", str(output)])
    finally:
        os.close(fd)
    assert busy.exit_code != 0 and "another zoo export is writing it (pid 12345)" in busy.output
    assert not output.exists()
    done = runner.invoke(app, ["export", str(result.run_dir), "-o", str(output)])  # the lock released: it goes on
    assert done.exit_code == 0, done.output
    assert output.exists() and not lock.exists()
