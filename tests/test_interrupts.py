"""Signals and concurrency: SIGTERM like Ctrl-C, signals during the last files, one trainer per run folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from conftest import install_tiny_plugin, make_images
from zoo.cli import app
from zoo.core.errors import Interrupted, RunLocked
from zoo.model.checkpoint import read_checkpoint
from zoo.training.runs import RunLock
from zoo.training.train import Trainer, finetune, resume_run

runner = CliRunner()


def _options(tmp_path, **extra):
    return {"epochs": 3, "batch_size": 8, "weights": "none", "workers": 0, "out": str(tmp_path / "runs"), **extra}


@pytest.mark.slow
def test_sigterm_saves_what_is_complete_and_says_how_to_resume(tmp_path):
    images = make_images(tmp_path / "data", per_class=12)
    env = dict(os.environ, PYTHONPATH=str(install_tiny_plugin(tmp_path / "site")))
    run = tmp_path / "runs" / "term"
    cmd = [sys.executable, "-m", "zoo", "finetune", "tiny", str(images), "--weights", "none", "--epochs", "400",
           "--batch-size", "4", "--workers", "0", "--augment", "light", "--out", str(tmp_path / "runs"),
           "--name", "term"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "last.pt").exists() and read_checkpoint(run / "last.pt")["epoch"]):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted during epoch") and f"continue with: zoo finetune --resume {run}" in last
    assert "Traceback" not in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_run"] == read_checkpoint(run / "last.pt")["epoch"]
    assert not (run / ".lock").exists()


def test_ctrl_c_before_the_first_epoch_leaves_no_run_folder(tmp_path, tiny_registry, monkeypatch):
    images = make_images(tmp_path / "data", per_class=6)

    def stop(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train_epoch", stop)
    with pytest.raises(Interrupted, match="no epoch was complete, so nothing was kept") as err:
        finetune("tiny", images, name="never", **_options(tmp_path))
    assert err.value.exit_code == 130
    assert not (tmp_path / "runs" / "never").exists()


@pytest.mark.plots
def test_a_signal_while_the_last_files_are_written_waits_for_them(tmp_path, tiny_registry, monkeypatch):
    import zoo.training.plots

    images = make_images(tmp_path / "data", per_class=6)
    original = zoo.training.plots.write_all
    run_process = os.getpid()  # the plots are drawn in a child process: the run's own process gets the Ctrl-C

    def interrupted_plots(*args, **kwargs):
        os.kill(run_process, signal.SIGINT)  # Ctrl-C while the pictures are drawn
        return original(*args, **kwargs)

    monkeypatch.setattr(zoo.training.plots, "write_all", interrupted_plots)
    with pytest.raises(Interrupted, match="they were completed first") as err:
        finetune("tiny", images, name="late", **_options(tmp_path, epochs=1))
    assert err.value.exit_code == 130
    run = tmp_path / "runs" / "late"
    assert (run / "predictions.png").is_file() and (run / "confusion_matrix.png").is_file()
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_two_trainers_cannot_share_a_run_folder(tmp_path, tiny_registry):
    images = make_images(tmp_path / "data", per_class=6)
    result = finetune("tiny", images, name="shared", **_options(tmp_path, epochs=1))
    with RunLock(result.run_dir):  # another `zoo finetune --resume` of the same run, still training
        with pytest.raises(RunLocked, match=rf"in use by process {os.getpid()} \("):
            resume_run(result.run_dir, epochs=2)
        cli = runner.invoke(app, ["finetune", "--resume", str(result.run_dir), "--epochs", "2"])
        assert cli.exit_code == 5 and "wait for it to finish or stop it" in cli.stderr
    assert resume_run(result.run_dir, epochs=2).epochs_run == 2  # free again once the other one is done


def test_a_diverging_loss_stops_the_run_naming_the_epoch(tmp_path, tiny_registry):
    images = make_images(tmp_path / "data", per_class=6)
    result = runner.invoke(app, ["finetune", "tiny", str(images), "--epochs", "3", "--weights", "none",
                                 "--workers", "0", "--optimizer", "sgd", "--lr", "1e38", "--out",
                                 str(tmp_path / "runs")])  # fmt: skip
    assert result.exit_code == 6, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "the training loss became nan in epoch" in line and "lower --lr" in line
