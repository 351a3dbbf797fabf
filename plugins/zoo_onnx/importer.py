"""`zoo import`: an ONNX classifier becomes a backbone, once the conversion is proven.

    zoo import model.onnx --name my-net [--mean ... --std ... --input-size H,W --layout NHWC --labels FILE]
    zoo import mnist-8        # an [onnx.NAME] entry of registry.toml: download, check sha256, import

Importing loads and checks the file, normalises the graph, converts it with
onnx2torch, derives the head and the layer groups, and compares the converted
module with onnxruntime on the original file at batch 1 and batch N. Only then is
anything written: the file is copied into `$ZOO_HOME/onnx/NAME/`, the derived
layout goes to `layout.json` beside it, and a local import adds an `[onnx.NAME]`
entry to `$ZOO_HOME/registry.toml`. A mismatch refuses the import (`--force`
imports anyway and records why it should not have). The derivation and the check are `zoo_onnx.derive`'s.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from zoo.catalogue.backbone import NAME, Backbone, Weights
from zoo.catalogue.registry import get_registry, load_registry_data, read_registry_file, reset_registry, zoo_home
from zoo.core.atomic import write_json, write_text
from zoo.core.errors import ConversionError, DataError, DownloadError, OutputError, UsageError, WeightsError
from zoo_onnx import model_dir, spec_from_entry, urls_of
from zoo_onnx.derive import ImportReport, derive
from zoo_onnx.graph import external_files, load, prepare

log = logging.getLogger(__name__)
MAX_NAME = 64  # an imported model's name is also a folder name
COPY_HINT = "copy the file to {target} (its sha256 is checked) and run again"  # the file is the model: no --weights


def _floats(value: str | list[float] | None, flag: str) -> list[float] | None:
    if value is None or isinstance(value, list):
        return value
    try:
        return [float(v) for v in str(value).replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"{flag} {value}: give comma-separated numbers, e.g. 0.485,0.456,0.406") from None


def _size(value: str | list[int] | None) -> list[int] | None:
    if value is None or isinstance(value, list):
        return value
    try:
        parts = [int(v) for v in str(value).lower().replace("x", ",").split(",") if v]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise UsageError(f"--input-size {value}: give H,W (or one number for a square input), e.g. 224,224")
    return parts * 2 if len(parts) == 1 else parts


def _labels(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"--labels {path}: cannot read it ({exc.strerror or exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def import_file(
    path: str | Path,
    name: str,
    mean: str | list[float] | None = None,
    std: str | list[float] | None = None,
    input_size: str | list[int] | None = None,
    layout: str | None = None,
    labels: str | None = None,
    check_data: str | Path | None = None,
    force: bool = False,
    replace: bool = False,
    description: str | None = None,
) -> ImportReport:
    """Import a local ONNX file as backbone `name` (see the module docstring)."""
    path = Path(path).expanduser()
    if not NAME.match(name or "") or "/" in name or len(name) > MAX_NAME:
        raise UsageError(
            f"--name {name[:80]!r}{'...' if len(name or '') > 80 else ''}: use up to {MAX_NAME} lower case letters, "
            "digits, '_', '.', '-' (e.g. my-net)"
        )
    registry = get_registry()
    if name in registry.backbones or name in registry.aliases:
        existing = registry.backbones.get(name)
        if existing is None or existing.source != "onnx" or not _user_entry(name):
            owner = existing.source if existing else "an alias"
            raise UsageError(f"--name {name}: already a backbone ({owner}); choose another name")
        if not replace:
            raise UsageError(f"--name {name}: already imported; add --replace to import over it")
    entry: dict[str, Any] = {
        "description": description or f"imported from {path.name}",
        "imported_from": str(path.resolve()),
    }
    if (m := _floats(mean, "--mean")) is not None:
        entry["mean"] = m
    if (s := _floats(std, "--std")) is not None:
        entry["std"] = s
    if (size := _size(input_size)) is not None:
        entry["input_size"] = size
    if layout:
        entry["layout"] = layout.upper()
    if (names := _labels(labels)) is not None:
        entry["labels"] = names
    where = str(path)
    model = load(path, where)  # not ONNX, checker, external data: refused before anything else
    prepared = prepare(model, where, input_size=entry.get("input_size"), layout=entry.get("layout"))
    entry.setdefault("input_size", list(prepared.input_size))
    entry.setdefault("layout", prepared.layout)
    entry["channels"] = prepared.channels
    if "mean" not in entry and prepared.channels == 3:
        prepared.notes.append("no --mean/--std: ImageNet's assumed")
    with tempfile.TemporaryDirectory(dir=_ensure(zoo_home() / "onnx")) as tmp:
        staged = Path(tmp) / "files"
        staged.mkdir()
        files = [path, *external_files(path)]
        for f in files:
            shutil.copy2(f, staged / f.name)
        from zoo.catalogue.weights import sha256_of

        target = model_dir(name)
        entry["url"] = (target / path.name).as_uri()
        entry["sha256"] = sha256_of(staged / path.name)
        report, layout_data = derive(name, entry, path, prepared, check_data, force, where)
        write_json(staged / "layout.json", layout_data)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(target)
    _write_entry(name, entry)
    reset_registry()
    return report


def import_entry(name: str, check_data: str | Path | None = None, force: bool = False) -> ImportReport:
    """Import an `[onnx.NAME]` registry entry: download (sha256-checked), derive, verify, keep the layout."""
    from zoo.catalogue.weights import NotServed, fetch

    data, _ = load_registry_data()
    entry = data.get("onnx", {}).get(name)
    if entry is None:
        known = ", ".join(sorted(data.get("onnx", {}))) or "none"
        raise UsageError(f"{name}: not an .onnx file nor an [onnx.NAME] registry entry (entries: {known})")
    urls = urls_of(entry)
    if not urls or not all(urls):
        raise DataError(f'registry.toml [onnx.{name}]: no url (give url = "https://..." or a list of mirrors)')
    check_integrity_setting(name, entry)
    weights = Weights(tag=f"onnx.{name}", url=urls[0], sha256=entry.get("sha256"))
    try:
        path = fetch(weights, fallbacks=urls[1:])
    except DownloadError as exc:  # the file is the model itself: --weights does not apply here
        raise DownloadError(
            f"[onnx.{name}]: cannot download it ({exc.reason}); {COPY_HINT.format(target=exc.target)}",
            exc.url,
            exc.reason,
            exc.target,
        ) from None
    except NotServed as exc:
        raise WeightsError(
            f"[onnx.{name}]: no source served the file ({exc.summary}); {COPY_HINT.format(target=exc.target)}"
        ) from None
    except WeightsError as exc:  # the file in the cache is not the model
        raise WeightsError(f"[onnx.{name}]: {exc}") from None
    where = f"{name} ({path})"
    prepared = prepare(load(path, where), where, input_size=entry.get("input_size"), layout=entry.get("layout"))
    report, layout_data = derive(name, entry, path, prepared, check_data, force, where)
    write_json(_ensure(model_dir(name)) / "layout.json", layout_data)
    reset_registry()
    return report


def check_integrity_setting(name: str, entry: dict[str, Any]) -> None:
    """A downloaded model is sha256-checked: an entry without sha256 must opt out in writing (`skip_sha256`)."""
    if entry.get("sha256"):
        return
    if entry.get("skip_sha256") is True:
        log.warning("[onnx.%s]: no sha256 (skip_sha256 = true): the downloaded file is not checked", name)
        return
    raise DataError(
        f'registry.toml [onnx.{name}]: no sha256, so the download cannot be checked; add sha256 = "..." '
        "(sha256sum of the file), or skip_sha256 = true to import it unchecked"
    )


def resolve(spec: Backbone) -> Backbone:
    """Complete a registry entry on first use: import it (this downloads the file once)."""
    sys.stderr.write(f"importing ONNX model '{spec.name}' on first use: download, convert, verify\n")
    report = import_entry(spec.name)
    for row in report.checks:
        sys.stderr.write(f"  batch {row.batch}: max abs diff {row.max_abs_diff:.2e} (tolerance {row.atol:.1e})\n")
    data, _ = load_registry_data()
    done = spec_from_entry(spec.name, data["onnx"][spec.name])
    if not done.groups:
        raise ConversionError(f"{spec.name}: imported, but its layout did not register; run `zoo import {spec.name}`")
    return done


def _ensure(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{folder}: cannot create it ({exc.strerror or exc}); set ZOO_HOME to a writable folder"
        ) from None
    return folder


def _user_entry(name: str) -> bool:
    """Whether `[onnx.NAME]` is in the user's registry.toml (an earlier import), not the project's."""
    path = zoo_home() / "registry.toml"
    return path.is_file() and name in read_registry_file(path).get("onnx", {})


def _write_entry(name: str, entry: dict[str, Any]) -> None:
    """Add or replace `[onnx.NAME]` in $ZOO_HOME/registry.toml, keeping the user's comments."""
    import tomlkit

    path = zoo_home() / "registry.toml"
    doc = tomlkit.parse(path.read_text(encoding="utf-8")) if path.is_file() else tomlkit.document()
    if "onnx" not in doc:
        doc["onnx"] = tomlkit.table(is_super_table=True)
    table = tomlkit.table()
    for key, value in entry.items():
        table[key] = value
    doc["onnx"][name] = table
    write_text(path, tomlkit.dumps(doc))
