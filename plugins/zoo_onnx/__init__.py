"""Built-in plugin: ONNX classifiers as backbones (ONNX Model Zoo entries and `zoo import`ed files).

Each `[onnx.NAME]` table of registry.toml (the project's or the user's) is a backbone.
Its head and layer groups are derived from the graph when the file is imported and
kept in `$ZOO_HOME/onnx/NAME/layout.json`; an entry not imported yet registers
without them and is imported on first use (download, sha256 check, conversion
check). Registering reads TOML and JSON only: no torch, no onnx.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from zoo.catalogue.backbone import PREPROCESS_KEYS, Backbone, Group, Preprocess, Weights
from zoo.catalogue.hookspecs import hookimpl
from zoo.catalogue.registry import load_registry_data, zoo_home

LAYOUT_VERSION = 1
_SETTINGS = ("url", "sha256", "input_size", "layout", "mean", "std", "channel_order", "head", "groups")


def model_dir(name: str) -> Path:
    """Where an imported model's files live: $ZOO_HOME/onnx/NAME."""
    return zoo_home() / "onnx" / name


def settings_digest(entry: dict[str, Any]) -> str:
    """What the derived layout depends on: when these change, the model is imported again."""
    data = {k: entry.get(k) for k in _SETTINGS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def read_layout(name: str, entry: dict[str, Any]) -> dict[str, Any] | None:
    """The derived head and groups, if they were derived from this entry's current settings."""
    path = model_dir(name) / "layout.json"
    try:
        layout = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if layout.get("version") != LAYOUT_VERSION or layout.get("settings") != settings_digest(entry):
        return None
    return layout


def labels_of(entry: dict[str, Any]) -> tuple[str, ...]:
    """An entry's labels: a list, the name of a label set zoo ships (`imagenet-1k`), or a file (one per line)."""
    labels = entry.get("labels", ())
    if isinstance(labels, str):
        return _label_file(labels)
    return tuple(str(label) for label in labels)


@cache
def _label_file(name: str) -> tuple[str, ...]:
    shipped = resources.files("zoo") / "labels" / f"{name}.txt"
    path = Path(str(shipped)) if shipped.is_file() else Path(name).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ()
    return tuple(line.strip() for line in lines if line.strip())


def urls_of(entry: dict[str, Any]) -> tuple[str, ...]:
    """An entry's URLs, in the order they are tried: `url` is one URL or a list of them (mirrors of one file)."""
    url = entry.get("url") or ()
    return (url,) if isinstance(url, str) else tuple(str(u) for u in url)


def preprocess_of(entry: dict[str, Any]) -> Preprocess:
    size = entry.get("input_size", [224, 224])
    size = (size, size) if isinstance(size, int) else tuple(size)
    channels = entry.get("channels", 3)
    defaults = {} if channels == 3 else {"mean": (0.0,), "std": (1.0,)}  # 3 channels: ImageNet's, Preprocess's own
    given = {k: v for k, v in entry.items() if k in PREPROCESS_KEYS}  # an entry also has url, sha256, labels, ...
    return Preprocess.from_dict({**defaults, **given, "input_size": size})


def spec_from_entry(name: str, entry: dict[str, Any]) -> Backbone:
    """The Backbone for one `[onnx.NAME]` entry: complete once imported, to be resolved otherwise."""
    urls = urls_of(entry)
    url = urls[0] if urls else ""
    layout = read_layout(name, entry)
    if layout:  # what the graph fixes, where the entry does not say
        entry = {"input_size": layout["input_size"], "channels": layout["channels"], **entry}
    preprocess = preprocess_of(entry)
    imported = "imported" if entry.get("imported_from") else "onnx-model-zoo"
    tags = ["onnx", imported, *entry.get("tags", [])]
    if entry.get("forced"):
        tags.append("unverified")
    common = dict(
        name=name,
        family=entry.get("family", "onnx"),
        build="zoo_onnx.build:build",
        description=entry.get("description", f"ONNX classifier ({url})"),
        tags=tuple(dict.fromkeys(tags)),
        preprocess=preprocess,
        weights=(
            Weights(
                tag="onnx",
                url=url,
                sha256=entry.get("sha256"),
                categories=labels_of(entry),
                license=entry.get("license", ""),
                acc1=entry.get("acc1"),
            ),
        ),
        default_weights="onnx",
        min_input_size=min(preprocess.input_size),
        atol=float(entry.get("atol", 1e-4)),
        build_kwargs={"layout": entry.get("layout"), "fallbacks": urls[1:]},
        notes=tuple(entry.get("notes", ())),
    )
    if layout is None:
        return Backbone(head="", groups=(), resolve="zoo_onnx.importer:resolve", **common)
    groups = tuple(Group(g["name"], tuple(g["members"])) for g in layout["groups"])
    return Backbone(
        head=layout["head"],
        groups=groups,
        num_params=layout.get("num_params"),
        **{**common, "build_kwargs": {"layout": layout["layout"], "fallbacks": urls[1:]}},
    )


@hookimpl
def register_backbones(register):
    data, _ = load_registry_data()
    for name, entry in data.get("onnx", {}).items():
        register(spec_from_entry(name, entry))


@hookimpl
def register_commands(cli):
    from zoo_onnx.cli import register

    register(cli)
