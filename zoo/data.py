"""Labelled image data: scan a folder, check every file, split it into train and val.

Two layouts are accepted: `DATA/train/<class>/` + `DATA/val/<class>/`, or
`DATA/<class>/` which is split into train and val by a seeded, stratified
split. Every file is decoded once during the scan: files that cannot be used
are skipped and listed, and the decoded (already downscaled) images are kept
in memory so later epochs decode nothing. Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from zoo.errors import DataError
from zoo.images import EXTENSIONS, is_image_name, shrink, try_decode

log = logging.getLogger(__name__)

CACHE_LIMIT_BYTES = 4 << 30  # keep decoded images in memory up to this size
_SYSTEM_TREES = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class DataSplit:
    """A scanned data folder: class names, train and val samples, and what was skipped."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    layout: str  # "train/val" or "split"
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)

    def counts(self, which: str) -> dict[str, int]:
        samples = self.train if which == "train" else self.val
        counted = Counter(s.label for s in samples)
        return {name: counted.get(i, 0) for i, name in enumerate(self.classes)}


def class_dirs(folder: Path) -> list[Path]:
    """The class folders of `folder`: its sub-folders, hidden ones left out."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{folder}: cannot list it ({exc.strerror or exc})") from None
    return sorted(p for p in entries if not p.name.startswith(".") and _is_dir(p))


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def check_class_dir(path: Path, root: Path) -> None:
    """Refuse a class folder that is (or links to) a filesystem root, a system tree, or a folder above the data."""
    real = Path(os.path.realpath(path))
    top = Path(os.path.realpath(root))
    if real == Path(real.anchor) or real in top.parents or real == top:
        raise DataError(f"{path}: the class folder leads to {real}, which holds the data folder itself; fix the link")
    if any(str(real) == t or str(real).startswith(t + "/") for t in _SYSTEM_TREES):
        raise DataError(f"{path}: the class folder leads to {real}, a system folder, not images; fix the link")


def walk_files(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted; sub-folders that are symlinks are not followed, unreadable ones skipped."""
    out = []
    for here, dirs, files in os.walk(folder, followlinks=False, onerror=lambda exc: None):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(here) / f for f in files]
    return sorted(out)


def image_files(folder: Path) -> list[Path]:
    return [p for p in walk_files(folder) if is_image_name(p)]


def scan(
    root: Path | str,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_short_side: int = 256,
    decoded: dict[Path, Image.Image] | None = None,
) -> DataSplit:
    """Scan, validate and split an image folder; raise DataError for a folder that cannot be trained on.

    Every file is decoded once to check it; when `decoded` is given, the decoded images
    (short side at least `min_short_side`) are stored in it, so training decodes nothing again.
    """
    root = Path(root).expanduser()
    if not _is_dir(root):
        raise DataError(f"{root}: no such folder; expected DATA/<class>/*.jpg or DATA/train + DATA/val")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction}: must be between 0 and 1")
    train_dir, val_dir = root / "train", root / "val"
    skipped: list[tuple[Path, str]] = []
    kept_bytes = 0

    def load(folder: Path) -> dict[str, list[Path]]:
        nonlocal kept_bytes
        out = {}
        for class_dir in class_dirs(folder):
            check_class_dir(class_dir, root)
            good = []
            for path in walk_files(class_dir):
                if path.name.startswith("."):
                    continue
                if not is_image_name(path):
                    skipped.append((path, "not an image file extension"))
                    continue
                img, reason = try_decode(path, min_short_side)
                if reason:
                    skipped.append((path, reason))
                    continue
                good.append(path)
                if decoded is not None and kept_bytes < CACHE_LIMIT_BYTES:
                    decoded[path] = small = shrink(img, min_short_side)
                    kept_bytes += small.width * small.height * 3
            out[class_dir.name] = good
        return out

    if _is_dir(train_dir) and _is_dir(val_dir):
        train_files, val_files = load(train_dir), load(val_dir)
        layout = "train/val"
        classes = _check_classes(train_files, root / "train", skipped)
        extra = sorted(set(val_files) - set(train_files))
        if extra:
            raise DataError(
                f"{val_dir}: class(es) {', '.join(extra)} are not in {train_dir}; "
                "the model can only predict classes it was trained on"
            )
        train = [Sample(p, classes.index(c)) for c in classes for p in train_files[c]]
        val = [Sample(p, classes.index(c)) for c in classes for p in val_files.get(c, [])]
    else:
        files = load(root)
        layout = "split"
        classes = _check_classes(files, root, skipped)
        train, val = stratified_split({classes.index(c): files[c] for c in classes}, val_fraction, seed)
    if not val:
        raise DataError(f"{root}: the validation set is empty; add images to val/ or raise --val-fraction")
    if skipped:
        shown = "; ".join(f"{_relative(p, root)} ({why})" for p, why in skipped[:10])
        more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        log.warning("skipped %d unusable file(s): %s%s", len(skipped), shown, more)
    return DataSplit(root, classes, train, val, layout, skipped)


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def _check_classes(files: dict[str, list[Path]], where: Path, skipped) -> list[str]:
    if not files:
        raise DataError(f"{where}: no class folders; expected {where}/<class>/*.jpg")
    if len(files) == 1:
        raise DataError(f"{where}: only one class ('{next(iter(files))}'); a classifier needs at least two")
    for name, paths in files.items():
        if not paths:
            bad = sum(1 for p, _ in skipped if p.parent.name == name or name in p.parts)
            why = f" ({bad} file(s) skipped as unusable)" if bad else ""
            raise DataError(
                f"{where / name}: class '{name}' has no usable image{why}; "
                f"add images ({', '.join(EXTENSIONS)}) or remove the folder"
            )
    return sorted(files)


def stratified_split(files: dict[int, list[Path]], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Per class, a seeded shuffle, then `val_fraction` of it (at least one, when the class has 2+) to val."""
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(files):
        paths = sorted(files[label])
        rng.shuffle(paths)
        n_val = round(len(paths) * val_fraction)
        n_val = min(max(n_val, 1 if len(paths) >= 2 else 0), len(paths) - 1)
        val += [Sample(p, label) for p in paths[:n_val]]
        train += [Sample(p, label) for p in paths[n_val:]]
    return train, val


def eval_samples(data: Path | str, classes: list[str]) -> list[Sample]:
    """Labelled images of DATA (its val/ part when it has one), labelled with a model's classes."""
    data = Path(data).expanduser()
    if not _is_dir(data):
        raise DataError(f"{data}: no such folder")
    root = data / "val" if _is_dir(data / "val") else data
    folders = class_dirs(root)
    if not folders:
        raise DataError(f"{root}: no class folders; expected {root}/<class>/*.jpg")
    for folder in folders:
        check_class_dir(folder, data)
    unknown = [f.name for f in folders if f.name not in classes]
    if unknown:
        raise DataError(
            f"{root}: class(es) {', '.join(unknown)} are not among the model's classes ({', '.join(classes)})"
        )
    samples = [Sample(p, classes.index(f.name)) for f in folders for p in image_files(f)]
    if not samples:
        raise DataError(f"{root}: no images")
    return samples


def image_folder_files(folder: Path) -> list[Path]:
    """Every image of a folder, in its class folders (its val/ part first when it has one) or at its top."""
    root = folder / "val" if _is_dir(folder / "val") else folder
    dirs = class_dirs(root)
    for d in dirs:
        check_class_dir(d, folder)
    return [f for d in dirs for f in image_files(d)] or image_files(root)
