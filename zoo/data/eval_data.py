"""Labelled images to evaluate a model on (`zoo evaluate`): a folder or a manifest, labelled with the model's own
classes, the part `--split` asks for. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from zoo.core.errors import DataError, UsageError
from zoo.data import manifest as manifests
from zoo.data.split import Sample, _is_dir, check_class_dir, class_dirs, image_files

EVAL_SPLITS = ("auto", "train", "val", "test", "all")


@dataclass
class EvalSet:
    """Labelled images to evaluate a model on, where they came from, and the rows that were skipped."""

    samples: list[Sample]
    where: str
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def eval_samples(
    data: Path | str,
    classes: list[str],
    *,
    labels: Path | str | None = None,
    options: manifests.ManifestOptions | None = None,
    multi_label: bool = False,
    split: str = "auto",
) -> EvalSet:
    """Labelled images of DATA (a folder or a manifest), labelled with a model's classes.

    `split`: auto = the test part when there is one, else the val part, else everything;
    or train, val, test (that part, which must exist) or all.
    """
    if split not in EVAL_SPLITS:
        raise UsageError(f"--split {split}: choose one of {', '.join(EVAL_SPLITS)}")
    data = Path(data).expanduser()
    options = options or manifests.ManifestOptions()
    if labels is not None or (data.is_file() and manifests.is_manifest(data)):
        file, root = (Path(labels), data) if labels is not None else (data, None)
        return _eval_manifest(file, root, options, classes, multi_label, split)
    if not _is_dir(data):
        raise DataError(f"{data}: no such folder or manifest")
    parts = [name for name in ("train", "val", "test") if _is_dir(data / name)]
    if split == "auto":
        roots = [data / ("test" if "test" in parts else "val")] if {"test", "val"} & set(parts) else [data]
    elif split == "all":
        roots = [data / name for name in parts] if "train" in parts else [data]
    else:
        if split not in parts:
            raise DataError(f"--split {split}: {data} has no {split}/ folder")
        roots = [data / split]
    samples = []
    for root in roots:
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
        for f in folders:
            label = classes.index(f.name)
            samples += [Sample(p, (label,) if multi_label else label) for p in image_files(f)]
    if not samples:
        raise DataError(f"{', '.join(map(str, roots))}: no images")
    return EvalSet(samples, " + ".join(str(r) for r in roots))


def _eval_manifest(file, root, options, classes, multi_label, split) -> EvalSet:
    options = dataclasses.replace(options, multi_label=multi_label)
    m = manifests.read(file, root, options)
    skipped = [(m.root / cell if cell else m.file, f"line {line}: {why}") for line, cell, why in m.bad]
    rows = m.rows
    if split != "all" and m.has_split:
        wanted = split if split != "auto" else next(w for w in ("test", "val", "train", None)
                                                   if w is None or any(r.split == w for r in rows))  # fmt: skip
        rows = [r for r in rows if r.split == wanted]
        where = f"the {wanted} rows of {m.file}"
    elif split in ("auto", "all"):
        where = f"every row of {m.file}"
    else:
        raise DataError(f"--split {split}: {m.file} has no split column")
    unknown = sorted({label for r in rows for label in r.labels} - set(classes))
    if unknown:
        raise DataError(
            f"{m.file}: label(s) {', '.join(unknown[:10])} are not among the model's classes ({', '.join(classes)})"
        )
    samples = []
    for r in rows:
        indices = tuple(sorted(classes.index(label) for label in r.labels))
        if not multi_label and len(indices) != 1:
            skipped.append((r.path, f"line {r.line}: {len(indices)} labels for a single-label model"))
            continue
        samples.append(Sample(r.path, indices if multi_label else indices[0]))
    if not samples:
        raise DataError(f"{m.file}: no usable row to evaluate on ({where})")
    return EvalSet(samples, where, skipped)
