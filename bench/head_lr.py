"""The head-only learning rate: feature extraction at several AdamW LRs on three datasets, 2 seeds each.

    python bench/head_lr.py            # about 4 minutes on 2 cores (the activations are computed once per dataset)

`zoo.finetune("efficientnet_lite0", DATA, policy="feature-extract", lr=LR, seed=SEED)`, everything else at its
default (10 epochs, cosine schedule, AdamW with weight decay 0.05), on ants/bees (../shared/data/hymenoptera, val
accuracy), digits (bench/advise_validation.py's: scikit-learn's digits at 64x64, 40 train and 15 val per class,
val accuracy) and multi-label mosaics (bench/multilabel_fe.py's, val mAP). The best epoch's val figure is reported,
as zoo keeps it. This chose the head-only default of 1e-2 (it was 1e-3). Results: bench/results/head_lr.json and
docs/finetuning.md (between the markers).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from advise_validation import digits
from multilabel_fe import mosaics
from report import ROOT, publish

import zoo

LRS = (1e-3, 3e-3, 1e-2, 3e-2)
SEEDS = (0, 1)


def main() -> int:
    tmp = Path(tempfile.mkdtemp())
    data = {"ants/bees": ROOT.parent / "shared" / "data" / "hymenoptera", "digits": digits(tmp / "digits"),
            "mosaics (mAP)": mosaics(tmp / "mosaics")}  # fmt: skip
    found: dict = {}
    for name, path in data.items():
        for lr in LRS:
            for seed in SEEDS:
                r = zoo.finetune("efficientnet_lite0", path, policy="feature-extract", lr=lr, seed=seed,
                                 out=str(tmp / "runs"), report=False)  # fmt: skip
                value = r.summary["best_val"]["map"] if "mAP" in name else r.best_val_acc
                found.setdefault(name, {}).setdefault(str(lr), []).append(round(value, 4))
                print(name, lr, seed, value, file=sys.stderr, flush=True)
    record = {"date": time.strftime("%Y-%m-%d"), "seeds": list(SEEDS), "results": found}
    publish("head_lr", record, render(record))
    return 0


def render(record: dict) -> str:
    lrs = list(next(iter(record["results"].values())))
    lines = [
        f"Measured {record['date']} by `python bench/head_lr.py`: feature-extract, efficientnet_lite0, 10 epochs, "
        f"seeds {', '.join(map(str, record['seeds']))} (mean of the best epoch's val figure).",
        "",
        "| data | " + " | ".join(f"lr {lr}" for lr in lrs) + " |",
        "|---|" + "---:|" * len(lrs),
    ]
    for name, by_lr in record["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{statistics.mean(v):.4f}" for v in by_lr.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
