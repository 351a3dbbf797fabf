"""Rebuild zoo/example_data/ants-bees: 40 train + 20 val images per class from the ants/bees set, short side 256.

python scripts/make_example_data.py ../shared/data/hymenoptera
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image

DEST = Path(__file__).resolve().parents[1] / "zoo" / "example_data" / "ants-bees"


def main(source: Path) -> None:
    for split, count in (("train", 40), ("val", 20)):
        for name in ("ants", "bees"):
            files = sorted((source / split / name).glob("*.jpg"))
            random.Random(0).shuffle(files)
            out = DEST / split / name
            out.mkdir(parents=True, exist_ok=True)
            for f in files[:count]:
                img = Image.open(f).convert("RGB")
                scale = 256 / min(img.size)
                if scale < 1:
                    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
                img.save(out / f.name, quality=85)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
