"""`zoo runs [DIR]`: the run folders under DIR in one table, and `zoo runs --compare A B ...`: one HTML page that
overlays their learning curves and puts their per-class figures side by side."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.core import atomic
from zoo.core.errors import InputError, OutputError, UsageError
from zoo.core.metrics import METRICS
from zoo.report import charts
from zoo.report.folder import RunFolder, is_run_folder
from zoo.report.page import REPORT_FILE, render
from zoo.report.sections import METRIC_NAMES


@dataclass(frozen=True)
class RunRow:
    """One run folder, as `zoo runs` lists it."""

    name: str
    path: str
    backbone: str
    policy: str
    status: str  # completed, interrupted, failed or running
    why: str
    metric: str  # the val metric that picked the best epoch
    best: float | None
    best_epoch: int | None
    epochs_run: int
    epochs: int | None  # asked for
    wall_seconds: float | None
    exports: list[str] = field(default_factory=list)  # the verified models exported into the folder
    report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def exported_models(run: RunFolder) -> list[str]:
    """The verified models exported into the run folder, with their INT8 and float16 companions."""
    found = []
    for report in run.exports():
        if report.get("passed"):
            found.append(str(report.get("path")))
            found += [str(report[k]["path"]) for k in ("int8", "fp16") if (report.get(k) or {}).get("path")]
    return found


def row_of(run: RunFolder) -> RunRow:
    status, why = run.status()
    metric, best, epoch = run.best()
    return RunRow(
        run.name, str(run.path), run.backbone, run.policy, status, why, metric, best, epoch,
        run.summary.get("epochs_run", len(run.history)), run.config.get("epochs"), run.wall_seconds(),
        exported_models(run),
        str(run.path / REPORT_FILE) if (run.path / REPORT_FILE).is_file() else None,
    )  # fmt: skip


def list_runs(folder: Path | str = "runs") -> list[RunRow]:
    """Every run folder directly under `folder` (or `folder` itself when it is one), by name."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise InputError(f"{folder}: no such folder; name the folder that holds run folders (default: runs)")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; name the folder that holds run folders")
    if is_run_folder(folder):
        return [row_of(RunFolder.read(folder))]
    found = sorted(p for p in folder.iterdir() if is_run_folder(p))
    return [row_of(RunFolder.read(p)) for p in found]


def _labels(runs: list[RunFolder]) -> list[str]:
    """Each run's name on the page; runs of the same name get their parent folder too."""
    names = [r.name for r in runs]
    return [f"{r.path.parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


def _curves(runs: list[RunFolder], labels: list[str]) -> list:
    loss, metric = [], []
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        colour = charts.COLOURS[i % len(charts.COLOURS)]
        epochs = [r.get("epoch", n + 1) for n, r in enumerate(run.history)]

        def column(key: str, history=run.history) -> list[float | None]:
            return [r.get(key) if isinstance(r.get(key), int | float) else None for r in history]

        loss.append(charts.Series(f"{label} val", epochs, column("val_loss"), colour))
        loss.append(charts.Series(f"{label} train", epochs, column("train_loss"), colour, dashed=True))
        metric.append(charts.Series(f"{label} val accuracy", epochs, column("val_acc"), colour))
        if run.select_by != "acc":
            name = f"{label} val {METRIC_NAMES.get(run.select_by, run.select_by)}"
            metric.append(charts.Series(name, epochs, column(f"val_{run.select_by}"), colour, dashed=True))
    return [charts.line_chart("loss (solid: val, dashed: train)", loss),
            charts.line_chart("val metrics", metric, y_range=(0, 1))]  # fmt: skip


def _per_class(runs: list[RunFolder]) -> list[dict[str, Any]]:
    """One row per class (in the first run's order, then the others'), each run's figures or None."""
    tables = [{r["class"]: r for r in run.summary.get("per_class") or []} for run in runs]
    classes = list(dict.fromkeys(c for t in tables for c in t))
    return [{"class": c, "runs": [t.get(c) for t in tables]} for c in classes]


def compare_runs(paths: list[Path | str], out: Path | str = "compare.html") -> Path:
    """Write one HTML page comparing the runs at `paths` (two or more run folders)."""
    from zoo.core.version import __version__

    if len(paths) < 2:
        raise UsageError("--compare needs two or more run folders (zoo runs --compare runs/a runs/b)")
    runs = [RunFolder.read(p) for p in paths]
    out = Path(out).expanduser()
    if out.is_dir():
        raise OutputError(f"--out {out}: is a folder; name the .html file to write")
    labels = _labels(runs)
    rows = [row_of(r) for r in runs]
    headline = []
    for run, row, label in zip(runs, rows, labels, strict=True):
        best = run.summary.get("best_val") or {}
        test = run.summary.get("test") or {}
        headline.append({"label": label, "row": row, "best": [best.get(m) for m in METRICS],
                         "test_acc": test.get("acc"), "classes": len(run.classes)})  # fmt: skip
    ctx = {
        "zoo_version": __version__,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "labels": labels,
        "metrics": [METRIC_NAMES[m] for m in METRICS],
        "headline": headline,
        "curves": _curves(runs, labels),
        "per_class": _per_class(runs),
        "same_classes": len({tuple(r.classes) for r in runs}) == 1,
    }
    try:
        atomic.write_text(out, render("compare.html", ctx))
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write the page ({exc.strerror or exc})") from None
    return out
