"""Per-image predictions of one split, as a run folder keeps them: `predictions-val.npz` (the best epoch's val
predictions, rewritten whenever the best epoch improves) and `predictions-test.npz` (the test split, once).

They are what the report's top losses, confusion matrix, most-confused pairs and calibration are computed from,
without a live trainer. The format is written and read here only:

    paths        (n,) str      the image files, absolute
    classes      (C,) str      the run's classes
    targets      (n,) int      the true class; multi-label: (n, C) uint8, 1 where the image has the label
    top_classes  (n, k) int    the k = min(5, C) most probable classes, most probable first
    top_probs    (n, k) float  their probabilities
    target_prob  (n,) float    single-label: the probability of the true class (its loss is -log of it)
    probs        (n, C) float  multi-label only: every label's sigmoid probability (thresholds, calibration)
    thresholds   (C,) float    multi-label only: the per-label thresholds the figures were computed at

A single-label run keeps k + 1 probabilities per image whatever its number of classes, so a 100,000-image,
1,000-class run keeps about 4.5 MB (compressed; bench/report_size.py), not the 400 MB of every probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.core import atomic
from zoo.core.errors import InputError

if TYPE_CHECKING:
    import numpy as np

TOP_K = 5
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before a log: a loss stays finite


def file_name(split: str) -> str:
    """The file of a split's predictions in a run folder."""
    return f"predictions-{split}.npz"


@dataclass(frozen=True, eq=False)
class ImagePredictions:
    """What a model predicted for each image of one split (the arrays of the module docstring)."""

    paths: list[str]
    classes: list[str]
    targets: np.ndarray
    top_classes: np.ndarray
    top_probs: np.ndarray
    target_prob: np.ndarray | None = None  # single-label
    probs: np.ndarray | None = None  # multi-label
    thresholds: np.ndarray | None = None  # multi-label

    @property
    def multi_label(self) -> bool:
        return self.probs is not None

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_probabilities(
        cls, paths, targets, probs, classes, thresholds=None, multi_label: bool = False
    ) -> ImagePredictions:
        """From (n,) true classes or (n, C) 0/1 targets and the (n, C) probabilities a model gave."""
        import numpy as np

        probs = np.asarray(probs, dtype=np.float32)
        k = min(TOP_K, probs.shape[1])
        # the k largest of each row (argpartition: linear in the classes), then sorted, equal ones by class index
        top = (
            np.argpartition(-probs, k - 1, axis=1)[:, :k]
            if k < probs.shape[1]
            else np.tile(np.arange(k), (len(probs), 1))
        )
        order = np.lexsort((top, -np.take_along_axis(probs, top, axis=1)), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        common = dict(
            paths=[str(Path(p).absolute()) for p in paths],
            classes=list(classes),
            top_classes=top.astype(np.int32),
            top_probs=np.take_along_axis(probs, top, axis=1),
        )
        if multi_label:
            limits = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds)
            return cls(targets=(np.asarray(targets) > 0.5).astype(np.uint8), probs=probs,
                       thresholds=limits.astype(np.float32), **common)  # fmt: skip
        targets = np.asarray(targets, dtype=np.int64)
        return cls(targets=targets.astype(np.int32), target_prob=probs[np.arange(len(probs)), targets], **common)

    # --- what the report asks of them -----------------------------------------------------------------------
    def predicted(self) -> np.ndarray:
        """(n,) the predicted class; multi-label: (n, C) 1 where the label is over its threshold."""
        import numpy as np

        if self.multi_label:
            return (self.probs >= self.thresholds[None, :]).astype(np.uint8)
        return self.top_classes[:, 0]

    def losses(self) -> np.ndarray:
        """(n,) each image's loss: cross-entropy; multi-label: the mean binary cross-entropy over the labels."""
        import numpy as np

        if self.multi_label:
            p = np.clip(self.probs.astype(np.float64), EPS, 1 - EPS)
            t = self.targets.astype(np.float64)
            return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(axis=1)
        return -np.log(np.clip(self.target_prob.astype(np.float64), EPS, 1.0))

    # --- the file ---------------------------------------------------------------------------------------------
    def write(self, path: Path | str) -> Path:
        """Write atomically (complete or absent)."""
        import numpy as np

        arrays = {
            "paths": np.asarray(self.paths, dtype=str),
            "classes": np.asarray(self.classes, dtype=str),
            "targets": self.targets,
            "top_classes": self.top_classes,
            "top_probs": self.top_probs.astype(np.float32),
        }
        for name in ("target_prob", "probs", "thresholds"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name).astype(np.float32)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: numpy adds no .npz to the temp name
                np.savez_compressed(f, **arrays)

        return atomic.atomic_write(path, save)

    @classmethod
    def read(cls, path: Path | str) -> ImagePredictions:
        """Read a predictions file; an InputError naming it when it is not one."""
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            fields = dict(
                paths=arrays.pop("paths").tolist(),
                classes=arrays.pop("classes").tolist(),
                targets=arrays.pop("targets"),
                top_classes=arrays.pop("top_classes"),
                top_probs=arrays.pop("top_probs"),
            )
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{path}: not a zoo predictions file ({type(exc).__name__}: {exc}); "
                             "write it again with `zoo report RUN DATA`") from None  # fmt: skip
        known = {k: v for k, v in arrays.items() if k in ("target_prob", "probs", "thresholds")}
        return cls(**fields, **known)
