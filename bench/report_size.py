"""How big is a run's report.html, and how long does it take to write, as the run grows? (docs/report.md)

    python bench/report_size.py            # about a minute on 2 cores

Each case is a run folder as `zoo finetune` leaves it, built without training: predictions-val.npz and
predictions-test.npz for N images and C classes (generated predictions, 85% right), summary.json with the per-class
figures they give, metrics.csv for 30 epochs, and best.pt of efficientnet_lite0 with its ImageNet weights and a
C-class head, so that the top-loss gallery has its Grad-CAM heat maps. The images are the ants/bees photos
(../shared/data/hymenoptera), cycled: the gallery shows real JPEG photos. The report is written with its defaults
(16 top-loss images per split, each a thumbnail of at most THUMB_SIDE pixels, with its heat map).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from report import publish

from zoo.core import metrics
from zoo.report import analysis
from zoo.report.images import THUMB_QUALITY, THUMB_SIDE
from zoo.report.page import write_report
from zoo.report.predictions import TOP_K, ImagePredictions

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
CASES = [(153, 2), (10_000, 100), (100_000, 10), (100_000, 1_000)]


def predictions(paths: list[Path], n: int, c: int, rng) -> ImagePredictions:
    """N images' predictions over C classes, 85% right, as the run keeps them (top-k and the true class's
    probability), built directly: a (100000, 1000) probability matrix is not needed to write them."""
    targets = rng.integers(0, c, n)
    right = rng.random(n) < 0.85
    first = np.where(right, targets, (targets + rng.integers(1, max(2, c), n)) % c)
    k = min(TOP_K, c)
    top = np.stack([first] + [(first + j) % c for j in range(1, k)], axis=1)
    probs = np.sort(rng.dirichlet(np.ones(k + 1) * 0.5, n)[:, :k], axis=1)[:, ::-1]
    target_prob = np.where(right, probs[:, 0], np.where(c > 1, probs[:, -1] * 0.5, probs[:, 0]))
    return ImagePredictions(
        paths=[str(paths[i % len(paths)]) for i in range(n)], classes=[f"class_{i:04d}" for i in range(c)],
        targets=targets.astype(np.int32), top_classes=top.astype(np.int32), top_probs=probs.astype(np.float32),
        target_prob=target_prob.astype(np.float32),
    )  # fmt: skip


def checkpoint(run: Path, classes: list[str]) -> None:
    from zoo.catalogue.policies import parse_policy
    from zoo.catalogue.registry import get_registry
    from zoo.model.build import create_model
    from zoo.model.checkpoint import write_checkpoint

    spec = get_registry().get("efficientnet_lite0")
    model = create_model(spec, num_classes=len(classes), weights="default")
    write_checkpoint(run / "best.pt", {
        "model": model.state_dict(), "backbone": spec.name, "classes": classes, "task": "single-label",
        "preprocess": spec.preprocess.to_dict(), "policy": parse_policy("feature-extract").to_dict(), "config": {},
    })  # fmt: skip


def run_folder(root: Path, n: int, c: int, paths: list[Path], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    run = root / f"run-{n}-{c}"
    run.mkdir(parents=True)
    val, test = predictions(paths, n, c, rng), predictions(paths, n, c, rng)
    val.write(run / "predictions-val.npz")
    test.write(run / "predictions-test.npz")
    per_class = {}
    for name, preds in (("val", val), ("test", test)):
        matrix = analysis.confusion(preds)
        per_class[name] = {
            "acc": metrics.accuracy(matrix),
            "balanced_acc": metrics.balanced_accuracy(matrix),
            "macro_f1": metrics.macro_f1(matrix),
            "per_class": metrics.per_class(matrix, val.classes),
        }
    v, t = per_class["val"], per_class["test"]
    counts = dict.fromkeys(val.classes, n // c)
    best = {k: v[k] for k in ("acc", "balanced_acc", "macro_f1")}
    summary = {"status": "completed", "backbone": "efficientnet_lite0", "policy": {"name": "feature-extract"},
               "classes": val.classes, "task": "single-label", "train_images": 4 * n, "val_images": n,
               "test_images": n, "train_counts": counts, "val_counts": counts, "test_counts": counts,
               "skipped_files": 0, "skipped": [], "epochs_run": 30, "select_by": "acc", "best_value": v["acc"],
               "best_val_acc": v["acc"], "best_epoch": 30, "best_val": best, "per_class": v["per_class"],
               "wall_seconds": 1000.0, "device": "cpu", "test": {"images": n, **t}}  # fmt: skip
    if c <= 100:  # summary.json keeps the test split's confusion matrix up to 100 classes (training.record.stored)
        summary["test"]["confusion_matrix"] = analysis.confusion(test)
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.json").write_text(json.dumps({"backbone": "efficientnet_lite0", "data": str(HYMENOPTERA),
                                                 "policy": "feature-extract", "epochs": 30}))  # fmt: skip
    rows = [f"{e},{1 / e:.4f},{0.5 + e / 70:.4f},{1.1 / e:.4f},{0.45 + e / 70:.4f}" for e in range(1, 31)]
    (run / "metrics.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc\n" + "\n".join(rows) + "\n")
    checkpoint(run, val.classes)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/report.md")
    args = parser.parse_args()
    paths = sorted(HYMENOPTERA.rglob("*.jpg"))[:200]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, c in CASES:
            run = run_folder(Path(tmp), n, c, paths)
            load = os.getloadavg()[0]
            start = time.perf_counter()
            written = write_report(run)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            write_report(run, out=run / "plain.html", heatmaps=False)
            plain = time.perf_counter() - start
            html = written.path.read_text()
            images = re.findall(r"data:image/(\w+);base64,([^\"']+)", html)
            rows.append(
                {
                    "images": n,
                    "classes": c,
                    "report_kb": written.bytes / 1024,
                    "embedded_images": len(images),
                    "images_kb": sum(len(b) for _, b in images) / 1024,
                    "predictions_kb": (run / "predictions-val.npz").stat().st_size / 1024,
                    "seconds": seconds,
                    "seconds_no_heatmaps": plain,
                    "load": load,
                }
            )
            print(rows[-1], flush=True)
    lines = [
        f"Measured by `python bench/report_size.py` ({time.strftime('%Y-%m-%d')}, 2 CPU cores): the report of a run "
        f"with a val and a test split of N images each, with its defaults (16 top-loss images per split, each a "
        f"JPEG thumbnail of at most {THUMB_SIDE} px at quality {THUMB_QUALITY}, beside its Grad-CAM heat map). The "
        "seconds are mostly Grad-CAM's forward pass of efficientnet_lite0 over the 32 gallery images, on a machine "
        "shared with other jobs (its 1-minute load average, for 2 cores, in the last column); the column before "
        "it is the same report written with `--no-heatmaps`.",
        "",
        "| images per split | classes | report.html | of which images | embedded images | predictions-val.npz | "
        "seconds to write | without heat maps | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [
            f"{r['images']:,}",
            f"{r['classes']:,}",
            f"{r['report_kb']:.0f} KB",
            f"{r['images_kb']:.0f} KB",
            str(r["embedded_images"]),
            f"{r['predictions_kb']:.0f} KB",
            f"{r['seconds']:.1f}",
            f"{r['seconds_no_heatmaps']:.1f}",
            f"{r['load']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    publish("report_size", {"cases": rows}, "\n".join(lines), update_doc=not args.no_doc)


if __name__ == "__main__":
    main()
