"""For every test of the repository (tests/ and the plugins' own): no test reads or writes the user's homes."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config):
    """Collection already builds the registry (tests/test_backbones.py): never from the user's own zoo home,
    where imported ONNX models or registry overrides would change what the tests see."""
    config._zoo_home = os.environ["ZOO_HOME"] = tempfile.mkdtemp(prefix="zoo-test-home-")
    os.environ["HF_HUB_CACHE"] = os.path.join(config._zoo_home, "hf-hub")  # never the user's Hugging Face cache


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(getattr(config, "_zoo_home", ""), ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_homes(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's zoo home, torch cache or Hugging Face cache, nor goes through the user's
    mirrors (a test that wants one sets it)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("ZOO_HOME", str(home / "zoo"))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf-hub"))
    for name in ("ZOO_MIRROR", "HF_ENDPOINT", "HF_HUB_OFFLINE", "ZOO_TIMINGS"):
        monkeypatch.delenv(name, raising=False)
