"""Image folders: scan, validate, split, decode, transform.

Two layouts are accepted: `DATA/train/<class>/` + `DATA/val/<class>/`, or
`DATA/<class>/` which is split into train and val by a seeded, stratified
split. Every file is decoded once during the scan: files that cannot be used
are skipped and listed, and the decoded (already downscaled) images are kept
in memory so later epochs decode nothing.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from zoo.backbone import Preprocess
from zoo.errors import ZooError

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUGMENTS = ("none", "light", "strong")
MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb threshold; larger images are refused
CACHE_LIMIT_BYTES = 4 << 30  # keep decoded images in memory up to this size


class DataError(ZooError):
    """The data folder cannot be trained on."""


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


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p))


def open_rgb(path: Path | str, min_short_side: int | None = None) -> Image.Image:
    """Decode any image as RGB, EXIF orientation applied, downscaled while decoding where JPEG allows.

    `min_short_side` lets libjpeg decode at 1/2, 1/4 or 1/8 scale (`Image.draft`) as long
    as the short side stays at least that large: several times faster on big photos.
    Raises OSError/ValueError (or Image.DecompressionBombError) for unusable files.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(path)
        if img.width * img.height > MAX_PIXELS:
            raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels is over the {MAX_PIXELS} limit")
        if min_short_side and img.format == "JPEG":
            w, h = img.size
            scale = min(w, h) / min_short_side
            if scale >= 2:
                img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
        img.load()
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit and float scaled down, transparency composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB") if img.mode != "RGB" else img


def _check(path: Path, min_short_side: int) -> tuple[Image.Image | None, str | None]:
    if path.stat().st_size == 0:
        return None, "empty file"
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey bottom half
    try:
        return open_rgb(path, min_short_side), None
    except Image.DecompressionBombError as exc:
        return None, f"decompression bomb refused ({exc})"
    except Exception as exc:  # PIL raises many types for bad files; each is a reason to skip, not to stop
        return None, f"{type(exc).__name__}: {str(exc)[:120]}"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


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
    if not root.is_dir():
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
            good = []
            for path in image_files(class_dir):
                img, reason = _check(path, min_short_side)
                if reason:
                    skipped.append((path, reason))
                    continue
                good.append(path)
                if decoded is not None and kept_bytes < CACHE_LIMIT_BYTES:
                    decoded[path] = small = shrink(img, min_short_side)
                    kept_bytes += small.width * small.height * 3
            out[class_dir.name] = good
            ignored = [
                p for p in class_dir.rglob("*") if p.is_file() and not is_image_name(p) and not p.name.startswith(".")
            ]
            skipped.extend((p, "not an image file extension") for p in ignored)
        return out

    if train_dir.is_dir() and val_dir.is_dir():
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
        shown = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in skipped[:10])
        more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        log.warning("skipped %d unusable file(s): %s%s", len(skipped), shown, more)
    return DataSplit(root, classes, train, val, layout, skipped)


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


def shrink(img: Image.Image, min_short_side: int) -> Image.Image:
    """Downscale so the short side is `min_short_side` (never upscale): what every transform needs."""
    w, h = img.size
    scale = min_short_side / min(w, h)
    if scale >= 1:
        return img
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR, reducing_gap=3.0)


def decode_size(pre: Preprocess) -> int:
    """Short side to decode at: enough for the eval resize and for random crops."""
    return max(pre.resize_size, round(max(pre.input_size) * 1.15))


_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def eval_array(img: Image.Image, input_size, resize_size: int, mean, std, interpolation: str = "bilinear"):
    """The evaluation preprocessing, in numpy: resize the short side, centre-crop, scale, normalise.

    One implementation for training's validation, `zoo evaluate`, `zoo predict` and the
    torch-free runtime, so every path sees exactly the same pixels. Returns (C, H, W) float32:
    C = 3, or 1 (grayscale) when `mean` has one value.
    """
    w, h = img.size
    scale = resize_size / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != img.size:
        img = img.resize(size, _FILTERS.get(interpolation, Image.Resampling.BILINEAR))
    ch, cw = input_size
    left, top = round((size[0] - cw) / 2.0), round((size[1] - ch) / 2.0)
    img = img.crop((left, top, left + cw, top + ch))
    if len(mean) == 1:
        img = img.convert("L")
    arr = np.asarray(img, dtype=np.float32).reshape(ch, cw, -1) / np.float32(255.0)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_for_eval(path: Path | str, input_size, resize_size: int, mean, std, interpolation: str, short_side: int):
    """A file as the model's evaluation input, decoded exactly as during training."""
    img = shrink(open_rgb(path, short_side), short_side)
    return eval_array(img, input_size, resize_size, mean, std, interpolation)


class EvalTransform:
    """`eval_array` as a transform that returns a torch tensor."""

    def __init__(self, pre: Preprocess):
        self.pre = pre

    def __call__(self, img: Image.Image):
        import torch

        p = self.pre
        return torch.from_numpy(eval_array(img, p.input_size, p.resize_size, p.mean, p.std, p.interpolation))


def build_transform(pre: Preprocess, augment: str = "none"):
    """The evaluation transform (`none`), or torchvision v2 train augmentation, from a backbone's preprocessing."""
    if augment not in AUGMENTS:
        raise DataError(f"--augment {augment}: choose one of {', '.join(AUGMENTS)}")
    if augment == "none":
        return EvalTransform(pre)
    import torch
    from torchvision.transforms import InterpolationMode, v2

    interpolation = InterpolationMode(pre.interpolation)
    scale = (0.35, 1.0) if augment == "light" else (0.08, 1.0)
    steps = [
        v2.PILToTensor(),
        v2.RandomResizedCrop(list(pre.input_size), scale=scale, interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if augment == "strong":
        steps.append(v2.TrivialAugmentWide(interpolation=interpolation))
    if pre.channels == 1:
        steps.append(v2.Grayscale(1))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]
    if augment == "strong":
        steps.append(v2.RandomErasing(p=0.25))
    return v2.Compose(steps)


class ImageDataset:
    """(tensor, label) pairs, decoding from the in-memory cache when the image is in it."""

    def __init__(
        self,
        samples: list[Sample],
        transform,
        decoded: dict[Path, Image.Image] | None = None,
        min_short_side: int = 256,
    ):
        self.samples = samples
        self.transform = transform
        self.decoded = decoded or {}
        self.min_short_side = min_short_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        img = self.decoded.get(sample.path)
        if img is None:
            img = shrink(open_rgb(sample.path, self.min_short_side), self.min_short_side)
        return self.transform(img), sample.label
