"""zoo-mlflow against a local MLflow tracking store (sqlite, no server, no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c, colour in enumerate(((200, 40, 40), (40, 40, 200))):
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return tmp_path / "data"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts a sqlite store's artefacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "zoo-test")
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    return uri


@pytest.fixture
def tiny():
    """A 3-layer CNN registered by an in-test plugin beside every installed plugin (zoo-mlflow included): the off
    switches and the failure path do not depend on the model, and lite0 would take seconds to train here."""
    import zoo.catalogue.registry as registry
    from zoo import Backbone, Group, Preprocess, hookimpl

    def build(spec, weights=None, num_classes=10, **kwargs):
        from torch import nn

        model = nn.Sequential()
        model.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU()))
        model.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        model.add_module("fc", nn.Linear(8, num_classes))
        return model

    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register(Backbone(name="tiny", family="tiny", build=build, head="fc",
                              groups=(Group("stem", ("stem",)), Group("head", ("fc",))),
                              preprocess=Preprocess(input_size=(32, 32), crop_pct=1.0)))  # fmt: skip

    saved = registry._REGISTRY
    registry._REGISTRY = registry.build_registry([("tinyplugin", Plugin())])
    assert "mlflow" in registry._REGISTRY.plugins  # the plugin under test gets the runs' events
    try:
        yield "tiny"
    finally:
        registry._REGISTRY = saved


@pytest.fixture
def no_pictures(monkeypatch):
    """As tests/conftest.py does for zoo's own tests: the run's pictures (matplotlib, longer than the tiny model's
    training) are not drawn, and the training loop's gc.collect() scans only what this test made."""
    import gc

    import zoo.training.plots

    monkeypatch.setattr(zoo.training.plots, "write_all", lambda *args, **kwargs: None)
    gc.collect()
    gc.freeze()


def _files(client, run_id, path=""):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _files(client, run_id, item.path) if item.is_dir else [item.path]
    return out


@pytest.mark.slow  # MLflow creates its sqlite schema (seconds), a real model trains and exports
def test_a_run_and_its_export_land_in_mlflow(tmp_path, data, store):
    from mlflow.tracking import MlflowClient

    import zoo
    from zoo.export.exporter import export
    from zoo.training.train import resume_run

    result = zoo.finetune("efficientnet_lite0", data, policy="feature-extract", epochs=2, out=str(tmp_path / "runs"),
                          name="run", workers=0)  # fmt: skip
    run_id = json.loads((result.run_dir / "mlflow.json").read_text())["run_id"]
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["backbone"] == "efficientnet_lite0" and run.data.params["policy"] == "feature-extract"
    assert run.data.tags["zoo.policy"] == "feature-extract"
    history = client.get_metric_history(run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([h["val_acc"] for h in result.history])
    assert "best_val_acc" in run.data.metrics
    files = _files(client, run_id)
    assert {"summary.json", "metrics.csv", "config.json", "plots/curves.png"} <= set(files)
    # resumed: the same MLflow run goes on
    resume_run(result.run_dir, epochs=3)
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1, 2, 3]
    assert json.loads((result.run_dir / "mlflow.json").read_text())["run_id"] == run_id
    # exported: the verified ONNX model and its report, in the run that trained it
    export(result.run_dir, tmp_path / "model.onnx")
    files = _files(client, run_id)
    assert "onnx/model.onnx" in files and "onnx/model.json" in files
    assert client.get_run(run_id).data.metrics["export_top1_agreement"] == 1.0


def test_off_without_a_tracking_uri_or_with_zoo_mlflow_0(tmp_path, data, tiny, no_pictures, monkeypatch):
    import zoo

    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a = zoo.finetune(tiny, data, policy="feature-extract", epochs=1, out=str(tmp_path / "r"), name="a", workers=0,
                     weights="none")  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("ZOO_MLFLOW", "0")
    b = zoo.finetune(tiny, data, policy="feature-extract", epochs=1, out=str(tmp_path / "r"), name="b", workers=0,
                     weights="none")  # fmt: skip
    assert not (a.run_dir / "mlflow.json").exists() and not (b.run_dir / "mlflow.json").exists()
    assert not (tmp_path / "x.db").exists()


@pytest.mark.slow
def test_a_tracking_failure_is_one_warning_and_the_run_goes_on(tmp_path, data, tiny, no_pictures, monkeypatch,
                                                               caplog):  # fmt: skip
    import zoo

    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/no/such/dir/mlflow.db")
    result = zoo.finetune(tiny, data, policy="feature-extract", epochs=1, out=str(tmp_path / "r"), name="c",
                          workers=0, weights="none")  # fmt: skip
    assert result.summary["status"] == "completed"
    assert any("zoo-mlflow: could not log started" in r.getMessage() for r in caplog.records)
