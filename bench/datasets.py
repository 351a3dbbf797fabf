"""Real-world data shapes, measured: an imbalanced set and a multi-label set, built from scikit-learn's digits.

    python bench/datasets.py                  # both parts (about 25 min on 2 cores)
    python bench/datasets.py imbalance        # --balance none/loss/sampler/auto on an imbalanced set
    python bench/datasets.py multilabel       # feature-extract and finetune on digit mosaics
    python bench/datasets.py --quick          # a smoke run: fewer images, epochs and seeds

No download: scikit-learn ships the 1,797 8x8 digits (pip install -e '.[test]'). Every image
becomes a PNG on disk and every dataset a CSV manifest (`zoo finetune MODEL labels.csv`), so
the runs go through exactly what a user's data goes through. The model is efficientnet_lite0
with the ImageNet weights from PyPI.

- imbalance: 10 classes, train and val with 120 down to 3 images per class (a 40x skew, halving
  every ~2 classes, as long-tailed data is), a balanced test split of 30 per class. Feature
  extraction, 15 epochs, 3 seeds; balanced accuracy and macro-F1 on the test split (evaluated
  once after training, never used to pick the checkpoint), for each `--balance`.
- multilabel: 2x2 mosaics of digits, each cell a random digit or empty, labelled with the set of
  digits it shows (1 to 4 labels); 600 train, 150 val, 300 test. Feature extraction (15 epochs) and
  fine-tuning (4 epochs); mAP, macro-F1 and micro-F1 on the test split at the thresholds tuned on val.

Results: bench/results/datasets_*.json and docs/benchmarks.md (between the markers).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from report import publish

import zoo

MODEL = "efficientnet_lite0"


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).astype(np.uint8), d.target


def save(pixels: np.ndarray, path: Path, size: int = 64) -> None:
    """A grey digit (or mosaic) as an RGB PNG, scaled up so the network sees strokes, not 8 pixels."""
    img = Image.fromarray(255 - pixels).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    img.save(path)


def imbalanced_set(root: Path, seed: int, quick: bool) -> Path:
    images, labels = digits()
    rng = np.random.default_rng(seed)
    head, ratio, test_per_class = (60, 20, 10) if quick else (120, 40, 30)
    counts = [max(2, round(head * ratio ** (-k / 9))) for k in range(10)]  # 120 ... 3
    (root / "img").mkdir(parents=True)
    rows = ["path,label,split"]
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        test, rest = idx[:test_per_class], idx[test_per_class:]
        n_val = max(1, round(counts[digit] * 0.25))
        parts = {"test": test, "train": rest[: counts[digit]], "val": rest[counts[digit] : counts[digit] + n_val]}
        for split, chosen in parts.items():
            for i in chosen:
                save(images[i], root / "img" / f"{i}.png")
                rows.append(f"img/{i}.png,digit{digit},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def mosaic_set(root: Path, seed: int, quick: bool) -> Path:
    images, labels = digits()
    rng = np.random.default_rng(seed)
    sizes = {"train": 200, "val": 60, "test": 100} if quick else {"train": 600, "val": 150, "test": 300}
    (root / "img").mkdir(parents=True)
    rows = ["path,labels,split"]
    k = 0
    for split, n in sizes.items():
        for _ in range(n):
            canvas = np.zeros((16, 16), np.uint8)
            shown = set()
            cells = rng.permutation(4)[: rng.integers(1, 5)]  # 1 to 4 cells hold a digit
            for cell in cells:
                i = rng.integers(len(images))
                y, x = divmod(int(cell), 2)
                canvas[8 * y : 8 * y + 8, 8 * x : 8 * x + 8] = images[i]
                shown.add(f"d{labels[i]}")
            save(canvas, root / "img" / f"{k}.png", 96)
            rows.append(f"img/{k}.png,{' '.join(sorted(shown))},{split}")
            k += 1
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def run(csv: Path, out: Path, name: str, **options) -> dict:
    start = time.perf_counter()
    result = zoo.finetune(MODEL, csv, out=str(out), name=name, workers=0, **options)
    s = result.summary
    return {
        "balance": s["balance"]["mode"],
        "balance_reason": s["balance"]["reason"],
        "select_by": s["select_by"],
        "best_epoch": result.best_epoch,
        "val": s["best_val"],
        "test": {k: v for k, v in s["test"].items() if k in ("acc", "balanced_acc", "macro_f1", "micro_f1", "map")},
        "test_recall": {r["class"]: r["recall"] for r in s["test"]["per_class"]},
        "seconds": round(time.perf_counter() - start, 1),
    }


def imbalance(quick: bool) -> dict:
    seeds = [0] if quick else [0, 1, 2]
    epochs = 5 if quick else 15
    record: dict = {"model": MODEL, "epochs": epochs, "seeds": seeds, "runs": {}}
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            csv = imbalanced_set(Path(tmp) / "data", seed, quick)
            lines = csv.read_text().splitlines()[1:]
            record["train_counts"] = [sum(1 for r in lines if r.endswith(f"digit{d},train")) for d in range(10)]
            for balance in ("none", "loss", "sampler", "auto"):
                row = run(csv, Path(tmp) / "runs", f"{balance}-{seed}", policy="feature-extract", epochs=epochs,
                          balance=balance, seed=seed)  # fmt: skip
                record["runs"].setdefault(balance, []).append(row)
                print(f"seed {seed} --balance {balance}: test balanced acc {row['test']['balanced_acc']:.4f}",
                      file=sys.stderr, flush=True)  # fmt: skip
    return record


def multilabel(quick: bool) -> dict:
    record: dict = {"model": MODEL, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        csv = mosaic_set(Path(tmp) / "data", 0, quick)
        for policy, epochs in (("feature-extract", 5 if quick else 15), ("finetune", 2 if quick else 4)):
            row = run(csv, Path(tmp) / "runs", policy, policy=policy, epochs=epochs)
            row["epochs"] = epochs
            record["runs"][policy] = row
            print(f"{policy}: test mAP {row['test']['map']:.4f}", file=sys.stderr, flush=True)
    return record


def _mean(values: list[float]) -> str:
    a = np.asarray(values)
    return f"{a.mean():.3f}" + (f" ± {a.std(ddof=1):.3f}" if len(a) > 1 else "")


def imbalance_table(record: dict) -> str:
    runs = record["runs"]
    counts = record["train_counts"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/datasets.py imbalance`: {MODEL} (ImageNet weights), "
        f"feature extraction, {record['epochs']} epochs, seeds {record['seeds']} (mean ± std). Train images per "
        f"class: {', '.join(map(str, counts))} ({max(counts) / min(counts):.0f}x skew); test: balanced, evaluated "
        "once after training. The best epoch is picked by val balanced accuracy in every run.",
        "",
        "| --balance | test balanced acc | test macro-F1 | test acc | recall of the 3 rarest classes |",
        "|---|---:|---:|---:|---:|",
    ]
    rare = [f"digit{d}" for d in (7, 8, 9)]
    for balance, rows in runs.items():
        chosen = rows[0]["balance"]
        label = f"{balance} (picked {chosen})" if balance == "auto" else balance
        lines.append(
            f"| {label} | {_mean([r['test']['balanced_acc'] for r in rows])} | "
            f"{_mean([r['test']['macro_f1'] for r in rows])} | {_mean([r['test']['acc'] for r in rows])} | "
            f"{_mean([np.mean([r['test_recall'][c] for c in rare]) for r in rows])} |"
        )
    gain = [a["test"]["balanced_acc"] - n["test"]["balanced_acc"] for a, n in zip(runs["auto"], runs["none"],
                                                                                   strict=True)]  # fmt: skip
    lines += ["", f"`--balance auto` against `none`: {100 * np.mean(gain):+.1f} points of test balanced accuracy "
                  f"(per seed: {', '.join(f'{100 * g:+.1f}' for g in gain)})."]  # fmt: skip
    return "\n".join(lines)


def multilabel_table(record: dict) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/datasets.py multilabel`: {MODEL} (ImageNet weights) "
        "on 2x2 digit mosaics (10 labels, 1 to 4 per image); test split at the thresholds tuned on val.",
        "",
        "| policy | epochs | test mAP | test macro-F1 | test micro-F1 | exact label sets | wall time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for policy, r in record["runs"].items():
        t = r["test"]
        lines.append(
            f"| {policy} | {r['epochs']} | {t['map']:.3f} | {t['macro_f1']:.3f} | {t['micro_f1']:.3f} | "
            f"{t['acc']:.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=[], help="imbalance, multilabel (default: both)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (results are printed, not kept)")
    args = parser.parse_args(argv)
    parts = args.parts or ["imbalance", "multilabel"]
    unknown = set(parts) - {"imbalance", "multilabel"}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    for part, measure, table in (("imbalance", imbalance, imbalance_table), ("multilabel", multilabel,
                                                                              multilabel_table)):  # fmt: skip
        if part in parts:
            record = measure(args.quick)
            if args.quick:
                print(table(record))
            else:
                publish(f"datasets_{part}", record, table(record))
    print(json.dumps({"done": parts}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
