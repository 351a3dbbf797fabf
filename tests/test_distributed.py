"""Distributed fine-tuning on the CPU: 2 processes, gloo, 127.0.0.1 only."""

from __future__ import annotations

import functools
import json
import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import install_tiny_plugin, make_images, make_tagged
from zoo.cli import app
from zoo.training.config import LaunchConfig as Launch
from zoo.training.dist import Dist, shard, unshard
from zoo.training.launch import failure_message

pytestmark = pytest.mark.slow  # subprocesses and whole-model checks: minutes

runner = CliRunner()


@pytest.fixture
def env(tmp_path):
    """Environment for subprocesses that can see the tiny plugin (workers load plugins like any zoo)."""
    plugin = install_tiny_plugin(tmp_path / "site")
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(plugin), e.get("PYTHONPATH", "")])
    e.pop("RANK", None)
    return e


def zoo(env, *args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zoo", *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_shard_and_unshard_cover_every_item_once():
    items = list(range(11))
    parts = [shard(items, Dist(rank=r, world=3)) for r in range(3)]
    assert sorted(functools.reduce(operator.iadd, parts, [])) == items
    assert unshard(parts, len(items)) == items


def test_two_processes_reach_the_accuracy_of_one(tmp_path, env):
    """torchrun -m zoo finetune: the same global batch and seed, 1 vs 2 processes; the val set counted once."""
    data = make_images(tmp_path / "data", classes=("a", "b", "c"), per_class=20, size=40)
    common = ["tiny", data, "--policy", "finetune", "--epochs", "4", "--batch-size", "8", "--seed", "0", "--quiet"]
    one = zoo(env, "finetune", *common, "--out", tmp_path / "one", "--name", "run")
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "zoo",
         "finetune", *map(str, common), "--out", str(tmp_path / "two"), "--name", "run"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    s1, s2 = summary(tmp_path / "one" / "run"), summary(tmp_path / "two" / "run")
    assert s2["world_size"] == 2 and s1["world_size"] == 1
    # stated tolerance: the same accuracy within 0.1 (12 val images: one image is 0.083)
    assert abs(s1["final_val_acc"] - s2["final_val_acc"]) <= 0.1, (s1["final_val_acc"], s2["final_val_acc"])
    assert s2["final_val_acc"] >= 0.9
    history = torch.load(tmp_path / "two" / "run" / "last.pt", weights_only=False)["history"]
    assert all(row["val_images"] == s2["val_images"] == 12 for row in history)  # each val image exactly once
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["run"]  # one run folder, written once
    assert len(list((tmp_path / "two" / "run").glob("*.pt"))) == 2  # best.pt and last.pt


def test_nproc_per_node_feature_extract_uses_per_rank_caches(tmp_path, env):
    data = make_images(tmp_path / "data", classes=("a", "b"), per_class=16, size=40)
    args = ["tiny", data, "--policy", "feature-extract", "--epochs", "8", "--lr", "0.05", "--batch-size", "8",
            "--out", tmp_path]  # fmt: skip
    result = zoo(env, "finetune", *args, "--nproc-per-node", "2", "--name", "dist", "--json")
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["world_size"] == 2 and s["cache"] is not None and s["epochs_run"] == 8
    assert s["best_val_acc"] >= 0.8
    single = zoo(env, "finetune", *args, "--name", "single", "--json")
    assert abs(json.loads(single.stdout)["best_val_acc"] - s["best_val_acc"]) <= 0.125
    # gradual unfreezing: the cache boundary and the trainable groups move, and DDP is rebuilt each time
    gradual = zoo(env, "finetune", *args, "--policy", "gradual:2", "--nproc-per-node", "2", "--name", "gr", "--json")
    assert gradual.returncode == 0, gradual.stderr
    history = torch.load(tmp_path / "gr" / "last.pt", weights_only=False)["history"]
    assert len(history) == 8


@pytest.mark.parametrize("policy", ["feature-extract", "finetune"])
def test_two_processes_train_multi_label_with_a_balanced_sampler_and_a_test_split(tmp_path, env, policy):
    """Val and test figures gathered from both ranks (each image once); the sampler draws per rank."""
    tags = make_tagged(tmp_path / "tags", n=48, splits=["train", "train", "val", "train", "test", "train"])
    args = ["tiny", tags, "--policy", policy, "--epochs", "4", "--lr", "0.05", "--batch-size", "8",
            "--balance", "sampler", "--out", tmp_path, "--json"]  # fmt: skip
    two = zoo(env, "finetune", *args, "--nproc-per-node", "2", "--name", "two")
    assert two.returncode == 0, two.stderr
    one = zoo(env, "finetune", *args, "--name", "one")
    assert one.returncode == 0, one.stderr
    s2, s1 = json.loads(two.stdout), json.loads(one.stdout)
    assert s2["world_size"] == 2 and s2["task"] == "multi-label" and s2["balance"]["mode"] == "sampler"
    assert (s2["cache"] is not None) == (policy == "feature-extract")
    history = torch.load(tmp_path / "two" / "last.pt", weights_only=False)["history"]
    assert all(row["val_images"] == 8 for row in history)
    assert s2["test"]["images"] == 8 and len(s2["thresholds"]) == 3
    assert abs(s2["best_val"]["map"] - s1["best_val"]["map"]) <= 0.15, (s1["best_val"], s2["best_val"])


def test_two_processes_accumulate_to_the_same_step_as_a_larger_batch(tmp_path, env):
    """--accum-steps under DDP: gradients all-reduced once per step (no_sync before), the step of one larger batch."""
    data = make_images(tmp_path / "data", classes=("a", "b"), per_class=16, size=40)
    args = ["tiny", data, "--policy", "feature-extract", "--epochs", "2", "--lr", "0.05", "--cache", "off",
            "--amp", "off", "--nproc-per-node", "2", "--out", tmp_path, "--json"]  # fmt: skip
    big = zoo(env, "finetune", *args, "--batch-size", "16", "--name", "big")
    small = zoo(env, "finetune", *args, "--batch-size", "8", "--accum-steps", "2", "--name", "small")
    assert big.returncode == 0 and small.returncode == 0, big.stderr + small.stderr
    assert json.loads(small.stdout)["effective_batch"] == 16
    a = torch.load(tmp_path / "big" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "small" / "last.pt", weights_only=True)
    assert a["step"] == b["step"]
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], atol=1e-5), key


def _proc(pid) -> tuple[list[bytes], int] | None:
    """(environ, parent pid) of a process, from /proc."""
    try:
        environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        parent = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return environ, parent


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The worker process with RANK=rank under `launcher` (not one of its DataLoader children, which share its env)."""
    tag = f"RANK={rank}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (info := _proc(entry.name)) is None or tag not in info[0]:
            continue
        parent_info = _proc(info[1])
        if parent_info is not None and tag in parent_info[0]:
            continue  # a child of the worker
        parent = info[1]
        while parent > 1:
            if parent == launcher:
                return int(entry.name)
            up = _proc(parent)
            parent = up[1] if up else 1
    return None


def _start_and_catch_rank1(tmp_path, env, *extra):
    """Launch a 30-epoch 2-process run; once its first checkpoint exists, return (launcher, run dir, rank-1 pid).

    Output goes to files, not pipes: waiting on the launcher must not depend on which processes hold a pipe.
    """
    data = make_images(tmp_path / "data", classes=("a", "b"), per_class=60, size=48)
    run = tmp_path / "runs" / "job"
    args = ["finetune", "tiny", data, "--epochs", "30", "--batch-size", "8", "--nproc-per-node", "2",
            "--out", tmp_path / "runs", "--name", "job", *extra]  # fmt: skip
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        launcher = subprocess.Popen([sys.executable, "-m", "zoo", *map(str, args)], env=env, stdout=out, stderr=err)
    deadline = time.time() + 180
    while not (run / "last.pt").is_file() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim = _worker_pid(launcher.pid, 1)
    if victim is None:
        launcher.kill()
        pytest.fail("rank 1 worker not found")
    return launcher, run, victim


def _ended(launcher, tmp_path, timeout=120) -> str:
    """Wait for the launcher to exit on its own; its stderr. A hang fails the test with the process tree."""
    try:
        launcher.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = subprocess.run(["ps", "-eo", "pid,ppid,stat,etime,args"], capture_output=True, text=True).stdout
        launcher.kill()
        pytest.fail(
            f"the job did not end within {timeout} s:\n{tree[-3000:]}\n{(tmp_path / 'err.txt').read_text()[-3000:]}"
        )
    return (tmp_path / "err.txt").read_text()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker through /proc (Linux)")
def test_killed_worker_stops_the_job_naming_its_rank_and_resume_completes(tmp_path, env):
    launcher, run, victim = _start_and_catch_rank1(tmp_path, env, "--dist-timeout", "60")
    try:
        os.kill(victim, signal.SIGKILL)
        stderr = _ended(launcher, tmp_path)  # no hang: the job ends on its own
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    text = " ".join(stderr.split())
    assert "worker rank 1" in text and "SIGKILL" in text, text[-2000:]
    assert f"--resume {run}" in text and "Traceback" not in text.split("error:")[-1]
    from zoo.model.checkpoint import read_checkpoint

    before = read_checkpoint(run / "last.pt")  # loads as a complete checkpoint (weights_only)
    done = before["epoch"]
    metrics_rows = (run / "metrics.csv").read_text().strip().splitlines()[1:]
    assert done < 30 and len(before["history"]) == done == len(metrics_rows)  # epoch, history and csv agree

    resumed = zoo(env, "finetune", "--resume", run, "--nproc-per-node", "2", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    s = summary(run)
    assert s["status"] == "completed" and s["epochs_run"] == 30 and s["world_size"] == 2
    after = torch.load(run / "last.pt", weights_only=False)["history"]
    assert after[:done] == before["history"]  # continued from the checkpoint, not started again


def test_launch_options_are_checked_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a run folder would appear
    data = make_images(tmp_path / "data", per_class=4)
    bad = runner.invoke(app, ["finetune", "resnet18", str(data), "--nproc-per-node", "2", "--batch-size", "7"])
    assert bad.exit_code == 2 and "--batch-size 7: the global batch must divide evenly over 2 workers" in bad.output
    if not torch.cuda.is_available():
        sync = runner.invoke(app, ["finetune", "resnet18", str(data), "--nproc-per-node", "2", "--sync-bn"])
        assert sync.exit_code == 2 and "--sync-bn: SyncBatchNorm needs CUDA" in sync.output
    unknown = runner.invoke(app, ["finetune", "resnet19", str(data), "--nproc-per-node", "2"])
    assert unknown.exit_code == 2 and "did you mean resnet18" in unknown.output
    nodes = runner.invoke(app, ["finetune", "resnet18", str(data), "--nnodes", "2"])
    assert nodes.exit_code == 2 and "--rdzv-endpoint" in nodes.output
    assert not (tmp_path / "runs").exists()


def test_rendezvous_arguments():
    assert "--standalone" in Launch(nproc_per_node=2).torchrun_args()
    c10d = Launch(nproc_per_node=4, nnodes=2, rdzv_endpoint="node0:29400").torchrun_args()
    assert "--rdzv-backend=c10d" in c10d and "--rdzv-endpoint=node0:29400" in c10d and "--nnodes=2" in c10d
    static = Launch(nproc_per_node=4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29500)
    assert {"--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29500"} <= set(static.torchrun_args())


def test_failure_message_names_rank_signal_and_resume():
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failure = ProcessFailure(local_rank=1, pid=4242, exitcode=-9, error_file="/nonexistent")
    other = ProcessFailure(local_rank=0, pid=4241, exitcode=1, error_file="/nonexistent")
    other.timestamp = failure.timestamp + 5
    exc = ChildFailedError("zoo.training.launch", {1: failure, 0: other})
    text = failure_message(exc, Path("runs/x"), Launch(nproc_per_node=2))
    assert text.startswith("worker rank 1 (pid 4242) was killed by SIGKILL; the job stopped (1 other worker(s)")
    assert "zoo finetune --resume runs/x --nproc-per-node 2" in text


def test_a_worker_error_before_training_ends_the_job_with_its_message(tmp_path, env):
    data = make_images(tmp_path / "data", classes=("only",), per_class=6)
    result = zoo(env, "finetune", "tiny", data, "--nproc-per-node", "2", "--out", tmp_path / "runs", timeout=120)
    assert result.returncode != 0
    assert "error: rank 0:" in result.stderr and "one class" in result.stderr, result.stderr[-1500:]
    assert "worker rank" in result.stderr and "--resume" not in result.stderr  # nothing to resume
    assert not any((tmp_path / "runs").glob("*"))  # no empty run folder left behind


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker through /proc (Linux)")
def test_a_stuck_worker_ends_the_job_after_the_timeout(tmp_path, env):
    """SIGSTOP rank 1: rank 0's collective times out after --dist-timeout and the whole job stops; no hang."""
    launcher, run, victim = _start_and_catch_rank1(tmp_path, env, "--dist-timeout", "5")
    try:
        os.kill(victim, signal.SIGSTOP)
        start = time.time()
        stderr = _ended(launcher, tmp_path)
        elapsed = time.time() - start
    finally:
        if launcher.poll() is None:
            launcher.kill()
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert launcher.returncode != 0 and elapsed < 60, elapsed
    text = " ".join(stderr.split())
    assert "worker rank 0" in text and "timed out waiting for another worker" in text, text[-1500:]
    assert f"--resume {run}" in text


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(tmp_path, env, common, rendezvous) -> list[tuple[Path, subprocess.CompletedProcess]]:
    """Two `zoo finetune` node processes on 127.0.0.1, each in its own working directory with a relative --out, as
    two machines without a shared file system; `rendezvous(node)` gives each node's flags."""
    nodes = []
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir()
        cmd = [sys.executable, "-m", "zoo", "finetune", *map(str, common), "--out", "runs", "--name", "run",
               "--nnodes", "2", "--nproc-per-node", "1", *rendezvous(node)]  # fmt: skip
        nodes.append((cwd, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)))  # fmt: skip
    done = []
    for cwd, proc in nodes:
        out, err = proc.communicate(timeout=300)
        done.append((cwd, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)))
    return done


def test_two_nodes_without_a_shared_file_system_train_as_one_process(tmp_path, env):
    """--nnodes 2 for real: two node processes, c10d rendezvous then static, against one process (same global
    batch and seed). Exactly one node holds the run folder (the one that ran global rank 0); the other says so."""
    data = make_images(tmp_path / "data", classes=("a", "b", "c"), per_class=20, size=40)
    common = ["tiny", data, "--policy", "finetune", "--epochs", "4", "--batch-size", "8", "--seed", "0"]
    one = zoo(env, "finetune", *common, "--quiet", "--out", tmp_path / "one", "--name", "run")
    assert one.returncode == 0, one.stderr
    single = summary(tmp_path / "one" / "run")
    c10d, static = _free_port(), _free_port()
    flags = {
        "c10d": lambda node: ["--rdzv-endpoint", f"127.0.0.1:{c10d}"],
        "static": lambda node: ["--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(static)],
    }
    for kind, rendezvous in flags.items():
        root = tmp_path / kind
        root.mkdir()
        nodes = _two_nodes(root, env, common, rendezvous)
        assert all(p.returncode == 0 for _, p in nodes), [p.stderr[-2000:] for _, p in nodes]
        holders = [cwd for cwd, _ in nodes if (cwd / "runs" / "run" / "summary.json").is_file()]
        assert len(holders) == 1, kind
        if kind == "static":
            assert holders == [root / "node0"]  # --node-rank 0 hosts global rank 0
        other_cwd, other = next((cwd, p) for cwd, p in nodes if cwd not in holders)
        assert "the run folder is on the node that ran global rank 0" in other.stdout
        assert not (other_cwd / "runs" / "run").exists()  # no empty folder that looks like a run
        two = summary(holders[0] / "runs" / "run")
        assert two["world_size"] == 2 and two["status"] == "completed"
        # stated tolerance, as for two processes on one node: the same val accuracy within 0.1 (12 val images)
        assert abs(single["final_val_acc"] - two["final_val_acc"]) <= 0.1, (kind, single, two["final_val_acc"])
