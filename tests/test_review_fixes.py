"""Lists and helpers that are defined once and used in several places stay one truth."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import hookimpl
from zoo.catalogue import policies
from zoo.catalogue.plugins import PluginInfo, load_plugins
from zoo.core import metrics
from zoo.core.errors import PolicyError, UsageError
from zoo.data.balance import choose, select_metric
from zoo.training.config import OPTIMIZER_DEFAULTS, OPTIMIZERS, TrainConfig
from zoo.training.runs import new_run_dir, run_name


def _help(name: str) -> str:
    return next(f for f in dataclasses.fields(TrainConfig) if f.name == name).metadata["help"]


def test_policy_help_names_every_builtin_policy_in_order():
    assert policies.BUILTIN_NAMES == tuple(policies.BUILTIN_HELP)
    assert _help("policy").startswith(f"Freeze policy: {', '.join(policies.BUILTIN_NAMES)}, or a named one")
    assert policies.builtin_names()[:2] == ["feature-extract", "linear-probe"]


def test_every_builtin_form_and_alias_parses_and_the_error_lists_them(use_registry):
    registry = use_registry()
    examples = {"freeze:K": "freeze:1", "discriminative:F": "discriminative:0.5", "gradual:N": "gradual:2"}
    for form in policies.builtin_names():
        if form == "auto":
            continue
        text = examples.get(form, form.replace("cut:GROUP", "cut:stage1"))
        assert policies.parse_policy(text, registry).name == text
    with pytest.raises(PolicyError, match="choose from " + ", ".join(policies.builtin_names())):
        policies.parse_policy("nonesuch", registry)


def test_select_by_choices_are_the_metrics_every_report_has():
    assert metrics.SELECTABLE == ("acc", "balanced_acc", "macro_f1", "map")
    assert set(metrics.SELECTABLE) < set(metrics.METRICS)
    assert f"auto, {', '.join(metrics.SELECTABLE)} [" in _help("select_by")
    balance = choose("auto", [10, 10], 20, multi_label=False)
    for name in metrics.SELECTABLE:
        assert select_metric(name, balance) == name
        TrainConfig(backbone="b", data="d", select_by=name).check()
    with pytest.raises(UsageError, match="--select-by micro_f1"):
        TrainConfig(backbone="b", data="d", select_by="micro_f1").check()


def test_the_reports_carry_the_headline_metrics():
    import numpy as np

    single = metrics.single_label_report(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"])
    multi = metrics.multi_label_report(np.array([[1, 0], [0, 1]]), np.array([[0.9, 0.1], [0.2, 0.8]]), [0.5] * 2,
                                       ["a", "b"])  # fmt: skip
    assert set(metrics.SELECTABLE) <= set(single) and "micro_f1" not in single
    assert set(metrics.METRICS) <= set(multi)


def test_record_keeps_the_shared_metrics():
    from zoo.training import record

    assert record.METRICS is metrics.METRICS


def test_optimizer_defaults_are_one_table():
    from zoo.training.optim import base_lr, weight_decay

    assert OPTIMIZERS == tuple(OPTIMIZER_DEFAULTS) == ("adamw", "sgd")
    assert base_lr(None, "adamw", head_only=True) == 1e-2 and base_lr(None, "adamw", head_only=False) == 3e-4
    assert base_lr(None, "sgd", head_only=True) == base_lr(None, "sgd", head_only=False) == 1e-2
    assert base_lr(0.5, "sgd", head_only=True) == 0.5
    assert weight_decay(None, "adamw") == 0.05 and weight_decay(None, "sgd") == 1e-4 and weight_decay(0, "sgd") == 0
    assert "[default: 0.01 (adamw) or 0.01 (sgd) when only the head trains, else 0.0003 or 0.01]" in _help("lr")
    assert "[default: 0.05 (adamw) or 0.0001 (sgd)]" in _help("weight_decay")


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan"), float("inf")])
def test_momentum_is_refused_outside_0_to_1(value):
    with pytest.raises(UsageError, match=r"--momentum .*: must be in \[0, 1\)"):
        TrainConfig(backbone="b", data="d", momentum=value).check()


@pytest.mark.parametrize(
    "parts, name",
    [
        (("resnet18", "finetune"), "resnet18-finetune"),
        (("resnet18", "freeze:2"), "resnet18-freeze-2"),
        (("hf-hub:timm/vit_tiny", "discriminative:0.5", "lr-find"), "hf-hub-timm-vit_tiny-discriminative-0.5-lr-find"),
        (("onnx:https://host/m.onnx", "cut:layer 3"), "onnx-https-host-m.onnx-cut-layer-3"),
        (("a\\b", "x@y"), "a-b-x-y"),
    ],
)
def test_run_names_are_one_safe_folder_name(parts, name):
    assert run_name(*parts) == name


def test_the_default_run_folder_uses_run_name(tmp_path):
    assert new_run_dir(tmp_path, None, "hf-hub:timm/x", "freeze:1").name == "hf-hub-timm-x-freeze-1"


def test_each_plugin_names_a_failing_plugin_and_goes_on(caplog):
    calls: list = []

    class Bad:
        @hookimpl
        def on_run_event(self, event):
            raise RuntimeError("boom")

    class Good:
        @hookimpl
        def on_run_event(self, event):
            calls.append(event)

    plugins = load_plugins()
    plugins.add(Bad(), "bad")
    plugins.add(Good(), "good")
    with caplog.at_level(logging.WARNING):
        plugins.call_each("on_run_event", event="e")
    assert calls == ["e"]
    assert plugins.infos["bad"].errors == ["on_run_event raised RuntimeError: boom"]
    assert "plugin 'bad' failed in on_run_event: RuntimeError: boom" in caplog.text

    seen: list[PluginInfo] = []
    plugins.each_plugin("on_run_event", lambda function, info: seen.append(info))
    assert {"good", "bad"} <= {i.name for i in seen}


def test_the_tiny_cnn_is_the_scaffold_template():
    import conftest
    from zoo.catalogue import scaffold

    source = scaffold.small_cnn_source()
    assert source in conftest.TINY_PLUGIN_SOURCE
    namespace: dict = {}
    exec(compile(conftest.TINY_PLUGIN_SOURCE, "zoo_tiny.py", "exec"), namespace)
    plugin_model = namespace["build"](None)
    test_model = conftest.build_tiny(None)
    assert {k: v.shape for k, v in plugin_model.state_dict().items()} == {
        k: v.shape for k, v in test_model.state_dict().items()
    }


def test_the_scaffold_writes_the_template_model(tmp_path):
    from zoo.catalogue import scaffold

    root = scaffold.new_plugin("mine", tmp_path)
    build = (root / "zoo_mine" / "build.py").read_text()
    assert scaffold.small_cnn_source() in build
    compile(build, "build.py", "exec")


def test_config_and_metrics_import_neither_torch_nor_numpy():
    code = (
        "import sys; import zoo.training.config, zoo.core.metrics, zoo.catalogue.scaffold\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_old_plugin_paths_are_the_new_modules():
    """The shims named in docs/architecture.md: a plugin written before the folders imports the same objects."""
    import importlib

    pairs = {
        "zoo.backbone": "zoo.catalogue.backbone",
        "zoo.errors": "zoo.core.errors",
        "zoo.events": "zoo.catalogue.events",
        "zoo.hookspecs": "zoo.catalogue.hookspecs",
        "zoo.policies": "zoo.catalogue.policies",
        "zoo.registry": "zoo.catalogue.registry",
        "zoo.weights": "zoo.catalogue.weights",
    }
    for old, new in pairs.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from zoo.backbone import Backbone
    from zoo.catalogue.backbone import Backbone as New

    assert Backbone is New
    docs = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    assert all(f"`{old}`" in docs for old in pairs)


def test_an_explicit_name_that_is_taken_is_said_at_the_start(tmp_path, caplog):
    first = new_run_dir(tmp_path, "same", "b", "p")
    (first / "config.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        second = new_run_dir(tmp_path, "same", "b", "p")
    assert second.name == "same-2" and "--name same" in caplog.text and "same-2" in caplog.text
    caplog.clear()
    (second / "config.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        assert new_run_dir(tmp_path, None, "b", "p").name == "b-p"  # a default name just takes the next number
    assert not caplog.text
