"""What a run records about itself: its checkpoints, the plan it starts with, summary.json, the config it keeps,
the per-image predictions of val and test (their file format is `zoo.report.predictions`),
and `FinetuneResult`, which reads a finished run back.

Each function reads a run's `RunSetup` (what it was built from) and `RunState` (where it stands) and writes
nothing: train.py writes the files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo.catalogue.registry import get_registry
from zoo.core.metrics import METRICS
from zoo.training.device import rng_state

if TYPE_CHECKING:
    from zoo.training.config import TrainConfig
    from zoo.training.setup import RunSetup
    from zoo.training.state import RunState


@dataclass
class FinetuneResult:
    """What `zoo.finetune` returns."""

    run_dir: Path
    best_val_acc: float  # val accuracy at the best epoch
    best_epoch: int
    epochs_run: int
    classes: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def select_by(self) -> str:
        """The val metric that picked the best epoch (`--select-by`)."""
        return self.summary.get("select_by", "acc")

    @property
    def best_value(self) -> float:
        return self.summary.get("best_value", self.best_val_acc)

    @property
    def test(self) -> dict[str, Any] | None:
        """The test split's figures (evaluated once, after training), or None without a test split."""
        return self.summary.get("test")

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    @classmethod
    def from_run_dir(cls, run_dir: Path) -> FinetuneResult:
        """Read back from a run folder's summary.json (a run another process trained)."""
        import json

        path = run_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        return cls(
            run_dir,
            summary.get("best_val_acc", 0.0),
            summary.get("best_epoch", 0),
            summary.get("epochs_run", 0),
            summary.get("classes", []),
            [],
            summary,
        )


def saved_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a run keeps it: the data and manifest as absolute paths, so that `--resume`, `zoo evaluate
    RUN` and `zoo export`'s check find them from any working directory."""
    saved = dataclasses.asdict(cfg)
    for key in ("data", "labels"):
        if saved.get(key):
            saved[key] = str(Path(saved[key]).expanduser().absolute())
    return saved


def checkpoint(setup: RunSetup, state: RunState, epoch: int) -> dict[str, Any]:
    """last.pt and best.pt: the weights and everything `--resume`, `zoo export` and `zoo evaluate` read back."""
    from zoo.core.version import __version__

    choice = setup.choice
    info = get_registry().plugins.get(choice.spec.source)
    return {
        "model": setup.evaluated_state(),  # --ema: the averaged weights
        "trained_model": {k: v.detach().cpu() for k, v in setup.model.state_dict().items()} if setup.ema else None,
        "ema": {"decay": setup.ema.decay, "updates": setup.ema.updates} if setup.ema else None,
        "backbone": get_registry().canonical(setup.cfg.backbone),
        "plugin": choice.spec.source,
        "plugin_version": info.version if info else "",
        "zoo_version": __version__,
        "classes": list(setup.classes),
        "preprocess": choice.pre.to_dict(),
        "policy": choice.policy.to_dict(),
        "weights": choice.weights.label,
        "epoch": epoch,
        "optimizer": setup.optimizer.state_dict(),
        "scaler": setup.scaler.state_dict() if setup.scaler else None,
        "rng": rng_state(setup.loader_gen),
        **state.to_checkpoint(),
        "task": setup.data.task.name,
        "select_by": setup.data.select_by,
        "config": saved_config(setup.cfg),
    }


def kept(state: RunState, run_dir: Path, epoch: int) -> str:
    """What an interrupted run kept, and how to continue it."""
    done = len(state.history)
    if done == 0:
        return f"interrupted during epoch {epoch + 1}; no epoch was complete, so nothing was kept"
    return (
        f"interrupted during epoch {epoch + 1}; {done} complete epoch(s) saved in {run_dir}; "
        f"continue with: zoo finetune --resume {run_dir}"
    )


def started(setup: RunSetup, state: RunState) -> dict[str, Any]:
    """The STARTED event: the plan per group and what the run will train on."""
    choice, data, split, cfg = setup.choice, setup.data, setup.split, setup.cfg
    counts = choice.groups.counts()
    rows = choice.plan.rows(state.start_epoch, setup.base_lr)
    for row in rows:
        row["params"] = counts[row["group"]]
    return {
        "backbone": choice.spec.name,
        "policy": choice.policy.name,
        "weights": choice.weights.label,
        "plan": rows,
        "train_images": len(split.train),
        "val_images": len(split.val),
        "classes": len(setup.classes),
        "layout": split.layout,
        "smallest_class": min(split.counts("train").values()),
        "skipped": len(split.skipped),
        "test_images": len(split.test),
        "task": data.task.name,
        "balance": data.balance.to_dict(),
        "select_by": data.select_by,
        "manifest": split.manifest,
        "augment": setup.augment,
        "train_size": list(setup.loaders.train_size),
        "input_size": list(choice.pre.input_size),
        "device": str(setup.device),
        "epochs": cfg.epochs,
        "start_epoch": state.start_epoch,
        "batch_size": setup.place.batch_size,
        "accum_steps": cfg.accum_steps,
        "clip_grad": cfg.clip_grad,
        "mix": setup.mixer.describe() if setup.mixer else None,
        "ema": cfg.ema,
        "lr_find": _lr_found(state),
        "auto": choice.advice.to_dict() if choice.advice else None,
    }


def summary(setup: RunSetup, state: RunState, status: str, wall_seconds: float, reason: str | None) -> dict[str, Any]:
    """summary.json: how the run ended and every figure it measured."""
    choice, data, split, cfg = setup.choice, setup.data, setup.split, setup.cfg
    best = state.best_report
    return {
        "status": status,
        "reason": reason,
        "backbone": choice.spec.name,
        "plugin": choice.spec.source,
        "policy": choice.policy.to_dict(),
        "auto": choice.advice.to_dict() if choice.advice else None,
        "ranking": cfg.ranking,  # `zoo finetune auto`: how the backbone was chosen
        "weights": choice.weights.label,
        "classes": setup.classes,
        "task": data.task.name,
        "train_images": len(split.train),
        "val_images": len(split.val),
        "test_images": len(split.test),
        "train_counts": split.counts("train"),
        "val_counts": split.counts("val"),
        "test_counts": split.counts("test") if split.test else None,
        "manifest": split.manifest,
        "skipped_files": len(split.skipped),
        "skipped": [f"{p} ({why})" for p, why in split.skipped[:100]],
        "balance": data.balance.to_dict(),
        "epochs_run": len(state.history),
        "select_by": data.select_by,
        "best_value": state.best_value,
        "best_val_acc": state.best_acc,
        "best_epoch": state.best_epoch,
        "best_val": {k: best[k] for k in METRICS if k in best},
        "per_class": best.get("per_class"),
        "thresholds": best.get("thresholds"),
        "test": state.test_report if status in ("completed", "early-stopped") else None,
        "final_val_acc": state.history[-1]["val_acc"] if state.history else None,
        "augment": setup.augment,
        "train_size": list(setup.loaders.train_size),  # of the training crops
        "input_size": list(choice.pre.input_size),  # of evaluation and export
        "cache": setup.cache.info,
        "device": str(setup.device),
        "amp": str(setup.amp_dtype).replace("torch.", "") if setup.amp_dtype else "off",
        "channels_last": setup.channels_last,
        "scan_seconds": round(data.scan_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "world_size": setup.dist.world,
        "batch_size": setup.place.batch_size,  # global; each rank takes batch_size / world_size
        "accum_steps": cfg.accum_steps,
        "effective_batch": setup.place.batch_size * cfg.accum_steps,  # images per optimizer step
        "clip_grad": cfg.clip_grad,
        "mix": setup.mixer.describe() if setup.mixer else None,
        "ema": cfg.ema,
        "lr_find": _lr_found(state),
        "workers": setup.loaders.workers,
    }


def _lr_found(state: RunState) -> dict[str, Any] | None:
    """--lr auto: what the range test found (its curve is in lr_find.json)."""
    found = state.lr_found
    return {k: found[k] for k in ("suggestion", "rule", "steps", "stopped")} if found else None


def stored(report: dict[str, Any]) -> dict[str, Any]:
    """A report as checkpoints (loaded with weights_only=True) and summary.json keep it: plain numbers and lists."""
    import json

    kept = {k: v for k, v in report.items() if k != "confusion_matrix" or len(v) <= 100}
    return json.loads(json.dumps(kept, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))


def image_predictions(setup: RunSetup, samples, targets: np.ndarray, probs: np.ndarray, thresholds=None):
    """Each image's prediction of a split (`samples`, in the order the probabilities came in), as the run folder
    keeps it for the report (`zoo.report.predictions`: the one definition of the file)."""
    from zoo.report.predictions import ImagePredictions

    return ImagePredictions.from_probabilities([s.path for s in samples], targets, probs, setup.classes, thresholds,
                                               setup.data.task.multi_label)  # fmt: skip


def predictions_file(split: str) -> str:
    """The name of a split's predictions file in the run folder (predictions-val.npz, predictions-test.npz)."""
    from zoo.report.predictions import file_name

    return file_name(split)
