"""Plugins: good ones register, broken ones are named and skipped, `zoo list` survives all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import plugin_module, tiny_spec
from zoo import Group, hookimpl


def test_register_backbones_good_plugin_registers_with_its_name(use_registry):
    r = use_registry(("tinyplugin", plugin_module("tinyplugin", tiny_spec())))
    assert r.get("tiny").source == "tinyplugin"
    assert r.plugins["tinyplugin"].backbones == ["tiny"]
    assert r.plugins["tinyplugin"].errors == []


def test_invalid_specs_are_skipped_with_plugin_and_reason(use_registry, caplog):
    bad_head = tiny_spec("badhead", groups=(Group("stem", ("stem",)), Group("head", ("stage1",))))
    bad_name = tiny_spec("Bad Name")
    good = tiny_spec("goodone")
    r = use_registry(("sloppy", plugin_module("sloppy", bad_head, bad_name, good)))
    assert [s.name for s in r.list(source="sloppy")] == ["goodone"]
    errors = r.plugins["sloppy"].errors
    assert any("plugin 'sloppy', backbone 'badhead'" in e and "must hold the head 'fc'" in e for e in errors)
    assert any("lower case" in e for e in errors)
    assert "plugin 'sloppy', backbone 'badhead'" in caplog.text
    assert r.get("resnet18")  # the other plugins are untouched


def test_hook_that_raises_is_recorded(use_registry):
    class Exploding:
        @hookimpl
        def register_backbones(self, register):
            register(tiny_spec("before_the_crash"))
            raise RuntimeError("boom")

    r = use_registry(("exploding", Exploding()))
    assert "RuntimeError: boom" in r.plugins["exploding"].errors[0]
    assert r.get("before_the_crash").source == "exploding"
    assert r.get("resnet18")


def _install_fake_distribution(root, name, module_source):
    """A plugin 'installed' on sys.path: a module plus a .dist-info with a `zoo` entry point."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[zoo]\n{name} = {name}\n")


def _zoo(args, root):
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_plugin_that_fails_to_import_is_named_and_skipped(tmp_path):
    _install_fake_distribution(tmp_path, "zoo_broken", "raise ImportError('needs libfoo')\n")
    _install_fake_distribution(
        tmp_path,
        "zoo_extra",
        """
        from zoo import Backbone, Group, hookimpl

        @hookimpl
        def register_backbones(register):
            register(Backbone(name="extra_net", family="extra", build="zoo_extra:build", head="fc",
                              groups=(Group("body", ("body",)), Group("head", ("fc",)))))
    """,
    )
    result = _zoo(["list", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    names = {b["name"] for b in json.loads(result.stdout)}
    assert {"extra_net", "resnet18", "efficientnet_lite0"} <= names
    assert "plugin 'zoo_broken' skipped: ImportError: needs libfoo" in result.stderr

    result = _zoo(["plugins", "--json"], tmp_path)
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["zoo_broken"]["errors"] == ["failed to load: ImportError: needs libfoo"]
    assert plugins["zoo_extra"]["version"] == "0.3"
    assert plugins["zoo_extra"]["backbones"] == ["extra_net"]


def test_register_policies_adds_a_named_policy(use_registry):
    from zoo.catalogue.policies import Policy, parse_policy

    class PolicyPlugin:
        @hookimpl
        def register_policies(self, register):
            register("top", lambda arg: Policy("top", frozen=int(arg or 1)), help="freeze the first N")
            register("broken", lambda arg: "not a policy", help="returns the wrong type")

    registry = use_registry(("policyplugin", PolicyPlugin()))
    assert registry.plugins["policyplugin"].policies == ["top", "broken"]
    assert parse_policy("top:2", registry).frozen == 2
    import pytest

    from zoo.core.errors import PolicyError

    with pytest.raises(PolicyError, match="plugin 'policyplugin': policy 'broken' returned str"):
        parse_policy("broken", registry)


@pytest.mark.slow
def test_register_commands_adds_a_command_and_a_failing_plugin_is_named(tmp_path):
    _install_fake_distribution(
        tmp_path,
        "zoo_hello",
        """
        import typer
        from zoo import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def hello(name: str = typer.Argument("world")):
                \"\"\"Say hello.\"\"\"
                typer.echo(f"hello {name}")
    """,
    )
    _install_fake_distribution(
        tmp_path,
        "zoo_badcmd",
        """
        from zoo import hookimpl

        @hookimpl
        def register_commands(cli):
            raise RuntimeError("cannot add")
    """,
    )
    result = _zoo(["hello", "zoo"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello zoo\n"
    assert "plugin 'zoo_badcmd' failed in register_commands: RuntimeError: cannot add" in result.stderr
    plugins = {p["name"]: p for p in json.loads(_zoo(["plugins", "--json"], tmp_path).stdout)}
    assert plugins["zoo_hello"]["commands"] == ["hello"]
    assert plugins["onnx"]["commands"] == ["import"]  # the built-in ONNX plugin adds `zoo import` the same way
    assert "hello" in _zoo(["--help"], tmp_path).stdout


def test_on_run_event_reaches_plugins_and_a_failing_one_does_not_stop_the_run(use_registry, tmp_path):
    from conftest import make_images
    from zoo.training.train import finetune

    seen = []

    class Tracker:
        @hookimpl
        def on_run_event(self, event):
            seen.append(event)

    class Broken:
        @hookimpl
        def on_run_event(self, event):
            raise ValueError("tracker down")

    registry = use_registry(
        ("tinyplugin", plugin_module("tinyplugin", tiny_spec())), ("tracker", Tracker()), ("broken", Broken())
    )
    data = make_images(tmp_path / "data", per_class=6)
    callback_events = []
    result = finetune(
        "tiny", data, epochs=2, weights="none", workers=0, out=str(tmp_path / "runs"), callback=callback_events.append
    )
    kinds = [e.kind for e in seen]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert kinds.count("epoch_ended") == 2 and "best_improved" in kinds
    assert "progress" not in kinds  # per-batch progress goes to the caller's callback only
    assert any(e.kind == "progress" for e in callback_events)
    assert all(e.run_dir == str(result.run_dir) for e in seen[1:])
    assert seen[-1].data["summary"]["epochs_run"] == 2
    assert any("on_run_event raised ValueError: tracker down" in e for e in registry.plugins["broken"].errors)
