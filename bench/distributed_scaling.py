"""Scaling from 1 to 2 worker processes on this machine's CPU (DDP over gloo), same global batch.

    python bench/distributed_scaling.py            # about 4 minutes on 2 CPU cores
    python bench/distributed_scaling.py --no-doc   # print only

Runs `zoo finetune efficientnet_lite0 ../shared/data/hymenoptera` twice per policy:
once as one process (torch uses every core), once with `--nproc-per-node 2`
(torchrun gives each worker one thread). Same global batch (16), seed and epochs.
Reports the train img/s of the last epoch (all ranks together), the wall time of
the whole command, and the final val accuracy. `finetune` trains every layer; it is
the compute-bound case. `feature-extract` is dominated by the one-off prefix cache,
which each rank computes on its own shard. Results go to
bench/results/distributed_scaling.json and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"


def run(policy: str, nproc: int, epochs: int, out: Path, workers: int | None = None) -> dict:
    name = f"{policy[:6]}-{nproc}-{workers}"
    cmd = [sys.executable, "-m", "zoo", "finetune", "efficientnet_lite0", str(DATA), "--policy", policy,
           "--epochs", str(epochs), "--batch-size", "16", "--seed", "0", "--out", str(out), "--name", name,
           "--nproc-per-node", str(nproc), "--quiet"]  # fmt: skip
    if workers is not None:
        cmd += ["--workers", str(workers)]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(result.stderr[-2000:])
    summary = json.loads((out / name / "summary.json").read_text())
    import csv

    rows = list(csv.DictReader((out / name / "metrics.csv").open()))
    return {
        "policy": policy,
        "processes": nproc,
        "loader_workers": "default" if workers is None else workers,
        "epochs": epochs,
        "train_img_s_last_epoch": float(rows[-1]["train_img_s"]),
        "wall_s": round(wall, 1),
        "final_val_acc": summary["final_val_acc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    from report import publish

    out = Path(tempfile.mkdtemp(prefix="zoo-dist-bench-"))
    rows = []
    # defaults: one process decodes in 1 DataLoader worker process; distributed CPU ranks decode in-process
    for policy, epochs, configs in (
        ("finetune", 2, ((1, None), (1, 0), (2, None))),
        ("feature-extract", 5, ((1, None), (2, None))),
    ):
        for nproc, workers in configs:
            rows.append(run(policy, nproc, epochs, out, workers))
            print(rows[-1], flush=True)
    record = {"cpu_count": os.cpu_count(), "data": str(DATA), "rows": rows}
    publish("distributed_scaling", record, render(rows), update_doc=not args.no_doc)


def render(rows: list[dict]) -> str:
    lines = [
        "| policy | processes | loader workers | train img/s (last epoch) | speed-up | wall s (whole command) "
        "| wall ratio | val acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {r["policy"]: r for r in rows if r["processes"] == 1 and r["loader_workers"] == "default"}
    for r in rows:
        b = base[r["policy"]]
        lines.append(
            f"| {r['policy']} ({r['epochs']} epochs) | {r['processes']} | {r['loader_workers']} | "
            f"{r['train_img_s_last_epoch']:.1f} | "
            f"{r['train_img_s_last_epoch'] / b['train_img_s_last_epoch']:.2f}x | {r['wall_s']:.1f} | "
            f"{b['wall_s'] / r['wall_s']:.2f}x | {r['final_val_acc']:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
