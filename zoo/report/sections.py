"""The sections of a run's report, each a function over what the run folder holds (`RunFolder`), returning plain
data for the page's template: the overview, the config, the data, the curves, one split's figures, the exports.
Nothing here escapes text: the template does, for every value."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from zoo.core.metrics import METRICS
from zoo.report import analysis, charts
from zoo.report.folder import RunFolder
from zoo.report.images import file_thumbnail
from zoo.report.predictions import ImagePredictions

log = logging.getLogger(__name__)

TABLE_CLASSES = 40  # up to this many classes the confusion matrix is a table; beyond, an image
METRIC_NAMES = {"acc": "accuracy", "balanced_acc": "balanced accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1",
                "map": "mAP"}  # fmt: skip


def overview(run: RunFolder) -> dict[str, Any]:
    status, why = run.status()
    metric, value, epoch = run.best()
    s = run.summary
    return {
        "name": run.name,
        "path": str(run.path.resolve()),
        "backbone": run.backbone,
        "policy": run.policy,
        "weights": s.get("weights") or run.config.get("weights"),
        "task": s.get("task", "single-label"),
        "status": status,
        "why": why,
        "best": f"val {METRIC_NAMES.get(metric, metric)} {value:.4f} at epoch {epoch}" if value is not None else None,
        "epochs": f"{s.get('epochs_run', len(run.history))} of {run.config.get('epochs', '?')}",
        "wall": f"{run.wall_seconds():.1f} s" if run.wall_seconds() is not None else None,
        "device": s.get("device"),
    }


def config_rows(run: RunFolder) -> list[tuple[str, str]]:
    """config.json as (option, value) rows, with the values a run fills in itself from summary.json."""
    rows = [(k, _text(v)) for k, v in run.config.items() if k != "ranking"]
    for key in ("augment", "train_size", "input_size", "batch_size", "amp", "cache"):
        if key in run.summary:
            rows.append((f"{key} (as run)", _text(run.summary[key])))
    return rows


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, list | tuple):
        return " x ".join(map(str, value)) if all(isinstance(v, int) for v in value) else ", ".join(map(str, value))
    return "" if value is None else str(value)


def data_summary(run: RunFolder) -> dict[str, Any]:
    s = run.summary
    counts = [
        {"class": c, "train": (s.get("train_counts") or {}).get(c), "val": (s.get("val_counts") or {}).get(c),
         "test": (s.get("test_counts") or {}).get(c)}
        for c in run.classes
    ]  # fmt: skip
    skipped = [_skipped(line) for line in s.get("skipped") or []]
    return {
        "data": run.config.get("data"),
        "labels": run.config.get("labels"),
        "images": {k: s.get(f"{k}_images") for k in ("train", "val", "test")},
        "classes": len(run.classes),
        "counts": counts,
        "has_test": bool(s.get("test_images")),
        "balance": (s.get("balance") or {}).get("reason"),
        "manifest": s.get("manifest"),
        "skipped": skipped,
        "skipped_total": s.get("skipped_files", len(skipped)),
    }


def _skipped(line: str) -> tuple[str, str]:
    """summary.json keeps 'path (reason)': split back into the file and its reason."""
    path, sep, reason = line.partition(" (")
    return (path, reason[:-1]) if sep and reason.endswith(")") else (line, "")


def curves(history: list[dict[str, Any]], select_by: str) -> list:
    if not history:
        return []
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(history)]

    def column(key: str) -> list[float | None]:
        return [r.get(key) if isinstance(r.get(key), int | float) else None for r in history]

    loss = [charts.Series("train loss", epochs, column("train_loss"), charts.COLOURS[0]),
            charts.Series("val loss", epochs, column("val_loss"), charts.COLOURS[1])]  # fmt: skip
    metric = [charts.Series("train accuracy", epochs, column("train_acc"), charts.COLOURS[0], dashed=True),
              charts.Series("val accuracy", epochs, column("val_acc"), charts.COLOURS[1])]  # fmt: skip
    for i, key in enumerate(m for m in METRICS if m != "acc" and f"val_{m}" in history[0]):
        name = f"val {METRIC_NAMES.get(key, key)}" + (" (selects)" if key == select_by else "")
        metric.append(charts.Series(name, epochs, column(f"val_{key}"), charts.COLOURS[2 + i]))
    out = [charts.line_chart("loss", loss), charts.line_chart("val metrics", metric, y_range=(0, 1))]
    if any(v is not None for v in column("lr")):
        out.append(charts.line_chart("learning rate", [charts.Series("lr", epochs, column("lr"), charts.COLOURS[4])]))
    return out


@dataclass(frozen=True)
class SplitFigures:
    """One split's figures: what summary.json (or an evaluation) measured, and the per-image predictions."""

    key: str  # val, test or data: the section's id
    title: str
    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    confusion: list[list[int]] | None
    predictions: ImagePredictions | None


def split_figures(run: RunFolder) -> list[SplitFigures]:
    """The best epoch's val figures and, when the run had one, the test split's."""
    s, out = run.summary, []
    val = run.predictions("val")
    if s.get("per_class") or val is not None:
        title = f"validation split, best epoch ({s.get('best_epoch', '?')})"
        metrics = s.get("best_val") or {}
        confusion = analysis.confusion(val) if val is not None and not val.multi_label else None
        out.append(SplitFigures("val", title, metrics, s.get("per_class") or [], confusion, val))
    test = s.get("test")
    if test:
        preds = run.predictions("test")
        confusion = test.get("confusion_matrix")
        if confusion is None and preds is not None and not preds.multi_label:
            confusion = analysis.confusion(preds)
        title = f"test split ({test.get('images', '?')} images, evaluated once with the best epoch's weights)"
        metrics = {k: test[k] for k in METRICS if k in test}
        out.append(SplitFigures("test", title, metrics, test.get("per_class") or [], confusion, preds))
    return out


def figures_context(fig: SplitFigures, gallery: int, explainer=None) -> dict[str, Any]:
    """What the template shows of one split."""
    classes = [r["class"] for r in fig.per_class] or (fig.predictions.classes if fig.predictions else [])
    ctx: dict[str, Any] = {
        "key": fig.key,
        "title": fig.title,
        "metrics": [(METRIC_NAMES.get(k, k), v) for k, v in fig.metrics.items() if v is not None],
        "per_class": fig.per_class,
        "multi_label": any("threshold" in r for r in fig.per_class) or bool(fig.predictions and
                                                                            fig.predictions.multi_label),
        "confusion": None,
        "pairs": [],
        "gallery": [],
        "calibration": None,
        "has_predictions": fig.predictions is not None,
    }  # fmt: skip
    if fig.confusion is not None and classes:
        ctx["pairs"] = analysis.most_confused(fig.confusion, classes)
        norm = analysis.normalised(fig.confusion)
        if len(classes) <= TABLE_CLASSES:
            ctx["confusion"] = {"classes": classes, "rows": [list(zip(c, n, strict=True)) for c, n in
                                                             zip(fig.confusion, norm, strict=True)]}  # fmt: skip
        else:
            from zoo.report.images import matrix_image

            ctx["confusion"] = {"classes": classes, "image": matrix_image(norm, 1 if len(classes) > 300 else 2)}
    if fig.predictions is not None and len(fig.predictions):
        ctx["calibration"] = _calibration(fig.predictions)
        ctx["gallery"] = gallery_cards(fig.predictions, gallery, explainer)
    return ctx


def _calibration(preds: ImagePredictions) -> dict[str, Any]:
    rel = analysis.reliability(preds)
    return {"chart": charts.reliability_chart(rel.bins, rel.ece, rel.what), "ece": rel.ece, "pairs": rel.pairs,
            "bins": rel.bins}  # fmt: skip


def gallery_cards(preds: ImagePredictions, count: int, explainer=None) -> list[dict[str, Any]]:
    """The `count` images with the highest loss: a thumbnail, the labels and probabilities, and (with an
    `explainer`) the Grad-CAM heat map of the predicted class."""
    from pathlib import Path

    order = analysis.top_losses(preds, count)
    losses = preds.losses()
    predicted = preds.predicted()
    cams = _heat_maps([preds.paths[i] for i in order], explainer)
    cards = []
    for i in order:
        if preds.multi_label:
            truth = [preds.classes[c] for c in range(len(preds.classes)) if preds.targets[i, c]]
            said = [f"{preds.classes[c]} {preds.probs[i, c]:.3f}" for c in range(len(preds.classes)) if predicted[i, c]]
            true_text, predicted_text = ", ".join(truth) or "none", ", ".join(said) or "none"
            probability = None
        else:
            true_text = preds.classes[preds.targets[i]]
            predicted_text = preds.classes[preds.top_classes[i, 0]]
            probability = float(preds.top_probs[i, 0])
        cards.append({
            "path": preds.paths[i], "name": Path(preds.paths[i]).name, "thumb": file_thumbnail(preds.paths[i]),
            "cam": cams.get(preds.paths[i]), "true": true_text, "predicted": predicted_text,
            "probability": probability, "true_probability": None if preds.multi_label else float(preds.target_prob[i]),
            "loss": float(losses[i]), "right": true_text == predicted_text if not preds.multi_label else
            bool((predicted[i] == preds.targets[i]).all()),
        })  # fmt: skip
    return cards


def _heat_maps(paths: list[str], explainer) -> dict[str, str]:
    """Grad-CAM thumbnails by path, for the files that can still be read; {} without an explainer."""
    if explainer is None or not paths:
        return {}
    from zoo.report.images import data_uri, model_view, thumbnail

    readable, views = [], []
    for p in paths:
        try:
            views.append(model_view(p, explainer.pre))
            readable.append(p)
        except Exception:  # moved or deleted since the run: its card says so without a heat map
            continue
    if not readable:
        return {}
    found = explainer(readable, views)
    return {e.path: data_uri(thumbnail(e.picture(min_side=0))) for e in found}  # at most the thumbnail's size


# a check of an export report (zoo.core.check.CheckResult), with what a report of an older version may lack
_CHECK = {"batch": "", "output": "", "torch_shape": [], "onnx_shape": [], "max_abs_diff": float("nan"),
          "atol": float("nan"), "top1_agreement": None, "failures": [], "agreement": "top-1"}  # fmt: skip


def exports(run: RunFolder) -> list[dict[str, Any]]:
    """The export reports in the run folder (by path), as the template shows them: the checks, and the INT8,
    float16 and embedded-preprocessing results with their attempts."""
    out = []
    for r in run.exports():
        attempts = []
        for key, what in (("int8", "INT8"), ("fp16", "float16"), ("embedded", "embedded preprocessing")):
            if r.get(key):
                fields = [(k, v) for k, v in r[key].items() if not isinstance(v, list | dict)]
                attempts.append({"what": what, "fields": fields, "attempts": r[key].get("attempts") or []})
        checks = [{key: c.get(key, default) for key, default in _CHECK.items()} for c in r.get("checks") or []]
        out.append({"path": r.get("path"), "exporter": r.get("exporter"), "opset": r.get("opset"),
                    "passed": r.get("passed"), "images": r.get("images"), "checks": checks,
                    "notes": r.get("notes") or [], "precision": r.get("precision"), "provider": r.get("provider"),
                    "seconds": r.get("seconds"), "extra": attempts})  # fmt: skip
    return out
