"""The images a check runs on: real ones (--check-data, or a run's own data: its val part first), else generated
ones; and labelled model inputs for INT8's calibration and gate. Numpy and Pillow only: nothing here imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from zoo.catalogue.backbone import Preprocess
from zoo.core.errors import DataError
from zoo.data import manifest as manifests
from zoo.data.images import load_for_eval
from zoo.data.split import _is_dir, check_class_dir, class_dirs, image_files

log = logging.getLogger(__name__)


def sample_files(data: Path | str, labels: Path | str | None = None, options=None) -> list[Path]:
    """Image files of a run's data to check a model with: its val/test part first; no image is decoded."""
    data = Path(data).expanduser()
    if labels is not None or (data.is_file() and manifests.is_manifest(data)):
        file, root = (Path(labels), data) if labels is not None else (data, None)
        rows = manifests.read(file, root, options or manifests.ManifestOptions()).rows
        rank = {"val": 0, "test": 1}
        return [r.path for r in sorted(rows, key=lambda r: rank.get(r.split or "", 2))]
    return image_folder_files(data)


def image_folder_files(folder: Path) -> list[Path]:
    """Every image of a folder, in its class folders (its val/ part first when it has one) or at its top."""
    root = folder / "val" if _is_dir(folder / "val") else folder
    dirs = class_dirs(root)
    for d in dirs:
        check_class_dir(d, folder)
    return [f for d in dirs for f in image_files(d)] or image_files(root)


def run_files(config: dict[str, Any]):
    """The image files of a run's data (a folder or a manifest), without decoding any: for checks."""
    from zoo.data.split import manifest_options

    def files() -> list[Path]:
        try:
            return sample_files(config["data"], config.get("labels"), manifest_options(config))
        except Exception as exc:  # the run's data moved or changed: generated images still check the export
            log.info("the run's data cannot be read (%s); checking with generated images", exc)
            return []

    files.where = str(config["data"])
    return files


def load_sample_inputs(
    pre: Preprocess, count: int, check_data: Path | None, fallback=None, seed: int = 0
) -> tuple[np.ndarray, str]:
    """`count` model inputs: real images from --check-data, else the run's data (a folder, or a callable giving
    its files), else generated ones."""
    files, where = check_files(check_data, fallback)
    arrays = []
    rng = np.random.default_rng(seed)
    for i in rng.permutation(len(files)):
        try:
            arrays.append(load_for_eval(files[i], pre))
        except Exception:  # an unreadable file is not a reason to fail an export check
            continue
        if len(arrays) == count:
            break
    if arrays:
        return np.stack(arrays), f"{len(arrays)} images from {where}"
    if check_data is not None:
        raise DataError(f"--check-data {check_data}: no readable images")
    return generated_inputs(pre, count, seed), f"{count} generated images (no data folder)"


def check_files(check_data: Path | None, fallback=None) -> tuple[list[Path], str]:
    """(image files, where they are) of --check-data, else of the run's data (a folder, or a callable giving its
    files); ([], "") when there are none."""
    for folder, what in ((check_data, "--check-data"), (fallback, "the run's data")):
        if folder is None:
            continue
        if callable(folder):
            files = folder()
            folder = getattr(folder, "where", "its files")
        else:
            folder = Path(folder)
            if not folder.is_dir():
                if what == "--check-data":
                    raise DataError(f"--check-data {folder}: no such folder")
                continue
            files = image_folder_files(folder)
        if files or what == "--check-data":
            return files, f"{what} ({folder})"
    return [], ""


def generated_inputs(pre: Preprocess, count: int, seed: int = 0) -> np.ndarray:
    """Smooth random images, normalised like real ones, for when no real image is at hand."""
    rng = np.random.default_rng(seed)
    base = rng.random((count, pre.channels, 8, 8), dtype=np.float32)
    h, w = pre.input_size
    up = np.repeat(np.repeat(base, -(-h // 8), axis=2), -(-w // 8), axis=3)[:, :, :h, :w]
    arr = (up - np.asarray(pre.mean, np.float32)[:, None, None]) / np.asarray(pre.std, np.float32)[:, None, None]
    return arr.astype(np.float32)


def labelled_inputs(
    samples, pre: Preprocess, limit: int | None = None, classes: int = 0, multi_label: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and targets: (n,) classes, or (n, classes) 0/1 rows for multi-label samples."""
    from zoo.core.metrics import targets_array

    arrays, labels = [], []
    for s in samples[:limit] if limit else samples:
        arrays.append(load_for_eval(s.path, pre))
        labels.append(s.label)
    return np.stack(arrays), targets_array(labels, classes, multi_label)
