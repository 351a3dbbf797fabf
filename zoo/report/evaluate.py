"""`zoo report RUN DATA`: the run's best checkpoint evaluated on DATA, image by image, for the report.

DATA is chosen as `zoo evaluate` chooses it: the run's own data gives its held-out part (test, else val, as the
run split it); other data gives its test part, else its val part, else all of it, labelled with the run's classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.core.errors import DataError
from zoo.report.predictions import ImagePredictions

BATCH = 32


@dataclass(frozen=True)
class Evaluation:
    where: str  # what was evaluated, in words
    report: dict[str, Any]  # zoo.core.metrics' report of the predictions (acc, per_class, confusion_matrix, ...)
    predictions: ImagePredictions
    skipped: list[tuple[str, str]]  # (file, reason)


def _samples(ckpt: dict[str, Any], data: str | Path, labels: str | Path | None):
    from zoo.data.eval_data import eval_samples
    from zoo.data.images import decode_size
    from zoo.data.split import load_for_run, manifest_options
    from zoo.model.checkpoint import preprocess_of

    cfg, classes = ckpt["config"], list(ckpt["classes"])
    multi = ckpt.get("task") == "multi-label"

    def same(a, b) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()

    if same(data, cfg.get("data")) and same(labels, cfg.get("labels")):
        split = load_for_run(cfg, decode_size(preprocess_of(ckpt)))
        which = "test" if split.test else "val"
        return split.samples(which), f"the run's {which} split of {data} (held out from training)", split.skipped
    chosen = eval_samples(data, classes, labels=labels, options=manifest_options(cfg), multi_label=multi)
    return chosen.samples, chosen.where, chosen.skipped


def evaluate_on(run: str | Path, data: str | Path, labels: str | Path | None = None) -> Evaluation:
    """Every image's probabilities on DATA from the run's best checkpoint, and the figures they give."""
    import numpy as np
    import torch

    from zoo.core import metrics
    from zoo.data.images import load_for_eval
    from zoo.model.build import split_outputs
    from zoo.model.checkpoint import load_model, preprocess_of
    from zoo.runtime.predictions import probabilities

    model, ckpt = load_model(run)
    classes, multi = list(ckpt["classes"]), ckpt.get("task") == "multi-label"
    samples, where, skipped = _samples(ckpt, data, labels)
    skipped = [(str(p), why) for p, why in skipped]
    pre = preprocess_of(ckpt)
    kept, probs = [], []
    for start in range(0, len(samples), BATCH):
        arrays = []
        for sample in samples[start : start + BATCH]:
            try:
                arrays.append(load_for_eval(sample.path, pre))
                kept.append(sample)
            except Exception as exc:  # a broken file is skipped and listed, as in training and zoo evaluate
                skipped.append((str(sample.path), type(exc).__name__))
        if arrays:
            with torch.no_grad():
                logits = split_outputs(model(torch.from_numpy(np.stack(arrays))))[0].float().numpy()
            probs.append(probabilities(logits, multi))
    if not kept:
        raise DataError(f"{where}: none of the images could be read")
    scores = np.concatenate(probs)
    targets = metrics.targets_array([s.label for s in kept], len(classes), multi)
    thresholds = ckpt.get("thresholds") if multi else None
    if multi:
        report = metrics.multi_label_report(targets, scores, thresholds or [0.5] * len(classes), classes)
    else:
        report = metrics.single_label_report(targets, scores, classes)
    preds = ImagePredictions.from_probabilities([s.path for s in kept], targets, scores, classes, thresholds, multi)
    return Evaluation(where, report, preds, skipped)
