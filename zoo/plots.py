"""The pictures in a run folder: learning curves, confusion matrix, labelled val predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo import atomic
from zoo.metrics import confusion


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def curves(path: Path, history: list[dict[str, Any]]) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        loss_ax.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        acc_ax.plot(epochs, [h[f"{split}_acc"] for h in history], marker="o", label=split)
    loss_ax.set(title="loss", xlabel="epoch")
    acc_ax.set(title="accuracy", xlabel="epoch", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def confusion_matrix(path: Path, matrix: list[list[int]], classes: list[str]) -> None:
    plt = _pyplot()
    n = len(classes)
    size = min(16, 2 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (val, best epoch)")
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


def predictions(path: Path, samples, preds: list[int], classes: list[str], decoded: dict, count: int = 16) -> None:
    """A grid of val images titled 'predicted (true)', mistakes first and in red."""
    from zoo.images import open_rgb

    plt = _pyplot()
    order = sorted(range(len(samples)), key=lambda i: preds[i] == samples[i].label)[:count]
    cols = 4
    rows = max(1, (len(order) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order, strict=False):
        sample = samples[i]
        img = decoded.get(sample.path) or open_rgb(sample.path, 256)
        ax.imshow(img)
        right = preds[i] == sample.label
        ax.set_title(f"{classes[preds[i]]} ({classes[sample.label]})", color="green" if right else "red", fontsize=9)
    _save(fig, path)


def write_all(run_dir: Path, history, classes, val_samples, best_preds, decoded) -> None:
    curves(run_dir / "curves.png", history)
    labels = [s.label for s in val_samples]
    confusion_matrix(run_dir / "confusion_matrix.png", confusion(labels, best_preds, len(classes)), classes)
    predictions(run_dir / "predictions.png", val_samples, best_preds, classes, decoded)
