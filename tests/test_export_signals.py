"""SIGTERM during `zoo export` is handled like Ctrl-C: the temporary files go, nothing is half-written, exit 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import install_tiny_plugin, make_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained by `zoo finetune` in a subprocess, and the environment that finds its plugin."""
    root = tmp_path_factory.mktemp("signals")
    data = make_images(root / "data", per_class=8)
    env = dict(os.environ, PYTHONPATH=str(install_tiny_plugin(root / "site")))
    cmd = [sys.executable, "-m", "zoo", "finetune", "tiny", str(data), "--weights", "none", "--epochs", "1",
           "--workers", "0", "--out", str(root / "runs"), "--name", "run"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root / "runs" / "run", env


def _export(trained, tmp_path):
    """`zoo export RUN -o OUT/m.onnx --int8` started, with its own TMPDIR (INT8 calibration works in one)."""
    run, env = trained
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    cmd = [sys.executable, "-m", "zoo", "export", str(run), "-o", str(out / "m.onnx"), "--int8"]
    env = dict(env, TMPDIR=str(tmp))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out, tmp


def _stop(proc) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _check_stopped(code: int, err: str) -> str:
    assert code == 143, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # the rest: calibration chatter
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    assert errors[0].startswith("error: interrupted (SIGTERM); "), err
    assert "Traceback" not in err
    return errors[0]


def test_sigterm_while_the_model_is_written_leaves_nothing(trained, tmp_path):
    proc, out, tmp = _export(trained, tmp_path)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not list(out.glob(".m.tmp-export-*")):
        time.sleep(0.005)
    assert proc.poll() is None, f"export ended before its temporary folder appeared: {proc.communicate()}"
    code, err = _stop(proc)
    assert _check_stopped(code, err).endswith("; no model file was written")
    assert sorted(p.name for p in out.iterdir()) == []  # no m.onnx, no report, no temporary folder
    assert list(tmp.glob("tmp*")) == []  # tempfile's folders (torch keeps its caches there too)


def test_sigterm_during_int8_keeps_the_verified_model_only(trained, tmp_path):
    proc, out, tmp = _export(trained, tmp_path)
    seen = []
    for line in proc.stderr:  # onnxruntime's calibration says when it starts: the INT8 work is under way
        seen.append(line)
        if line.startswith("Collecting tensor data"):
            break
    assert proc.poll() is None, f"export ended before INT8 calibration began: {''.join(seen)}"
    code, err = _stop(proc)
    line = _check_stopped(code, err)
    assert line.endswith(f"written whole and verified: {out / 'm.onnx'}; not written: {out / 'm.int8.onnx'}"), line
    assert sorted(p.name for p in out.iterdir()) == ["m.json", "m.onnx"]  # fp32 verified and whole; no INT8, no temp
    assert list(tmp.glob("tmp*")) == []  # tempfile's folders (torch keeps its caches there too)


def test_sigterm_during_zoo_import_leaves_nothing_imported(tmp_path):
    """`zoo import` handles SIGTERM like Ctrl-C: the staged copy goes and the registry is untouched."""
    from pathlib import Path

    mnist = Path(__file__).resolve().parents[2] / "shared" / "models" / "mnist-8.onnx"
    if not mnist.is_file():
        pytest.skip(f"{mnist} is not here")
    home = tmp_path / "home"
    env = dict(os.environ, ZOO_HOME=str(home))
    cmd = [sys.executable, "-m", "zoo", "import", str(mnist), "--name", "digits", "--std", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list((home / "onnx").glob("tmp*/files/*.onnx")):
        time.sleep(0.002)
    assert proc.poll() is None, f"the import ended before its staged copy appeared: {proc.communicate()}"
    code, err = _stop(proc)
    assert _check_stopped(code, err).endswith("; nothing was imported")
    assert list((home / "onnx").glob("tmp*")) == []
    registry = home / "registry.toml"
    assert not registry.exists() or "digits" not in registry.read_text()
