"""One cheap pass over every image for what pixels alone tell: its stored size, its perceptual hash (and the small
grey square it is computed from, which verifies near-duplicates) and how much its grey levels vary; then the image
issues they show (too small, extreme aspect ratio, blank).

Each image is decoded again at a small size (JPEG decodes at 1/2 to 1/8 scale through libjpeg's DCT scaling), in a
few threads: Pillow releases the GIL while it decodes.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from zoo.data.images import shrink, to_rgb
from zoo.select.duplicates import HASH_SIDE, phashes

LOOK_SIDE = 64  # short side the checks look at
ASPECT_LIMIT = 3.0  # long side over short side beyond this: a centre crop keeps under a third of the image
BLANK_STD = 4.0  # grey levels (0-255) varying less than this: a blank or near-constant image
UPSCALE_LIMIT = 2.0  # the model's input side over the image's short side beyond this: too small


@dataclass(frozen=True)
class Facts:
    """What the pass measured, one row per image."""

    sizes: np.ndarray  # (n, 2) width, height as stored
    hashes: np.ndarray  # (n,) uint64 pHash
    squares: np.ndarray  # (n, HASH_SIDE, HASH_SIDE) uint8 grey squares the hash is computed from
    contrast: np.ndarray  # (n,) standard deviation of the grey levels at LOOK_SIDE


def _look(path: Path) -> tuple[tuple[int, int], np.ndarray, float]:
    with Image.open(path) as img:
        size = img.size
        if img.format == "JPEG" and min(size) >= 2 * LOOK_SIDE:
            scale = min(size) / LOOK_SIDE
            img.draft("RGB", (math.ceil(size[0] / scale), math.ceil(size[1] / scale)))
        img.load()
        # zoo.data.images.open_rgb's steps, without its warnings filter (not thread-safe): the scan already
        # refused what that filter catches
        small = shrink(to_rgb(ImageOps.exif_transpose(img)), LOOK_SIDE).convert("L")
    grey = np.asarray(small, dtype=np.float32)
    square = np.asarray(small.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX), dtype=np.float32)
    return size, square, float(grey.std())


def measure(paths: list[Path], workers: int | None = None) -> Facts:
    """Size, pHash and contrast of every file (each was decoded once by the scan already: they are readable)."""
    workers = workers or min(4, os.cpu_count() or 1)
    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    squares = np.zeros((len(paths), HASH_SIDE, HASH_SIDE), dtype=np.float32)
    contrast = np.zeros(len(paths), dtype=np.float32)
    with ThreadPoolExecutor(workers) as pool:
        for i, (size, square, std) in enumerate(pool.map(_look, paths, chunksize=64)):
            sizes[i], squares[i], contrast[i] = size, square, std
    hashes = phashes(squares) if len(paths) else np.zeros(0, np.uint64)
    return Facts(sizes, hashes, np.rint(squares).astype(np.uint8), contrast)


@dataclass(frozen=True)
class ImageIssue:
    index: int  # into the audited images
    kind: str  # too-small, odd-aspect-ratio, blank
    score: float  # how far past the limit: upscale factor, aspect ratio, or BLANK_STD - contrast
    details: str


def typical_short_side(facts: Facts) -> float:
    return float(np.median(facts.sizes.min(1))) if len(facts.sizes) else 0.0


def image_issues(facts: Facts, input_side: int) -> list[ImageIssue]:
    """Too small (upscaled more than UPSCALE_LIMIT times to the model's input, and under 1/UPSCALE_LIMIT of the
    data's median short side: a set of small images is one note, not a flag on each), extreme aspect ratio, blank."""
    found = []
    typical = typical_short_side(facts)
    for i, ((w, h), std) in enumerate(zip(facts.sizes.tolist(), facts.contrast.tolist(), strict=True)):
        short, long = min(w, h), max(w, h)
        if short * UPSCALE_LIMIT < min(input_side, typical):
            why = f"{w}x{h}: upscaled {input_side / short:.1f}x to the model's {input_side}"
            found.append(ImageIssue(i, "too-small", input_side / short, why))
        if long > ASPECT_LIMIT * short:
            why = f"{w}x{h}: {long / short:.1f}:1, a centre crop keeps {short / long:.0%}"
            found.append(ImageIssue(i, "odd-aspect-ratio", long / short, why))
        if std < BLANK_STD:
            found.append(ImageIssue(i, "blank", BLANK_STD - std, f"grey levels vary by {std:.1f} (of 255)"))
    return found
