"""Data-parallel fine-tuning on PyTorch's own engine: torchrun (torch.distributed.run) and DDP.

Two ways in, one code path:

    zoo finetune MODEL DATA --nproc-per-node 2          # zoo launches torchrun's engine itself
    torchrun --nproc-per-node 2 -m zoo finetune MODEL DATA

Every worker runs the same `_Trainer`; `Dist` tells it its rank. Semantics:

- `--batch-size` is the global batch: each of the W workers takes batch/W images per
  step, so a run on 2 processes takes the same optimizer steps, with the same LR, as
  one process with the same --batch-size.
- The train set is sharded with `DistributedSampler` (padded so every rank takes
  the same number of steps); the frozen-prefix cache is computed per rank on its shard.
- Validation is split across ranks without padding and the counts are all-reduced,
  so every image counts exactly once and every rank sees the same accuracy.
- Rank 0 alone writes the run folder, plots and progress output.
- Collectives time out after `--dist-timeout` seconds, and torchrun's agent stops the
  whole job when a worker dies; the launcher then names the rank.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import ZooError

log = logging.getLogger(__name__)


class DistributedError(ZooError):
    """A distributed run that cannot start, or a worker that died."""


TIMEOUT_EXIT = 124  # a worker whose collective timed out exits with this (as `timeout` does)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (world 1: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        """What torchrun put in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
        try:
            return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
        except (KeyError, ValueError):
            return cls()

    def init(self, device_type: str, timeout_s: float) -> None:
        """Join the process group: NCCL on CUDA, gloo on the CPU."""
        import torch.distributed as dist

        if not self.enabled or dist.is_initialized():
            return
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        log.info("rank %d/%d joined (%s)", self.rank, self.world, backend)

    def all_sum(self, *values: float) -> list[float]:
        """Sum numbers over all ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.cpu().tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the group once every rank is done (rank 0 writes the last files while the others wait):
        a rank that tears gloo down while a peer still talks to it can abort that peer."""
        import torch.distributed as dist

        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def shard(items: list, dist: Dist) -> list:
    """This rank's share of `items`, without padding (every item on exactly one rank)."""
    return items[dist.rank :: dist.world]


def unshard(parts: list[list], total: int) -> list:
    """Undo `shard`: per-rank lists back into the original order."""
    out: list[Any] = [None] * total
    for rank, part in enumerate(parts):
        out[rank :: len(parts)] = part
    return out


@dataclass
class Launch:
    """The torchrun options of `zoo finetune`."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str = "zoo"

    @property
    def wanted(self) -> bool:
        return self.nproc_per_node > 1 or self.nnodes > 1

    def check(self) -> None:
        if self.nproc_per_node < 1:
            raise DistributedError(f"--nproc-per-node {self.nproc_per_node}: must be >= 1")
        if self.nnodes < 1:
            raise DistributedError(f"--nnodes {self.nnodes}: must be >= 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise DistributedError(f"--node-rank {self.node_rank}: must be in 0..{self.nnodes - 1}")
        if self.nnodes > 1 and not self.rdzv_endpoint and self.master_port is None:
            raise DistributedError(
                "--nnodes > 1 needs a rendezvous: --rdzv-endpoint HOST:PORT (c10d), or --master-addr HOST "
                "--master-port PORT with --node-rank on each node"
            )

    def torchrun_args(self) -> list[str]:
        # no restarts: a failure stops the job; survivors get SIGTERM, then SIGKILL 5 s later (not torchrun's 30 s)
        args = [
            f"--nproc-per-node={self.nproc_per_node}",
            f"--nnodes={self.nnodes}",
            "--max-restarts=0",
            "--shutdown-timeout=5",
        ]
        if self.rdzv_endpoint:
            args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={self.rdzv_endpoint}", f"--rdzv-id={self.rdzv_id}"]
        elif self.nnodes == 1 and self.master_port is None:
            args += ["--standalone"]  # a free port on this machine
        else:
            args += [
                f"--node-rank={self.node_rank}",
                f"--master-addr={self.master_addr}",
                f"--master-port={self.master_port}",
            ]
        return args


def launch(launch_cfg: Launch, config: dict[str, Any], run_dir: Path, resume: bool = False) -> Path:
    """Run a fine-tuning job on `launch_cfg.nproc_per_node` local workers (of `nnodes`); returns the run folder.

    `config` is a TrainConfig as a dict (with `resume`: the options that override the run's).
    The workers run `python -m zoo.distributed JOB.json`; a worker that fails stops the
    job, and the error names its rank.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    launch_cfg.check()
    with tempfile.TemporaryDirectory(prefix="zoo-launch-") as tmp:
        spec = Path(tmp) / "job.json"
        spec.write_text(json.dumps({"config": config, "resume": resume, "run_dir": str(run_dir)}))
        args = get_args_parser().parse_args([*launch_cfg.torchrun_args(), "-m", "zoo.distributed", str(spec)])
        log.info("torchrun %s", " ".join(launch_cfg.torchrun_args()))
        try:
            run(args)
        except ChildFailedError as exc:
            resumable = (run_dir / "last.pt").is_file()
            if not resumable and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()  # nothing was written: leave no empty run folder behind
            raise DistributedError(failure_message(exc, run_dir if resumable else None, launch_cfg)) from None
    return run_dir


def failure_message(exc, run_dir: Path | None, launch_cfg: Launch) -> str:
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


def _worker(job_file: str) -> int:
    """The torchrun entry point of `launch`: one rank of the job."""
    from zoo.train import TrainConfig, _Trainer, resume_run

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    job = json.loads(Path(job_file).read_text())
    try:
        if job["resume"]:
            resume_run(job["run_dir"], **job["config"])
        else:
            _Trainer(TrainConfig(**job["config"]), run_dir=Path(job["run_dir"])).run()
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
