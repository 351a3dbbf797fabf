"""What changes while a run trains: the step, the epochs so far, the best epoch and its report, what the LR range
test found. Saved in every checkpoint and restored by `--resume` as one value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    step: int = 0  # optimizer steps so far
    start_epoch: int = 0  # the first epoch this process trains (a resumed run's next one)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row of metrics per complete epoch
    best_acc: float = -1.0  # val accuracy at the best epoch, picked by `select_by`
    best_epoch: int = -1
    best_value: float = -1.0  # the `select_by` metric at the best epoch
    best_report: dict[str, Any] = field(default_factory=dict)  # its val metrics, per class, predictions, thresholds
    lr_found: dict[str, Any] | None = None  # --lr auto: the range test's result (a resumed run keeps it)
    best_state: dict[str, Any] | None = None  # the best weights, kept in memory when a test split will need them
    test_report: dict[str, Any] | None = None  # the test split's figures, once, after training

    def to_checkpoint(self) -> dict[str, Any]:
        """The state's part of last.pt / best.pt (the keys older checkpoints have too)."""
        return {
            "step": self.step,
            "history": self.history,
            "best_val_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "best_report": self.best_report,
            "thresholds": self.best_report.get("thresholds"),
            "lr_find": self.lr_found,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> RunState:
        """Where a checkpoint left the run (also one written before best_value and best_report were kept)."""
        best_acc = ckpt["best_val_acc"]
        return cls(
            step=ckpt["step"],
            start_epoch=ckpt["epoch"],
            history=list(ckpt["history"]),
            best_acc=best_acc,
            best_epoch=ckpt["best_epoch"],
            best_value=ckpt.get("best_value", best_acc),
            best_report=dict(ckpt.get("best_report") or {"preds": list(ckpt.get("best_preds", []))}),
            lr_found=ckpt.get("lr_find"),
        )
