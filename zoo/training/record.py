"""What a run records about itself: its checkpoints, the plan it starts with, summary.json, the config it keeps,
and `FinetuneResult`, which reads a finished run back.

The functions take the `zoo.training.train.Trainer` they describe (typed `Any`: train imports this module, not the
other way round); they read it and write nothing (train.py writes the files).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo.catalogue.registry import get_registry
from zoo.training.device import rng_state, set_rng_state

if TYPE_CHECKING:
    from zoo.training.config import TrainConfig


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


def checkpoint(trainer: Any, epoch: int) -> dict[str, Any]:
    """last.pt and best.pt: the weights and everything `--resume`, `zoo export` and `zoo evaluate` read back."""
    from zoo.core.version import __version__

    info = get_registry().plugins.get(trainer.spec.source)
    return {
        "model": trainer.evaluated_state(),  # --ema: the averaged weights
        "trained_model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()} if trainer.ema else None,
        "ema": {"decay": trainer.ema.decay, "updates": trainer.ema.updates} if trainer.ema else None,
        "backbone": get_registry().resolve(trainer.cfg.backbone),
        "plugin": trainer.spec.source,
        "plugin_version": info.version if info else "",
        "zoo_version": __version__,
        "classes": list(trainer.classes),
        "preprocess": trainer.pre.to_dict(),
        "policy": trainer.policy.to_dict(),
        "weights": trainer.weights.label,
        "epoch": epoch,
        "step": trainer.step,
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler else None,
        "rng": rng_state(trainer.loader_gen),
        "history": trainer.history,
        "best_val_acc": trainer.best_acc,
        "best_epoch": trainer.best_epoch,
        "best_value": trainer.best_value,
        "best_report": trainer.best_report,
        "task": trainer.task.name,
        "thresholds": trainer.best_report.get("thresholds"),
        "select_by": trainer.select_by,
        "config": saved_config(trainer.cfg),
        "lr_find": trainer.lr_found,
    }


def kept(trainer: Any, epoch: int) -> str:
    """What an interrupted run kept, and how to continue it."""
    done = len(trainer.history)
    if done == 0:
        return f"interrupted during epoch {epoch + 1}; no epoch was complete, so nothing was kept"
    return (
        f"interrupted during epoch {epoch + 1}; {done} complete epoch(s) saved in {trainer.run_dir}; "
        f"continue with: zoo finetune --resume {trainer.run_dir}"
    )


def restore(trainer: Any, ckpt: dict[str, Any]) -> None:
    """Put a resumed run's trainer back where `checkpoint` left it: weights (and their average), optimizer,
    scaler, step, history, best so far, RNG."""
    if trainer.ema:
        trainer.model.load_state_dict(ckpt["trained_model"])
        trainer.ema.load(ckpt["model"], ckpt["ema"]["updates"])
    else:
        trainer.model.load_state_dict(ckpt["model"])
    trainer.optimizer.restore(ckpt["optimizer"], ckpt["epoch"])
    if trainer.scaler and ckpt.get("scaler"):
        trainer.scaler.load_state_dict(ckpt["scaler"])
    trainer.step = ckpt["step"]
    trainer.start_epoch = ckpt["epoch"]
    trainer.history = list(ckpt["history"])
    trainer.best_acc, trainer.best_epoch = ckpt["best_val_acc"], ckpt["best_epoch"]
    trainer.best_value = ckpt.get("best_value", trainer.best_acc)
    trainer.best_report = dict(ckpt.get("best_report") or {"preds": list(ckpt.get("best_preds", []))})
    if trainer.split.test and trainer.best_epoch > 0:
        from zoo.model.checkpoint import read_checkpoint

        trainer.best_state = read_checkpoint(trainer.run_dir / "best.pt")["model"]
    set_rng_state(ckpt["rng"], trainer.loader_gen)


def started(trainer: Any) -> dict[str, Any]:
    """The STARTED event: the plan per group and what the run will train on."""
    counts = trainer.groups.counts()
    rows = trainer.plan.rows(trainer.start_epoch, trainer.base_lr)
    for row in rows:
        row["params"] = counts[row["group"]]
    train_counts = trainer.split.counts("train")
    manifest = trainer.split.manifest
    return {
        "backbone": trainer.spec.name,
        "policy": trainer.policy.name,
        "weights": trainer.weights.label,
        "plan": rows,
        "train_images": len(trainer.split.train),
        "val_images": len(trainer.split.val),
        "classes": len(trainer.classes),
        "layout": trainer.split.layout,
        "smallest_class": min(train_counts.values()),
        "skipped": len(trainer.split.skipped),
        "test_images": len(trainer.split.test),
        "task": trainer.task.name,
        "balance": trainer.balance.to_dict(),
        "select_by": trainer.select_by,
        "manifest": manifest,
        "augment": trainer.augment,
        "train_size": list(trainer.loaders.train_size),
        "input_size": list(trainer.pre.input_size),
        "device": str(trainer.device),
        "epochs": trainer.cfg.epochs,
        "start_epoch": trainer.start_epoch,
        "batch_size": trainer.batch_size,
        "accum_steps": trainer.cfg.accum_steps,
        "clip_grad": trainer.cfg.clip_grad,
        "mix": trainer.mixer.describe() if trainer.mixer else None,
        "ema": trainer.cfg.ema,
        "lr_find": _lr_found(trainer),
        "auto": trainer.advice.to_dict() if trainer.advice else None,
    }


def summary(trainer: Any, status: str, wall_seconds: float, reason: str | None = None) -> dict[str, Any]:
    """summary.json: how the run ended and every figure it measured."""
    return {
        "status": status,
        "reason": reason,
        "backbone": trainer.spec.name,
        "plugin": trainer.spec.source,
        "policy": trainer.policy.to_dict(),
        "auto": trainer.advice.to_dict() if trainer.advice else None,
        "weights": trainer.weights.label,
        "classes": trainer.classes,
        "task": trainer.task.name,
        "train_images": len(trainer.split.train),
        "val_images": len(trainer.split.val),
        "test_images": len(trainer.split.test),
        "train_counts": trainer.split.counts("train"),
        "val_counts": trainer.split.counts("val"),
        "test_counts": trainer.split.counts("test") if trainer.split.test else None,
        "manifest": trainer.split.manifest,
        "skipped_files": len(trainer.split.skipped),
        "skipped": [f"{p} ({why})" for p, why in trainer.split.skipped[:100]],
        "balance": trainer.balance.to_dict(),
        "epochs_run": len(trainer.history),
        "select_by": trainer.select_by,
        "best_value": trainer.best_value,
        "best_val_acc": trainer.best_acc,
        "best_epoch": trainer.best_epoch,
        "best_val": {k: trainer.best_report[k] for k in METRICS if k in trainer.best_report},
        "per_class": trainer.best_report.get("per_class"),
        "thresholds": trainer.best_report.get("thresholds"),
        "test": trainer.test_report if status in ("completed", "early-stopped") else None,
        "final_val_acc": trainer.history[-1]["val_acc"] if trainer.history else None,
        "augment": trainer.augment,
        "train_size": list(trainer.loaders.train_size),  # of the training crops
        "input_size": list(trainer.pre.input_size),  # of evaluation and export
        "cache": trainer.cache.info,
        "device": str(trainer.device),
        "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off",
        "channels_last": trainer.channels_last,
        "scan_seconds": round(trainer.scan_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "world_size": trainer.dist.world,
        "batch_size": trainer.batch_size,  # global; each rank takes batch_size / world_size
        "accum_steps": trainer.cfg.accum_steps,
        "effective_batch": trainer.batch_size * trainer.cfg.accum_steps,  # images per optimizer step
        "clip_grad": trainer.cfg.clip_grad,
        "mix": trainer.mixer.describe() if trainer.mixer else None,
        "ema": trainer.cfg.ema,
        "lr_find": _lr_found(trainer),
        "workers": trainer.loaders.workers,
    }


def _lr_found(trainer: Any) -> dict[str, Any] | None:
    """--lr auto: what the range test found (its curve is in lr_find.json)."""
    found = trainer.lr_found
    return {k: found[k] for k in ("suggestion", "rule", "steps", "stopped")} if found else None


METRICS = ("acc", "balanced_acc", "macro_f1", "micro_f1", "map")


def stored(report: dict[str, Any]) -> dict[str, Any]:
    """A report as checkpoints (loaded with weights_only=True) and summary.json keep it: plain numbers and lists."""
    import json

    kept = {k: v for k, v in report.items() if k != "confusion_matrix" or len(v) <= 100}
    return json.loads(json.dumps(kept, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))
