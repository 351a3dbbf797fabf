"""A run folder as the report reads it: config.json, summary.json, metrics.csv, the predictions files and the
export reports, each optional, so a folder from an older version, a run that was killed and a folder copied from
another machine all read (what is missing is None or empty, never an error)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.core.errors import InputError
from zoo.report.predictions import ImagePredictions, file_name

EXPORT_MARK = "zoo_report"  # the key of every report `zoo export` writes beside a model (zoo.export.report)
EXPORTS_FILE = "exports.json"  # zoo.export.report.EXPORTS_FILE: the exports a run recorded (tests hold them equal)
LOCK_FILE = ".lock"  # held (flock) while a process trains in the folder (zoo.training.runs.RunLock)
# statuses summary.json records -> what `zoo runs` shows
STATUSES = {"completed": "completed", "early-stopped": "completed", "interrupted": "interrupted", "diverged": "failed"}
_SKIP_DIRS = {"tensorboard", "cache", "explain", "__pycache__"}


def _number(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("config.json", "summary.json", "metrics.csv"))


@dataclass(frozen=True)
class RunFolder:
    """What one run folder holds."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # {} before the run wrote it (running, or killed)
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv, one row per epoch

    @classmethod
    def read(cls, path: Path | str) -> RunFolder:
        path = Path(path).expanduser()
        if not path.exists():
            raise InputError(f"{path}: no such run folder")
        if not is_run_folder(path):
            raise InputError(f"{path}: not a zoo run folder (no config.json, summary.json or metrics.csv)")
        history = []
        metrics = path / "metrics.csv"
        if metrics.is_file():
            with metrics.open(newline="", encoding="utf-8", errors="replace") as f:
                history = [{k: _number(v) for k, v in row.items() if k and v not in (None, "")} for row in
                           csv.DictReader(f)]  # fmt: skip
        return cls(path, _json(path / "config.json"), _json(path / "summary.json"), history)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def backbone(self) -> str:
        return self.summary.get("backbone") or self.config.get("backbone") or "?"

    @property
    def policy(self) -> str:
        policy = self.summary.get("policy")
        return (policy.get("name") if isinstance(policy, dict) else policy) or self.config.get("policy") or "?"

    @property
    def classes(self) -> list[str]:
        if self.summary.get("classes"):
            return list(self.summary["classes"])
        val = self.predictions("val")
        return val.classes if val else []

    @property
    def select_by(self) -> str:
        return self.summary.get("select_by") or "acc"

    def status(self) -> tuple[str, str]:
        """(completed | interrupted | failed | running, why)."""
        recorded = self.summary.get("status")
        if recorded in STATUSES:
            return STATUSES[recorded], self.summary.get("reason") or recorded
        if lock_held(self.path):
            return "running", "a process holds the run folder's lock"
        if (self.path / "last.pt").is_file():
            return "interrupted", f"stopped without a summary after {len(self.history)} epoch(s); --resume continues"
        return "failed", "stopped before an epoch was complete"

    def best(self) -> tuple[str, float | None, int | None]:
        """(metric, best value, its epoch), from summary.json or else from metrics.csv."""
        metric = self.select_by
        if "best_value" in self.summary:
            return metric, self.summary["best_value"], self.summary.get("best_epoch")
        rows = [r for r in self.history if isinstance(r.get(f"val_{metric}"), int | float)]
        if not rows:
            return metric, None, None
        row = max(rows, key=lambda r: r[f"val_{metric}"])
        return metric, row[f"val_{metric}"], row.get("epoch")

    def wall_seconds(self) -> float | None:
        if "wall_seconds" in self.summary:
            return self.summary["wall_seconds"]
        seconds = [r.get("train_seconds") for r in self.history if isinstance(r.get("train_seconds"), int | float)]
        return sum(seconds) if seconds else None

    def predictions(self, split: str) -> ImagePredictions | None:
        path = self.path / file_name(split)
        return ImagePredictions.read(path) if path.is_file() else None

    def exports(self) -> list[dict[str, Any]]:
        """The verification reports of the models exported from this run: those `zoo export` recorded in
        exports.json (wherever the model went), and any NAME.json beside a NAME.onnx inside the folder."""
        found: dict[str, dict[str, Any]] = {}
        try:
            recorded = json.loads((self.path / EXPORTS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = []
        for report in recorded if isinstance(recorded, list) else []:
            if isinstance(report, dict) and report.get(EXPORT_MARK) == "export":
                found[str(report.get("path"))] = report
        for root, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
            for name in sorted(files):
                if name.endswith(".json") and name not in ("config.json", "summary.json", EXPORTS_FILE):
                    report = _json(Path(root) / name)
                    if report.get(EXPORT_MARK) == "export":
                        found.setdefault(str(report.get("path")), report)
        return list(found.values())


def lock_held(run_dir: Path) -> bool:
    """Whether a process holds the run folder's lock now (tried, not guessed from the pid it wrote)."""
    import fcntl

    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock this call took
    return False
