"""Labelled image data: scan a folder or a manifest, check every file, split it into train, val and test.

Folders: `DATA/train/<class>/` + `DATA/val/<class>/` (+ `DATA/test/<class>/`), `DATA/train` +
`DATA/test` (val then comes from train), or `DATA/<class>/`, split into train and val by a
seeded, stratified split. Manifests (`zoo.data.manifest`): a CSV/TSV file of paths and labels, with
an optional split column; multi-label when a cell holds several labels. Every file is decoded
once during the scan: files that cannot be used are skipped and listed (with their manifest line),
and the decoded (already downscaled) images are kept in memory so later epochs decode nothing.
Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from zoo.core.errors import DataError, UsageError
from zoo.data import manifest as manifests
from zoo.data.decoder import Decoder, ScanMemo, memo_file
from zoo.data.images import EXTENSIONS, is_image_name

log = logging.getLogger(__name__)

_SYSTEM_TREES = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int | tuple[int, ...]  # a class index; multi-label: the sorted indices of its classes


@dataclass
class DataSplit:
    """Scanned data: class names, train, val and test samples, and what was skipped."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    layout: str  # "train/val", "train/val/test", "train/test", "split", or "manifest"
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason); manifests: "line N: ..."
    test: list[Sample] = field(default_factory=list)
    multi_label: bool = False
    manifest: dict[str, Any] | None = None  # file, rows, bad_rows, columns, how it was read
    digests: dict[Path, bytes] = field(default_factory=dict)  # each usable file's decoded pixels, hashed
    memo: Any = field(default=None, repr=False, compare=False)  # zoo.data.decoder.ScanMemo: saved once a run starts

    def samples(self, which: str) -> list[Sample]:
        return {"train": self.train, "val": self.val, "test": self.test}[which]

    def counts(self, which: str) -> dict[str, int]:
        """Images per class in a split (multi-label: images that have the class)."""
        counted: Counter = Counter()
        for s in self.samples(which):
            counted.update(s.label if isinstance(s.label, tuple) else (s.label,))
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


def load(
    data: Path | str,
    labels: Path | str | None = None,
    options: manifests.ManifestOptions | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_short_side: int = 256,
    decoded: dict[Path, Image.Image] | None = None,
    memo: bool = False,
) -> DataSplit:
    """The data of a run: a folder, a manifest file, or a folder with `labels` (a manifest of its images). With
    `memo`, files an earlier scan checked and that have not changed are not decoded again (zoo.data.scan_memo)."""
    data = Path(data).expanduser()
    options = options or manifests.ManifestOptions()
    if labels is not None:
        if not _is_dir(data):
            raise DataError(f"{data}: no such folder (with --labels, DATA is the folder the manifest's paths are in)")
        return scan_manifest(labels, data, options, val_fraction, seed, min_short_side, decoded, memo)
    if data.is_file():
        if not manifests.is_manifest(data):
            raise DataError(
                f"{data}: a file, not a folder or a manifest; pass an image folder or a "
                f"{'/'.join(manifests.SUFFIXES)} manifest"
            )
        return scan_manifest(data, None, options, val_fraction, seed, min_short_side, decoded, memo)
    given = [f"--{k.replace('_', '-')}" for k in ("path_column", "label_column", "split_column", "label_sep")
             if getattr(options, k) is not None]  # fmt: skip
    if given:
        raise UsageError(f"{', '.join(given)}: only for a manifest (DATA a .csv/.tsv file, or --labels FILE)")
    split = scan(data, val_fraction, seed, min_short_side, decoded, memo)
    if options.multi_label:
        split.multi_label = True
        for which in ("train", "val", "test"):
            setattr(split, which, [Sample(s.path, (s.label,)) for s in split.samples(which)])
    return split


def load_for_run(config: dict[str, Any], min_short_side: int, decoded: dict | None = None) -> DataSplit:
    """The data a run trained on, from its config (export's INT8 calibration, verify, evaluate): without the files
    its --exclude-from left out."""
    args = (config["data"], config.get("labels"), manifest_options(config), config["val_fraction"], config["seed"])
    split = load(*args, min_short_side, decoded)
    if config.get("exclude_from"):
        from zoo.data.cleaning import exclude_listed  # (cleaning imports this module)

        split = exclude_listed(split, Path(config["exclude_from"]).expanduser())
    return split


def manifest_options(config: Any) -> manifests.ManifestOptions:
    """The manifest options of a TrainConfig or of its saved dict."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    return manifests.ManifestOptions(
        get("path_column"), get("label_column"), get("split_column"), get("label_sep"), get("multi_label")
    )


def scan(
    root: Path | str,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_short_side: int = 256,
    decoded: dict[Path, Image.Image] | None = None,
    memo: bool = False,
) -> DataSplit:
    """Scan, validate and split an image folder; raise DataError for a folder that cannot be trained on.

    Every file is decoded once to check it; when `decoded` is given, the decoded images
    (short side at least `min_short_side`) are stored in it, so training decodes nothing again.
    With `memo`, the files an earlier scan checked, unchanged since, are not decoded (their pixels are decoded
    later by whatever needs them).
    """
    root = Path(root).expanduser()
    if not _is_dir(root):
        raise DataError(f"{root}: no such folder; expected DATA/<class>/*.jpg or DATA/train + DATA/val")
    check_fraction(val_fraction)
    train_dir, val_dir, test_dir = root / "train", root / "val", root / "test"
    decoder = Decoder(min_short_side, decoded, ScanMemo(memo_file(root, min_short_side)) if memo else None)
    skipped = decoder.skipped

    def load_folder(folder: Path) -> dict[str, list[Path]]:
        out = {}
        for class_dir in class_dirs(folder):
            check_class_dir(class_dir, root)
            candidates = []
            for path in walk_files(class_dir):
                if path.name.startswith("."):
                    continue
                if not is_image_name(path):
                    skipped.append((path, "not an image file extension"))
                    continue
                candidates.append(path)
            out[class_dir.name] = [p for p, ok in zip(candidates, decoder.check(candidates), strict=True) if ok]
        return out

    def labelled(files: dict[str, list[Path]], classes: list[str], where: Path) -> list[Sample]:
        extra = sorted(set(files) - set(classes))
        if extra:
            raise DataError(
                f"{where}: class(es) {', '.join(extra)} are not in {train_dir}; "
                "the model can only predict classes it was trained on"
            )
        return [Sample(p, classes.index(c)) for c in classes for p in files.get(c, [])]

    test: list[Sample] = []
    if _is_dir(train_dir) and (_is_dir(val_dir) or _is_dir(test_dir)):
        train_files = load_folder(train_dir)
        classes = _check_classes(train_files, train_dir, skipped)
        if _is_dir(val_dir):
            train = labelled(train_files, classes, train_dir)
            val = labelled(load_folder(val_dir), classes, val_dir)
            layout = "train/val"
        else:
            train, val = stratified_split({classes.index(c): train_files[c] for c in classes}, val_fraction, seed)
            layout = "train/test"
        if _is_dir(test_dir):
            test = labelled(load_folder(test_dir), classes, test_dir)
            layout += "/test" if layout == "train/val" else ""
    else:
        files = load_folder(root)
        layout = "split"
        classes = _check_classes(files, root, skipped)
        train, val = stratified_split({classes.index(c): files[c] for c in classes}, val_fraction, seed)
    if not val:  # the stratified split leaves a class's only image in train, whatever --val-fraction says
        raise DataError(f"{root}: the validation set is empty: every class has a single image; give each 2+, or a val/")
    _warn_skipped(skipped, root)
    return DataSplit(root, classes, train, val, layout, skipped, test, digests=decoder.digests, memo=decoder.memo)


def check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction}: must be between 0 and 1")


def _warn_skipped(skipped: list[tuple[Path, str]], root: Path) -> None:
    if skipped:
        shown = "; ".join(f"{_relative(p, root)} ({why})" for p, why in skipped[:10])
        more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        log.warning("skipped %d unusable file(s): %s%s", len(skipped), shown, more)


def scan_manifest(
    file: Path | str,
    root: Path | str | None = None,
    options: manifests.ManifestOptions | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_short_side: int = 256,
    decoded: dict[Path, Image.Image] | None = None,
    memo: bool = False,
) -> DataSplit:
    """A manifest's rows as a train/val/test split; every bad row and unusable file skipped with its line."""
    check_fraction(val_fraction)
    m = manifests.read(file, root, options)
    decoder = Decoder(min_short_side, decoded, ScanMemo(memo_file(m.file, min_short_side)) if memo else None)
    skipped = decoder.skipped
    for line, cell, why in m.bad:
        skipped.append((m.root / cell if cell else m.file, f"line {line}: {why}"))
    named = []
    for row in m.rows:
        if not is_image_name(row.path):
            skipped.append((row.path, f"line {row.line}: not an image file extension"))
        else:
            named.append(row)
    usable = decoder.check([r.path for r in named], [f"line {r.line}: " for r in named])
    rows = [row for row, ok in zip(named, usable, strict=True) if ok]
    skipped.sort(key=lambda item: int(item[1].split(":", 1)[0].split()[1]))
    if not rows:
        first = f" (first: {skipped[0][1]})" if skipped else ""
        raise DataError(f"{m.file}: none of its {m.total} row(s) can be used{first}")
    has_split = m.has_split
    train_rows = [r for r in rows if r.split == "train"] if has_split else rows
    if not train_rows:
        raise DataError(f"{m.file}: no usable row has split 'train'; mark the rows to train on as train")
    names = m.classes or sorted({label for r in train_rows for label in r.labels})
    known = {name: i for i, name in enumerate(names)}
    train_names = {label for r in train_rows for label in r.labels}
    kept: list[tuple[manifests.Row, int | tuple[int, ...]]] = []
    for row in rows:
        missing = [label for label in row.labels if label not in train_names]
        if missing:
            skipped.append((row.path, f"line {row.line}: label {missing[0]!r} has no train image"))
            continue
        indices = tuple(sorted(known[label] for label in row.labels))
        kept.append((row, indices if m.multi_label else indices[0]))
    classes = [n for n in names if n in train_names] if m.classes else names
    if m.classes and len(classes) != len(names):  # a one-hot column no train row has is not a class
        remap = {names.index(n): i for i, n in enumerate(classes)}
        kept = [(r, tuple(remap[i] for i in lab) if isinstance(lab, tuple) else remap[lab]) for r, lab in kept]
    if len(classes) < 2 and not m.multi_label:
        raise DataError(
            f"{m.file}: only one class ({', '.join(classes)!s}) among the train rows; a classifier needs at least two"
        )
    samples = {"train": [], "val": [], "test": []}
    for row, label in kept:
        samples[row.split or "train"].append(Sample(row.path, label))
    train, val, test = samples["train"], samples["val"], samples["test"]
    if not val:
        if m.multi_label:
            train, val = multilabel_split(train, val_fraction, seed)
        else:
            by_class: dict[int, list[Path]] = {}
            for s in train:
                by_class.setdefault(s.label, []).append(s.path)
            train, val = stratified_split(by_class, val_fraction, seed)
    if not val:
        why = "raise --val-fraction" if m.multi_label else "give each class 2+ rows (each has one, kept in train)"
        raise DataError(f"{m.file}: the validation set is empty; add rows with split 'val', or {why}")
    bad_rows = sorted({int(why.split(":", 1)[0].split()[1]) for _, why in skipped})
    info = {
        "file": str(m.file),
        "root": str(m.root),
        "rows": m.total,
        "bad_rows": len(bad_rows),
        "columns": m.columns,
        "how": m.how,
    }
    if skipped:
        shown = "; ".join(f"{why}" for _, why in skipped[:10])
        more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        log.warning("%s: skipped %d of %d row(s): %s%s", m.file, len(bad_rows), m.total, shown, more)
    return DataSplit(m.root, classes, train, val, "manifest", skipped, test, m.multi_label, info, decoder.digests,
                     decoder.memo)  # fmt: skip


def multilabel_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded split that keeps every label's share in val near `val_fraction` (iterative stratification):
    images of the rarest labels are placed first; an image goes to val while one of its labels still needs
    val images and val is not full. A label's only image stays in train."""
    rng = random.Random(seed)
    order = sorted(samples, key=lambda s: str(s.path))
    rng.shuffle(order)
    positives = Counter(c for s in order for c in s.label)
    need = {c: min(round(n * val_fraction), n - 1) if n >= 2 else -1 for c, n in positives.items()}
    room = min(max(1, round(len(order) * val_fraction)), len(order) - 1)
    order.sort(key=lambda s: min((positives[c] for c in s.label), default=0))  # stable: rarest labels first
    train, val = [], []
    for s in order:
        if len(val) < room and any(need[c] > 0 for c in s.label) and all(need[c] > -1 for c in s.label):
            val.append(s)
            for c in s.label:
                need[c] -= 1
        else:
            train.append(s)
    return train, val


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
