"""Pictures inside the report: bounded thumbnails as data: URIs, heat maps overlaid on the view the model saw,
and the confusion matrix as an image when it has too many classes for a table. numpy and Pillow only."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from zoo.catalogue.backbone import Preprocess
from zoo.data.images import decode_size, eval_resized, normalised, open_rgb, shrink

THUMB_SIDE = 160  # a gallery image's longest side, in pixels
THUMB_QUALITY = 80  # its JPEG quality: about 4-9 KB per photo
OVERLAY_ALPHA = 0.45  # how much of an explanation's pixel is the heat map


def model_view(path: Path | str, pre: Preprocess) -> Image.Image:
    """The RGB pixels the model sees for a file: decoded, resized and centre-cropped exactly as for evaluation
    (`zoo.data.images.load_for_eval`), before normalisation."""
    short = decode_size(pre)
    img = eval_resized(shrink(open_rgb(path, short), short), pre.input_size, pre.resize_size, pre.mean,
                       pre.interpolation, pre.crop_mode, pre.channel_order)  # fmt: skip
    ch, cw = pre.input_size
    left, top = round((img.width - cw) / 2.0), round((img.height - ch) / 2.0)
    return img.crop((left, top, left + cw, top + ch)).convert("RGB")


def model_input(view: Image.Image, pre: Preprocess):
    """A `model_view` as the model's input: (C, H, W) float32, normalised."""
    return normalised(view, pre.mean, pre.std, pre.channel_order)


def thumbnail(img: Image.Image, side: int = THUMB_SIDE) -> Image.Image:
    img = img.convert("RGB")
    img.thumbnail((side, side), Image.Resampling.LANCZOS)  # only ever shrinks
    return img


def data_uri(img: Image.Image, fmt: str = "JPEG") -> str:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=THUMB_QUALITY, optimize=True)
    else:
        img.save(buf, fmt, optimize=True)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def file_thumbnail(path: Path | str) -> str | None:
    """A bounded JPEG thumbnail of an image file as a data: URI; None when the file cannot be read."""
    try:
        img = open_rgb(path, THUMB_SIDE)
    except Exception:  # moved, deleted or broken since the run: the gallery says so instead
        return None
    return data_uri(thumbnail(img))


def jet(values):
    """(h, w) values in [0, 1] -> (h, w, 3) uint8, the classic 'jet' colours (blue, cyan, yellow, red)."""
    import numpy as np

    # a model whose weights went NaN (a diverged run) gives NaN maps: drawn as 0, not as undefined colours
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0], dtype=np.float32)), 0, 1)
    return (rgb * 255).astype(np.uint8)


def overlay(view: Image.Image, heat, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """A heat map in [0, 1] at any resolution, upsampled (bilinear) onto `view` and blended."""
    import numpy as np

    small = Image.fromarray(np.clip(np.asarray(heat, dtype=np.float32), 0, 1))  # mode F: float32
    big = np.asarray(small.resize(view.size, Image.Resampling.BILINEAR))
    return Image.blend(view.convert("RGB"), Image.fromarray(jet(big)), alpha)


def matrix_image(matrix: list[list[float | None]], cell: int = 1) -> str:
    """A normalised confusion matrix as a PNG data URI, one (or `cell`) pixel per cell, white 0 to dark blue 1:
    what the report shows instead of a table when there are too many classes."""
    import numpy as np

    values = np.array([[v or 0.0 for v in row] for row in matrix], dtype=np.float32)
    shade = (255 * (1 - values)).astype(np.uint8)
    rgb = np.stack([shade, shade, np.full_like(shade, 255) - (values * 96).astype(np.uint8)], axis=-1)
    img = Image.fromarray(rgb)
    if cell > 1:
        img = img.resize((img.width * cell, img.height * cell), Image.Resampling.NEAREST)
    return data_uri(img, "PNG")
