"""The CLI: exit codes, output, JSON, and no torch on the listing path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from zoo.cli import app

runner = CliRunner()


def test_list_table_and_json():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    assert "resnet18" in result.output and "efficientnet_lite0" in result.output
    data = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    sources = {}
    for d in data:
        sources[d["source"]] = sources.get(d["source"], 0) + 1
    # 80 torchvision, efficientnet_lite0/1/2, 94 ONNX Model Zoo entries (and timm's, tested in its plugin)
    assert sources["torchvision"] == 80 and sources["efficientnet_lite"] == 3 and sources["onnx"] == 94
    assert next(d for d in data if d["name"] == "mnist-8")["source"] == "onnx"
    lite = next(d for d in data if d["name"] == "efficientnet_lite0")
    assert lite["source"] == "efficientnet_lite" and lite["weights"] == ["imagenet"]
    r18 = next(d for d in data if d["name"] == "resnet18")
    assert r18["num_params"] == 11_689_512 and r18["acc1"] == 69.758 and r18["input_size"] == [224, 224]


def test_list_filters():
    data = json.loads(runner.invoke(app, ["list", "vgg1?_bn", "--json"]).stdout)
    assert [d["name"] for d in data] == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
    data = json.loads(runner.invoke(app, ["list", "--tag", "mobile", "--source", "torchvision", "--json"]).stdout)
    assert "mobilenet_v3_small" in {d["name"] for d in data}
    assert all(d["num_params"] < 10_000_000 for d in data)
    result = runner.invoke(app, ["list", "nothing-like-this"])
    assert result.exit_code == 0 and "0 backbones" in result.output


def test_info_resnet18_json_has_six_groups_head_last():
    result = runner.invoke(app, ["info", "resnet18", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [g["name"] for g in data["groups"]] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert data["groups"][-1]["members"] == ["fc"] and data["groups"][-1]["params"] == 513_000
    assert sum(g["params"] for g in data["groups"]) == 11_689_512
    assert data["head"] == {"path": "fc", "module": "Linear", "in_features": 512, "out_features": 1000}
    assert data["preprocess"]["resize_size"] == 256
    assert data["weights"][0]["url"].endswith("resnet18-f37072fd.pth")


def test_info_table_and_alias():
    result = runner.invoke(app, ["info", "lite0"])
    assert result.exit_code == 0
    assert "efficientnet_lite0" in result.output and "stage4" in result.output and "imagenet (default)" in result.output


def test_unknown_backbone_exits_2_with_suggestion():
    result = runner.invoke(app, ["info", "resnet19"])
    assert result.exit_code == 2
    assert "unknown backbone 'resnet19' (did you mean resnet18?)" in result.output
    assert "Traceback" not in result.output


def test_plugins_lists_builtins():
    data = {p["name"]: p for p in json.loads(runner.invoke(app, ["plugins", "--json"]).stdout)}
    assert {"torchvision", "efficientnet_lite"} <= set(data)
    assert len(data["torchvision"]["backbones"]) == 80
    assert data["efficientnet_lite"]["version"] == "0.1.0"
    table = runner.invoke(app, ["plugins"]).output
    assert "torchvision" in table and "zoo_efficientnet_lite" in table


def test_list_and_help_never_import_torch():
    """One fresh interpreter runs the commands one after the other, checking sys.modules after each: the first
    command that imports torch, torchvision or onnx is named (one process instead of six, the same check)."""
    code = (
        "import sys; from zoo.cli import main\n"
        "for args in (['list'], ['list', '--json'], ['--help'], ['plugins'], ['policies'], ['finetune', '--help'],\n"
        "             ['--version'], ['version', '--json']):\n"
        "    sys.argv = ['zoo', *args]\n"
        "    try:\n        main()\n    except SystemExit as exit:\n        assert not exit.code, (args, exit.code)\n"
        "    for name in ('torch', 'torchvision', 'onnx'):\n"
        "        assert name not in sys.modules, f'zoo {\" \".join(args)} imported {name}'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_python_dash_m_zoo():
    result = subprocess.run(
        [sys.executable, "-m", "zoo", "list", "resnet18", "--json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert json.loads(result.stdout)[0]["name"] == "resnet18"


@pytest.mark.slow
def test_a_closed_stdout_is_exit_141_and_silent():
    """`zoo list | head -1`: the reader went away; that is neither a bug (exit 1) nor worth a line on stderr."""
    import os

    for args in (["list"], ["list", "--json"], ["policies"]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before zoo writes a byte
        proc = subprocess.run([sys.executable, "-m", "zoo", *args], stdout=write, stderr=subprocess.PIPE, timeout=120)
        os.close(write)
        assert (proc.returncode, proc.stderr) == (141, b""), (args, proc.returncode, proc.stderr[-300:])


def test_version_says_what_a_bug_report_needs():
    from zoo.core.version import __version__

    short = runner.invoke(app, ["--version"])
    assert short.exit_code == 0 and short.stdout == f"zoo {__version__}\n"
    full = json.loads(runner.invoke(app, ["version", "--json"]).stdout)
    assert full["zoo"] == __version__ and full["python"].count(".") == 2
    assert full["packages"]["torch"] and full["packages"]["onnxruntime"]  # the README's install has both
    assert {"torchvision", "onnx", "efficientnet_lite"} <= set(full["plugins"])  # the built-in and installed ones
    text = runner.invoke(app, ["version"]).stdout
    assert text.startswith(f"zoo {__version__}") and "torch " in text and "plugins: " in text


def test_every_command_with_an_optional_value_flag_reads_it():
    """A field declared with flag_value (`--ema` alone) only works on a FlagValueCommand: none is forgotten."""
    import typer.main

    from zoo.cli.options import FlagValueCommand, flag_value_of

    group = typer.main.get_command(app)
    with_flag_values = []
    for name, command in group.commands.items():
        if any(flag_value_of(p) for p in command.params):
            with_flag_values.append(name)
            assert isinstance(command, FlagValueCommand), name
    assert {"finetune", "lr-find"} <= set(with_flag_values)


@pytest.mark.slow
def test_shell_completion_offers_commands_flags_and_backbone_names_without_torch():
    """`zoo --install-completion` installs what bash runs on TAB: the same program, with _ZOO_COMPLETE set."""
    code = (
        "import os, sys; from zoo.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'completion imported torch'\n"
    )

    def complete(words: str) -> list[str]:
        env = dict(os.environ, _ZOO_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(len(words.split()) - 1))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("zoo fine") == ["finetune"]
    assert "--policy" in complete("zoo finetune --pol")
    assert complete("zoo finetune efficientnet_lite") == ["efficientnet_lite0", "efficientnet_lite1",
                                                           "efficientnet_lite2"]  # fmt: skip
    assert "resnet18" in complete("zoo info resnet1")
