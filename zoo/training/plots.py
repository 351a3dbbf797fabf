"""The pictures in a run folder: learning curves, the confusion matrix with per-class recall (single-label) or
per-label precision, recall and AP (multi-label), and labelled val predictions.

matplotlib is imported when they are drawn, not before. `write_all_beside` draws them in a child process while the
run writes its report, and the run waits for both before it writes its summary.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.core import atomic

log = logging.getLogger(__name__)
PLOT_TIMEOUT = 300.0  # seconds a child drawing the plots may take before it is stopped


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    # zlib level 1: the photo grid of predictions.png is written in about half the time, for a file about 13% larger
    save = {"format": "png", "dpi": 110, "bbox_inches": "tight", "pil_kwargs": {"compress_level": 1}}
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, **save))
    plt.close(fig)


def curves(path: Path, history: list[dict[str, Any]], select_by: str = "acc") -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        loss_ax.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        acc_ax.plot(epochs, [h[f"{split}_acc"] for h in history], marker="o", label=f"{split} acc")
    if select_by != "acc" and f"val_{select_by}" in history[0]:
        acc_ax.plot(epochs, [h[f"val_{select_by}"] for h in history], marker="s", label=f"val {select_by} (selects)")
    loss_ax.set(title="loss", xlabel="epoch")
    acc_ax.set(title="accuracy", xlabel="epoch", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def confusion_matrix(path: Path, matrix: list[list[int]], classes: list[str]) -> None:
    """Counts, with each true class's recall beside its row and the balanced accuracy in the title."""
    plt = _pyplot()
    n = len(classes)
    size = min(16, 2.5 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    recalls = [row[i] / sum(row) if sum(row) else None for i, row in enumerate(matrix)]
    ax.set_xticks(range(n), classes, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), [f"{c}  (recall {r:.2f})" if r is not None else f"{c}  (no image)"
                             for c, r in zip(classes, recalls, strict=True)])  # fmt: skip
    used = [r for r in recalls if r is not None]
    balanced = sum(used) / len(used) if used else 0.0
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (val, best epoch); balanced acc {balanced:.3f}")
    top = max(max(row) for row in matrix) or 1
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(matrix[i][j]),
                    ha="center",
                    va="center",
                    color="white" if matrix[i][j] > top / 2 else "black",
                )
    _save(fig, path)


def label_scores(path: Path, per_class: list[dict[str, Any]]) -> None:
    """Multi-label: each label's precision and recall at its threshold, and its AP, as bars."""
    plt = _pyplot()
    n = len(per_class)
    fig, ax = plt.subplots(figsize=(8, min(24, 1.5 + 0.45 * n)))
    ys = range(n)
    for offset, key, colour in (
        (-0.27, "precision", "tab:blue"),
        (0, "recall", "tab:orange"),
        (0.27, "ap", "tab:green"),
    ):
        ax.barh([y + offset for y in ys], [r[key] or 0.0 for r in per_class], height=0.26, label=key, color=colour)
    ax.set_yticks(list(ys), [f"{r['class']}  (t={r['threshold']:.2f}, n={r['support']})" for r in per_class])
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.02), title="per label on val (best epoch), at the tuned thresholds")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    _save(fig, path)


def predictions(path: Path, samples, preds: list, classes: list[str], decoded: dict, count: int = 16) -> None:
    """A grid of val images titled 'predicted (true)', mistakes first and in red (multi-label: label sets)."""
    from zoo.data.images import open_rgb

    plt = _pyplot()

    def truth(i: int):
        label = samples[i].label
        return sorted(label) if isinstance(label, tuple) else label

    def name(pred) -> str:
        return ", ".join(classes[c] for c in pred) or "none" if isinstance(pred, list) else classes[pred]

    order = sorted(range(len(samples)), key=lambda i: preds[i] == truth(i))[:count]
    cols = 4
    rows = max(1, (len(order) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order, strict=False):
        sample = samples[i]
        img = decoded.get(sample.path) or open_rgb(sample.path, 256)
        ax.imshow(img)
        right = preds[i] == truth(i)
        ax.set_title(f"{name(preds[i])} ({name(truth(i))})", color="green" if right else "red", fontsize=9)
    _save(fig, path)


def write_all(run_dir: Path, history, classes, val_samples, report: dict[str, Any], decoded, select_by="acc") -> None:
    """Every picture of a run, from its history and its best epoch's val report (`zoo.core.metrics`)."""
    import warnings

    with warnings.catch_warnings():
        # a label in emoji or a script the default font lacks is drawn as boxes; matplotlib's own warning about each
        # missing glyph says nothing the user can act on (the labels are theirs), so it does not reach the console
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        curves(run_dir / "curves.png", history, select_by)
        if "confusion_matrix" in report:
            confusion_matrix(run_dir / "confusion_matrix.png", report["confusion_matrix"], classes)
        elif report.get("per_class"):
            label_scores(run_dir / "labels.png", report["per_class"])
        predictions(run_dir / "predictions.png", val_samples, report["preds"], classes, decoded)


def write_all_beside(*args, **kwargs) -> Callable[[], bool]:
    """`write_all(*args)` drawn in a forked child process, so that the caller does other work meanwhile (the run
    writes its report); returns `wait()`, which joins the child and says whether every plot was written. Where
    fork is not the platform's way (only Linux forks here) or fails, the plots are drawn now and `wait` only reports.

    The child only draws (matplotlib and Pillow, no torch) and leaves with os._exit: no atexit handler, no flush of
    the parent's buffers. A child that takes longer than PLOT_TIMEOUT is stopped.
    """
    if sys.platform != "linux":
        return _drawn_here(*args, **kwargs)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        pid = os.fork()
    except OSError:
        return _drawn_here(*args, **kwargs)
    if pid == 0:  # the child
        code = 1
        try:
            write_all(*args, **kwargs)
            code = 0
        except BaseException as exc:
            try:
                log.warning("could not draw plots: %s: %s", type(exc).__name__, exc)
            except BaseException:
                pass
        finally:
            os._exit(code)

    def wait() -> bool:
        deadline = time.monotonic() + PLOT_TIMEOUT
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status) == 0
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                log.warning("could not draw plots: still drawing after %.0f s, stopped", PLOT_TIMEOUT)
                return False
            time.sleep(0.005)

    return wait


def _drawn_here(*args, **kwargs) -> Callable[[], bool]:
    try:
        write_all(*args, **kwargs)
        ok = True
    except Exception as exc:  # a plot must never lose a finished run
        log.warning("could not draw plots: %s: %s", type(exc).__name__, exc)
        ok = False
    return lambda: ok
