"""What a fine-tuning run reports while it runs: events, not prints.

The trainer emits a `RunEvent` at each step that matters; whoever started the run
decides what to do with it. The CLI renders them (tables, progress bars, one line
per epoch), the `on_run_event` hook hands them to plugins (experiment trackers),
and a library caller gets nothing printed unless it passes a callback.

| kind | when | data |
|---|---|---|
| `started` | before the first epoch | backbone, policy, weights, plan rows, data counts, device |
| `progress` | every batch (callback only, not the hook) | phase, done, total, rate |
| `epoch_ended` | after validation | the epoch's metrics row |
| `best_improved` | the best checkpoint was replaced | epoch, metric, value |
| `early_stopped` | patience ran out | epoch, patience |
| `trained` | training and evaluation are over, before the plots and report are drawn | summary (its figures final) |
| `finished` | the run folder is complete | summary |
| `interrupted` | Ctrl-C, SIGTERM or a diverged loss | summary, reason |
| `exported` | `zoo export` wrote a verified model | path, report |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STARTED = "started"
PROGRESS = "progress"
EPOCH_ENDED = "epoch_ended"
BEST_IMPROVED = "best_improved"
EARLY_STOPPED = "early_stopped"
TRAINED = "trained"
FINISHED = "finished"
INTERRUPTED = "interrupted"
EXPORTED = "exported"
KINDS = (STARTED, PROGRESS, EPOCH_ENDED, BEST_IMPROVED, EARLY_STOPPED, TRAINED, FINISHED, INTERRUPTED, EXPORTED)


@dataclass(frozen=True)
class RunEvent:
    """One thing that happened in a run."""

    kind: str  # one of KINDS
    run_dir: str  # the run folder ("" before it exists)
    data: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[RunEvent], None]


class Reporter:
    """Sends a run's events to the caller's callback and, except progress, to every plugin's `on_run_event`."""

    def __init__(self, callback: Callback | None = None, run_dir: str = "", plugins: bool = True):
        self.callback = callback
        self.run_dir = run_dir
        self.plugins = plugins  # False on the ranks of a distributed run that are not rank 0

    def emit(self, kind: str, **data: Any) -> RunEvent:
        event = RunEvent(kind, self.run_dir, data)
        if self.callback is not None:
            self.callback(event)
        if self.plugins and kind != PROGRESS:
            from zoo.catalogue.registry import get_registry

            hooks = get_registry().hooks
            if hooks is not None:
                hooks.call_each("on_run_event", event=event)
        return event

    def progress(self, phase: str, done: int, total: int, rate: float | None = None) -> None:
        if self.callback is not None:
            self.callback(
                RunEvent(PROGRESS, self.run_dir, {"phase": phase, "done": done, "total": total, "rate": rate})
            )


_SHORT = {"balanced_acc": "bal-acc", "macro_f1": "macro-F1", "micro_f1": "micro-F1", "map": "mAP"}


def epoch_text(data: dict[str, Any]) -> str:
    """One line for an `epoch_ended` event: losses, accuracy, the metric that selects the best epoch, speed."""
    row, select_by = data["row"], data.get("select_by", "acc")
    val = f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}"
    if "val_map" in row and select_by == "map":
        val += f" mAP {row['val_map']:.3f} macro-F1 {row['val_macro_f1']:.3f}"
    elif select_by != "acc":
        val += f" {_SHORT.get(select_by, select_by)} {row[f'val_{select_by}']:.3f}"
    return (
        f"epoch {row['epoch']}/{data['epochs']}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}  {val}"
        f"  {row['train_img_s']:.1f} img/s"
        + ("  (cached)" if row.get("cached") else "")
        + ("  *best*" if data.get("improved") else "")
    )


def metric_name(metric: str) -> str:
    """`val_balanced_acc` -> `val bal-acc`: a metric as lines show it."""
    split, _, name = metric.partition("_")
    return f"{split} {_SHORT.get(name, name)}" if name else metric


def log_events(event: RunEvent) -> None:
    """A plain-text rendering of a run's events to stderr (what a distributed worker's rank 0 prints)."""
    import sys

    d = event.data
    if event.kind == EPOCH_ENDED:
        line = epoch_text(d)
    elif event.kind == STARTED:
        line = f"{d['backbone']} · policy {d['policy']} · {d['weights']} weights · device {d['device']}"
    elif event.kind == EARLY_STOPPED:
        line = f"early stop: no better {metric_name(d.get('metric', 'val_acc'))} for {d['patience']} epoch(s)"
    else:
        return
    sys.stderr.write(line + "\n")
