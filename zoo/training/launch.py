"""Launching a distributed fine-tuning job on PyTorch's own engine: torchrun (torch.distributed.run) and DDP.

Two ways in, one code path:

    zoo finetune MODEL DATA --nproc-per-node 2          # zoo launches torchrun's engine itself
    torchrun --nproc-per-node 2 -m zoo finetune MODEL DATA

Every worker runs the same `zoo.training.train.Trainer`; `zoo.training.dist.Dist` tells it its rank.
Collectives time out after `--dist-timeout` seconds, and torchrun's agent stops the
whole job when a worker dies; the launcher then names the rank.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from zoo.catalogue import events
from zoo.core.errors import DistributedError, DistributedTimeout, UsageError, ZooError
from zoo.training.config import LaunchConfig, TrainConfig
from zoo.training.dist import Dist
from zoo.training.runs import LOCK_HELD_ENV, RunLock, discard_if_unstarted, new_run_dir, run_name, write_config
from zoo.training.train import FinetuneResult, resume_run, train

log = logging.getLogger(__name__)

TIMEOUT_EXIT = DistributedTimeout.exit_code  # a worker whose collective timed out exits with this (as `timeout` does)


def run_finetune(
    cfg: TrainConfig | None,
    launch: LaunchConfig | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    callback: events.Callback | None = None,
) -> FinetuneResult:
    """`zoo finetune`: a new run (`cfg`) or a resumed one (`resume` with `overrides`), in this process or, when
    `launch` asks for more than one worker and this process is not already one of them, on torchrun's engine."""
    launch = launch or LaunchConfig()
    launch.check()
    distributed = launch.wanted and "RANK" not in os.environ  # not already a worker under torchrun
    if resume is not None:
        if distributed:
            return _launch_resume(Path(resume).expanduser(), launch, overrides or {})
        return resume_run(resume, callback=callback, **(overrides or {}))
    if cfg is None:
        raise UsageError("zoo finetune needs BACKBONE and DATA (or --resume RUN_DIR)")
    if distributed:
        return _launch_new(cfg, launch)
    return train(cfg, callback=callback)


def _launch_new(cfg: TrainConfig, launch: LaunchConfig) -> FinetuneResult:
    from zoo.catalogue.registry import get_registry
    from zoo.training.device import pick_device

    cfg.check()
    # once, here: an unknown name fails before any worker starts (and an ONNX registry entry is downloaded
    # and imported once, not by every worker)
    spec = get_registry().get(cfg.backbone)
    cfg.check_distributed(launch.world, pick_device(cfg.device).type)
    if launch.node_rank == 0:
        run_dir = new_run_dir(cfg.out, cfg.name, spec.name, cfg.policy)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="zoo-node-"))
    try:
        launch_workers(launch, {"config": dataclasses.asdict(cfg), "resume": False}, run_dir)
    finally:
        if launch.node_rank != 0:
            shutil.rmtree(run_dir, ignore_errors=True)
    if launch.nnodes > 1 and not (run_dir / "summary.json").is_file():
        # with a c10d rendezvous every node starts as node 0 and the rendezvous decides which one hosts global rank
        # 0: the one that writes the run folder. This node did not; its empty candidate folder goes.
        if launch.node_rank == 0:
            discard_if_unstarted(run_dir)
        return FinetuneResult(run_dir, 0.0, 0, 0, [], [], {"status": ELSEWHERE})
    return FinetuneResult.from_run_dir(run_dir)


ELSEWHERE = "written-on-another-node"  # the summary of a node whose workers did not include global rank 0


def _launch_resume(run_dir: Path, launch: LaunchConfig, overrides: dict[str, Any]) -> FinetuneResult:
    from zoo.model.checkpoint import last_checkpoint

    last_checkpoint(run_dir)  # before any worker starts
    launch_workers(launch, {"config": overrides, "resume": True}, run_dir)
    return FinetuneResult.from_run_dir(run_dir)


def launch_workers(launch: LaunchConfig, job: dict[str, Any], run_dir: Path) -> Path:
    """Run a fine-tuning job on `launch.nproc_per_node` local workers (of `nnodes`); returns the run folder.

    The workers run `python -m zoo.training.launch JOB.json`; a worker that fails stops the job, and the
    error names its rank. This process holds the run folder's lock for them.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    launch.check()
    lock = RunLock(run_dir).acquire() if launch.node_rank == 0 else None
    previous = os.environ.get(LOCK_HELD_ENV)
    os.environ[LOCK_HELD_ENV] = str(run_dir.resolve())
    try:
        with tempfile.TemporaryDirectory(prefix="zoo-launch-") as tmp:
            spec = Path(tmp) / "job.json"
            spec.write_text(json.dumps({**job, "run_dir": str(run_dir)}))
            args = get_args_parser().parse_args([*launch.torchrun_args(), "-m", "zoo.training.launch", str(spec)])
            log.info("torchrun %s", " ".join(launch.torchrun_args()))
            try:
                run(args)
            except ChildFailedError as exc:
                resumable = (run_dir / "last.pt").is_file()
                if lock:
                    lock.release()
                    lock = None
                if not resumable:
                    discard_if_unstarted(run_dir)  # nothing was kept: leave no empty run folder behind
                raise DistributedError(failure_message(exc, run_dir if resumable else None, launch)) from None
    finally:
        if previous is None:
            os.environ.pop(LOCK_HELD_ENV, None)
        else:
            os.environ[LOCK_HELD_ENV] = previous
        if lock:
            lock.release()
    return run_dir


def failure_message(exc, run_dir: Path | None, launch_cfg: LaunchConfig) -> str:
    """One line: which rank died, how, and how to go on."""
    rank, failure = exc.get_first_failure()
    if failure.exitcode == TIMEOUT_EXIT:
        how = "timed out waiting for another worker (--dist-timeout): a worker is stuck or unreachable"
    elif failure.exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-failure.exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-failure.exitcode}"
    else:
        how = f"exited with code {failure.exitcode}"
    detail = ""
    message = failure.message if isinstance(getattr(failure, "message", None), str) else ""
    if message and "Signal" not in message and "To enable traceback" not in message:
        detail = f" ({message.strip().splitlines()[-1][:200]})"
    others = len(exc.failures) - 1
    stopped = f"; the job stopped ({others} other worker(s) ended with it)" if others else "; the job stopped"
    where = ""
    if run_dir is not None:
        where = (
            f"; the last complete epoch is in {run_dir}/last.pt; continue with: zoo finetune --resume {run_dir} "
            f"--nproc-per-node {launch_cfg.nproc_per_node}"
        )
    return f"worker rank {rank} (pid {failure.pid}) {how}{detail}{stopped}{where}"


def find_lr(cfg: TrainConfig, callback: events.Callback | None = None) -> tuple[dict[str, Any], Path]:
    """`zoo lr-find`: the LR range test on the set-up `cfg` describes, in a run folder of its own (config.json,
    lr_find.json with the curve, lr_find.png); nothing is trained. Returns (result, run folder)."""
    if cfg.name is None:
        cfg = dataclasses.replace(cfg, name=run_name(cfg.backbone, cfg.policy, "lr-find"))
    from zoo.training import lr_find, record
    from zoo.training.setup import RunSetup

    setup = RunSetup.build(cfg, callback)
    try:
        if setup.dist.is_main:
            write_config(setup.run_dir, record.saved_config(cfg))
        result = lr_find.find_and_record(setup)
    except BaseException:
        discard_if_unstarted(setup.run_dir)
        raise
    finally:
        setup.close()
    return result, setup.run_dir


def _worker(job_file: str) -> int:
    """The torchrun entry point of `launch_workers`: one rank of the job. Rank 0 logs the run's events."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    job = json.loads(Path(job_file).read_text())
    callback = events.log_events if Dist.from_env().is_main else None
    try:
        if job["resume"]:
            resume_run(job["run_dir"], callback=callback, **job["config"])
        else:
            train(TrainConfig(**job["config"]), callback=callback, run_dir=Path(job["run_dir"]))
    except ZooError as exc:
        sys.stderr.write(f"error: rank {Dist.from_env().rank}: {exc}\n")
        return exc.exit_code
    except RuntimeError as exc:  # gloo/NCCL: a collective that waited longer than --dist-timeout
        text = str(exc)
        if "timed out" not in text.lower() and "timeout" not in text.lower():
            raise
        sys.stderr.write(f"error: rank {Dist.from_env().rank}: timed out waiting for another worker ({text[:200]})\n")
        return TIMEOUT_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
