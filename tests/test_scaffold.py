"""`zoo plugin new`: the generated package registers through its entry point and passes its own test."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib

import pytest
from typer.testing import CliRunner

from zoo.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_plugin_new_writes_a_package_that_registers_and_passes_check_backbone(tmp_path, monkeypatch):
    result = runner.invoke(app, ["plugin", "new", "my-models", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "zoo-my-models"
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["zoo"] == {"my_models": "zoo_my_models"}

    # the generated test, run as its author would
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.syspath_prepend(str(root / "tests"))
    importlib.import_module("test_my_models").test_backbone_spec_matches_the_model()

    # installed (a .dist-info with its entry point, as pip writes it): zoo lists the backbone, without torch
    info = root / "zoo_my_models-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-my-models\nVersion: 0.1.0\n")
    entry = project["project"]["entry-points"]["zoo"]
    (info / "entry_points.txt").write_text("[zoo]\n" + "".join(f"{k} = {v}\n" for k, v in entry.items()))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    env.pop("ZOO_LOAD_PLUGINS", None)  # every installed plugin loads, this one through its entry point
    listed = subprocess.run(
        [sys.executable, "-m", "zoo", "list", "my-models"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0 and "my-models-cnn" in listed.stdout, listed.stderr

    # and its own test still passes once installed, the entry point having loaded the plugin already
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tested.returncode == 0 and "1 passed" in tested.stdout, tested.stdout + tested.stderr


def test_plugin_new_refuses_to_overwrite_and_bad_names(tmp_path):
    first = runner.invoke(app, ["plugin", "new", "mine", "--dir", str(tmp_path)])
    assert first.exit_code == 0
    assert "[test]' && zoo list mine" in first.output and "python -m pytest" in first.output  # pytest comes with it
    again = runner.invoke(app, ["plugin", "new", "mine", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(app, ["plugin", "new", "My Models", "--dir", str(tmp_path)])
    assert bad.exit_code == 2 and "plugin name 'My Models'" in bad.output
