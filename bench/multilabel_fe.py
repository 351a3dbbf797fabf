"""Multi-label feature extraction against a converged linear probe on the same features, in one run.

    python bench/multilabel_fe.py              # 3 seeds (about 5 minutes on 2 cores)
    python bench/multilabel_fe.py --seeds 1

Data (built here, no download): 64x64 mosaics of 1 to 3 of scikit-learn's 8x8 handwritten digits (upscaled to 20
to 28 pixels, at random places on black), labelled with the digits they show: 10 labels, 600 train and 200 val,
as a CSV manifest with a split column. Per seed:

- `zoo finetune efficientnet_lite0 DATA.csv --policy feature-extract` with every other option at its default, and
  the same with `--lr 1e-3` (the head-only default before it became 1e-2);
- the same backbone's pooled features (zoo's own extraction: resize 256, centre crop 224, no augmentation), and
  scikit-learn's one-vs-rest logistic regression on them (standardised, C=1, lbfgs to convergence): the probe.

Both report val mAP with zoo's metric (zoo.core.metrics.mean_average_precision). Results: bench/results/
multilabel_fe.json and docs/data.md (between the markers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from report import publish

MODEL = "efficientnet_lite0"


def mosaics(root: Path, train: int = 600, val: int = 200, seed: int = 0) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = ["path,labels,split"]
    for i in range(train + val):
        canvas = Image.new("L", (64, 64))
        labels = set()
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(len(d.images)))
            size = int(rng.integers(20, 29))
            digit = Image.fromarray((d.images[k] * (255 / 16)).astype(np.uint8), "L").resize((size, size))
            canvas.paste(digit, (int(rng.integers(0, 64 - size)), int(rng.integers(0, 64 - size))))
            labels.add(str(d.target[k]))
        name = f"img/{i}.png"
        canvas.save(root / name)
        rows.append(f"{name},{' '.join(sorted(labels))},{'train' if i < train else 'val'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def probe(manifest: Path) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    import zoo
    from zoo.core.metrics import mean_average_precision
    from zoo.data.split import load
    from zoo.model.build import choose_weights
    from zoo.select.features import extract
    from zoo.training.tasks import MultiHot

    spec = zoo.get_backbone(MODEL)
    split = load(manifest)
    choice = choose_weights(spec, "default")
    start = time.perf_counter()
    hot = MultiHot(len(split.classes))
    feats = {w: extract(spec, choice, None, split.samples(w), {}, target_fn=hot).features for w in ("train", "val")}
    targets = {}
    for w in ("train", "val"):
        t = np.zeros((len(split.samples(w)), len(split.classes)), np.float32)
        for row, s in enumerate(split.samples(w)):
            t[row, list(s.label)] = 1
        targets[w] = t
    scaler = StandardScaler().fit(feats["train"])
    model = OneVsRestClassifier(LogisticRegression(C=1.0, max_iter=5000)).fit(
        scaler.transform(feats["train"]), targets["train"]
    )
    scores = model.predict_proba(scaler.transform(feats["val"]))
    m, _ = mean_average_precision(targets["val"], scores)
    return {"val_map": m, "seconds": time.perf_counter() - start}


def zoo_run(manifest: Path, out: Path, seed: int, **options) -> dict:
    import zoo

    start = time.perf_counter()
    result = zoo.finetune(MODEL, manifest, policy="feature-extract", seed=seed, out=str(out), report=False, **options)
    return {"val_map": result.summary["best_val"]["map"], "epochs": result.epochs_run,
            "best_epoch": result.best_epoch, "seconds": time.perf_counter() - start}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            manifest = mosaics(Path(tmp) / f"data{seed}", seed=seed)
            row = {
                "seed": seed,
                "zoo": zoo_run(manifest, Path(tmp) / "runs", seed),
                "zoo_lr_1e-3": zoo_run(manifest, Path(tmp) / "runs", seed, lr=1e-3),
                "probe": probe(manifest),
            }
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    record = {"date": time.strftime("%Y-%m-%d"), "rows": rows}
    publish("multilabel_fe", record, render(record), update_doc=not args.no_doc)
    return 0


def render(record: dict) -> str:
    lines = [
        f"Measured {record['date']} by `python bench/multilabel_fe.py`: 64x64 mosaics of 1-3 digits, 10 labels, "
        f"600 train / 200 val, {MODEL} (ImageNet weights), val mAP.",
        "",
        "| seed | zoo feature-extract (defaults: head LR 1e-2) | best epoch | the same, `--lr 1e-3` | linear probe "
        "(sklearn, converged) | defaults minus the probe (points) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        z, old, p = r["zoo"], r["zoo_lr_1e-3"], r["probe"]
        gap = 100 * (z["val_map"] - p["val_map"])
        lines.append(f"| {r['seed']} | {z['val_map']:.4f} | {z['best_epoch']} of {z['epochs']} | "
                     f"{old['val_map']:.4f} | {p['val_map']:.4f} | {gap:+.2f} |")  # fmt: skip
    gap = statistics.mean(r["zoo"]["val_map"] - r["probe"]["val_map"] for r in record["rows"])
    old = statistics.mean(r["zoo_lr_1e-3"]["val_map"] - r["probe"]["val_map"] for r in record["rows"])
    lines += ["", f"Mean gap to the probe: {100 * gap:+.2f} points of val mAP with the defaults, {100 * old:+.2f} "
              "with the old head LR of 1e-3."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
