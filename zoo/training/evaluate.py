"""`zoo evaluate` and `zoo predict` with a fine-tuned torch checkpoint (single-label or multi-label)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.core.errors import DataError, UsageError
from zoo.data.eval_data import EvalSet, eval_samples
from zoo.data.images import decode_size, load_for_eval, tta_views
from zoo.data.split import load_for_run, manifest_options
from zoo.model.build import split_outputs
from zoo.model.checkpoint import load_model, preprocess_of
from zoo.runtime import DEFAULT_TOP_K
from zoo.runtime.predictions import check_top_k, probabilities, read_images, results
from zoo.training.tasks import Task


def _logits(model, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return split_outputs(model(batch))[0].float()


def task_of(ckpt: dict[str, Any]) -> Task:
    return Task(ckpt.get("task") == "multi-label", len(ckpt["classes"]))


def _same(a: str | Path | None, b: str | Path | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def eval_set(
    ckpt: dict[str, Any], data: str | Path | None, labels: str | Path | None, split: str, columns: dict | None = None
) -> EvalSet:
    """What to evaluate on. The run's own data (also when `data` is None): its held-out part as the run split it
    (test, else val).
    Other data: its test part, else its val part, else all of it (or the `split` named). A manifest is read
    with the run's manifest options, changed by `columns` (path_column, label_column, split_column, label_sep)."""
    cfg = {**ckpt["config"], **(columns or {})}
    if data is None:
        data, labels = cfg["data"], labels if labels is not None else cfg.get("labels")
    classes, multi = list(ckpt["classes"]), ckpt.get("task") == "multi-label"
    if _same(data, cfg["data"]) and _same(labels, cfg.get("labels")):
        run_split = load_for_run(cfg, decode_size(preprocess_of(ckpt)))
        if run_split.classes != classes:
            raise DataError(f"{data}: the data's classes {run_split.classes} are not the run's {classes} any more")
        which = ("test" if run_split.test else "val") if split == "auto" else split
        if which == "all":
            samples = run_split.train + run_split.val + run_split.test
        elif which in ("train", "val", "test"):
            samples = run_split.samples(which)
            if not samples:
                raise DataError(f"--split {which}: the run's data has no {which} split")
        else:
            raise UsageError(f"--split {split}: choose one of auto, train, val, test, all")
        held_out = " (held out from training)" if which in ("val", "test") else ""
        return EvalSet(samples, f"the run's {which} split of {data}{held_out}", list(run_split.skipped))
    return eval_samples(data, classes, labels=labels, options=manifest_options(cfg), multi_label=multi, split=split)


def evaluate(
    run: str | Path,
    data: str | Path | None = None,
    batch_size: int = 32,
    *,
    labels: str | Path | None = None,
    split: str = "auto",
    columns: dict | None = None,
    tta: bool = False,
) -> dict[str, Any]:
    """A checkpoint's metrics on DATA (default: the run's own data, its held-out split): accuracy, balanced
    accuracy, macro-F1, mAP, per class; the confusion matrix (single-label) or the figures at the run's
    thresholds (multi-label). `tta`: also the figures with test-time augmentation (`images.tta_views`: ten
    views per image, their probabilities averaged), under "tta", beside the plain ones."""
    model, ckpt = load_model(run)
    classes = list(ckpt["classes"])
    task = task_of(ckpt)
    chosen = eval_set(ckpt, data, labels, split, columns)
    pre = preprocess_of(ckpt)
    probs: list[np.ndarray] = []
    tta_probs: list[np.ndarray] = []
    kept: list[Any] = []
    skipped = [f"{p} ({why})" for p, why in chosen.skipped]
    batch: list[np.ndarray] = []
    views: list[np.ndarray] = []
    pending: list[Any] = []

    def flush() -> None:
        if batch:
            logits = _logits(model, torch.from_numpy(np.stack(batch))).numpy()
            probs.append(probabilities(logits, task.multi_label))
            if tta:
                stacked = np.concatenate(views)  # (images x 10, C, H, W)
                p = probabilities(_logits(model, torch.from_numpy(stacked)).numpy(), task.multi_label)
                tta_probs.append(p.reshape(len(batch), -1, p.shape[1]).mean(axis=1))
            kept.extend(pending)
            batch.clear()
            views.clear()
            pending.clear()

    for sample in chosen.samples:
        try:
            array = load_for_eval(sample.path, pre)
            view = tta_views(sample.path, pre) if tta else None
        except Exception as exc:
            skipped.append(f"{sample.path} ({type(exc).__name__})")
            continue
        batch.append(array)
        if view is not None:
            views.append(view)
        pending.append(sample)
        if len(batch) == (max(1, batch_size // 10) if tta else batch_size):
            flush()
    flush()
    if not kept:
        raise DataError(f"{chosen.where}: none of the images could be read")
    report = task.report(task.labels_array(kept), np.concatenate(probs), classes, ckpt.get("thresholds"))
    out = {
        "checkpoint": str(run),
        "data": str(data if data is not None else ckpt["config"]["data"]),
        "evaluated_on": chosen.where,
        "task": task.name,
        "images": len(kept),
        "accuracy": report["acc"],
        "balanced_accuracy": report["balanced_acc"],
        "macro_f1": report["macro_f1"],
        "map": report["map"],
        "per_class": report["per_class"],
        "classes": classes,
        "skipped": skipped,
    }
    if task.multi_label:
        out["micro_f1"] = report["micro_f1"]
        out["thresholds"] = report["thresholds"]
    else:
        out["confusion_matrix"] = report["confusion_matrix"]
    if tta:
        t = task.report(task.labels_array(kept), np.concatenate(tta_probs), classes, ckpt.get("thresholds"))
        out["tta"] = {
            "views": "ten crops: the four corners and the centre of the eval resize, each also flipped",
            "accuracy": t["acc"],
            "balanced_accuracy": t["balanced_acc"],
            "macro_f1": t["macro_f1"],
            "map": t["map"],
            **({"micro_f1": t["micro_f1"]} if task.multi_label else {}),
        }
    return out


def predict(run: str | Path, images: list[str | Path], top_k: int = DEFAULT_TOP_K) -> list[dict[str, Any]]:
    """Top-k labels and probabilities for each image (multi-label: also the labels over their thresholds),
    with the same preprocessing as `zoo.runtime.predictor`."""
    check_top_k(top_k)
    model, ckpt = load_model(run)
    pre = preprocess_of(ckpt)
    task = task_of(ckpt)
    arrays = read_images(images, lambda path: load_for_eval(path, pre))
    logits = _logits(model, torch.from_numpy(np.stack(arrays))).numpy()
    thresholds = ckpt.get("thresholds") if task.multi_label else None
    return results(images, probabilities(logits, task.multi_label), list(ckpt["classes"]), top_k, thresholds)
