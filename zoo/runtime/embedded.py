"""A model exported with its preprocessing inside (`zoo export --embed-preprocessing`), as a runtime sees it.

The graph takes decoded uint8 RGB pixels `images[N, H, W, 3]` and returns probabilities and the top k.
These are the names and checks the torch-free runtime needs; `zoo.export.embed` builds such graphs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT = "images"
OUTPUTS = ("probabilities", "top_k_probabilities", "top_k_indices")


def is_embedded(session) -> bool:
    """Whether an onnxruntime session's model takes raw uint8 pixels (exported with --embed-preprocessing)."""
    first = session.get_inputs()[0]
    return first.name == INPUT and first.type == "tensor(uint8)"


def raw_pixels(path: Path | str) -> np.ndarray:
    """An image file as the embedded graph takes it: decoded, EXIF-rotated, RGB, full size, (H, W, 3) uint8."""
    from zoo.data.images import open_rgb

    return np.asarray(open_rgb(path))
