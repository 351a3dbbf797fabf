"""What `zoo import` derives from a prepared graph, and the proof that the conversion is right.

The head and the layer groups (the entry's own, or found in the graph), checked the way zoo checks any
backbone; then the converted module against onnxruntime on the original file, at batch 1 and batch N, on
generated images and, with --check-data, real ones. A mismatch raises ConversionMismatch unless `force`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo import __version__
from zoo.catalogue.backbone import Backbone, Group, Preprocess
from zoo.core.check import CheckResult
from zoo.core.errors import ConversionError, ConversionMismatch, DataError, InvalidBackbone
from zoo_onnx import LAYOUT_VERSION, labels_of, preprocess_of, settings_digest
from zoo_onnx.graph import Prepared, find_head, stages

CHECK_BATCH = 8


@dataclass
class ImportReport:
    name: str
    path: str
    head: str
    groups: list[dict[str, Any]]
    images: str
    checks: list[CheckResult]
    passed: bool
    forced: bool = False
    divergence: str | None = None
    notes: list[str] = field(default_factory=list)
    num_params: int = 0
    entry: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def derive(
    name: str,
    entry: dict[str, Any],
    path: Path,
    prepared: Prepared,
    check_data: str | Path | None,
    force: bool,
    where: str,
) -> tuple[ImportReport, dict[str, Any]]:
    """(the report, the layout.json data): head, groups and the conversion check; raises ConversionMismatch
    (unless `force`: then the entry records why it should not have been imported)."""
    from zoo_onnx.convert import first_divergence

    pre = _preprocess(entry, prepared, where)
    gm, head, groups = _head_and_groups(name, entry, prepared, where)
    # generated images (normalised like real ones) always; real ones too with --check-data
    inputs = _sample_inputs(pre, check_data)
    described = " and ".join(what for _, _, what in inputs)
    atol = float(entry.get("atol", 1e-4))
    checks = _compare(gm, path, prepared, inputs, atol, where)
    passed = not any(c.failures for c in checks)
    divergence = None
    if not passed:
        found = first_divergence(gm, prepared, inputs[0][1][:1], atol)
        divergence = str(found) if found else "no single node diverges at batch 1"
    report = ImportReport(
        name=name,
        path=str(path),
        head=head,
        groups=[{"name": g, "members": m} for g, m in groups],
        images=described,
        checks=checks,
        passed=passed,
        forced=force and not passed,
        divergence=divergence,
        notes=list(prepared.notes),
        num_params=sum(p.numel() for p in gm.parameters()),
        entry=entry,
    )
    if not passed:
        _refuse_or_force(report, force, where)
    return report, _layout(report, prepared)


def _preprocess(entry: dict[str, Any], prepared: Prepared, where: str) -> Preprocess:
    """The entry's preprocessing, which must give the model's number of channels."""
    pre = preprocess_of({"input_size": list(prepared.input_size), **entry, "channels": prepared.channels})
    if pre.channels != prepared.channels:
        raise ConversionError(
            f"{where}: --mean/--std give {pre.channels} value(s) but the model takes {prepared.channels} channel(s)"
        )
    return pre


def _head_and_groups(name: str, entry: dict[str, Any], prepared: Prepared, where: str):
    """(the converted module, its head, its groups as [(name, node names)]), checked as zoo checks a backbone,
    and the entry's labels against the head's outputs."""
    from zoo.model.build import check_groups, new_head
    from zoo_onnx.convert import parametric_nodes, to_torch

    head = _node(entry.get("head"), prepared, where, "head") if entry.get("head") else find_head(prepared, where)
    gm = to_torch(prepared, where)
    weighted = parametric_nodes(gm)
    if entry.get("groups"):
        groups = _groups_from_starts(entry["groups"], prepared, head, where)
    else:
        groups = stages(prepared, head, weighted)
    spec = Backbone(
        name=name,
        family="onnx",
        build="zoo_onnx.build:build",
        head=head,
        groups=tuple(Group(g, tuple(m)) for g, m in groups),
        source="onnx",
    )
    try:
        new_head(gm.get_submodule(head), 2, spec)
        check_groups(gm, spec)
    except InvalidBackbone as exc:
        raise ConversionError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
    outputs = _outputs(gm.get_submodule(head))
    labels = labels_of(entry)
    if labels and outputs and len(labels) != outputs:
        raise DataError(
            f"{where}: {len(labels)} labels for {outputs} outputs; give exactly one label per output "
            "(--labels FILE, one per line)"
        )
    return gm, head, groups


def _sample_inputs(pre: Preprocess, check_data: str | Path | None) -> list[tuple[str, Any, str]]:
    """[(label, images, what they are)]: generated images, and the --check-data ones."""
    from zoo.data.check_images import load_sample_inputs

    inputs = [("generated", *load_sample_inputs(pre, CHECK_BATCH, None, None))]
    if check_data:
        inputs.append(("real", *load_sample_inputs(pre, CHECK_BATCH, Path(check_data), None)))
    return inputs


def _compare(gm, path: Path, prepared: Prepared, inputs, atol: float, where: str) -> list[CheckResult]:
    """The converted module against onnxruntime on the original file, at batch 1 and the full batch of each input;
    a graph that cannot take an input is a ConversionError saying what to check."""
    import onnxruntime as ort

    from zoo_onnx.convert import compare

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    checks = []
    for label, images, batch in [(label, x, b) for label, x, _ in inputs for b in (1, len(x))]:
        try:
            rows = compare(gm, session, prepared, images, (batch,), atol)
            for row in rows:
                row.output = label
            checks += rows
        except Exception as exc:  # a graph that cannot take this input, in torch or onnxruntime
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            if batch == 1:
                shape = "x".join(map(str, images.shape[1:]))
                raise ConversionError(
                    f"{where}: the model fails on a {shape} input ({why}); check --input-size and --layout"
                ) from None
            raise ConversionError(
                f"{where}: the model runs at batch 1 but not at batch {batch} ({why}): the graph fixes the batch "
                "size in a way zoo cannot undo; export it again with a dynamic batch axis"
            ) from None
    return checks


def _refuse_or_force(report: ImportReport, force: bool, where: str) -> None:
    """A conversion that does not match: ConversionMismatch, or with `force` a warning the entry keeps."""
    failures = "; ".join(f"batch {c.batch}: {', '.join(c.failures)}" for c in report.checks if c.failures)
    if not force:
        raise ConversionMismatch(
            f"{where}: the converted model does not match onnxruntime ({failures}); {report.divergence}; "
            "nothing was imported (--force imports it anyway, marked unverified)",
            report,
        )
    warning = f"imported with --force although the conversion does not match onnxruntime: {failures}"
    report.entry["forced"] = warning
    sys.stderr.write(f"WARNING: {report.name}: {warning}; {report.divergence}\n")


def _layout(report: ImportReport, prepared: Prepared) -> dict[str, Any]:
    """What layout.json keeps: the derived head and groups, the graph's input, and the checks they passed."""
    return {
        "version": LAYOUT_VERSION,
        "settings": settings_digest(report.entry),
        "zoo": __version__,
        "head": report.head,
        "groups": report.groups,
        "layout": prepared.layout,
        "channels": prepared.channels,
        "input_size": list(prepared.input_size),
        "opset": prepared.opset,
        "notes": prepared.notes,
        "num_params": report.num_params,
        "checks": [dataclasses.asdict(c) for c in report.checks],
        "images": report.images,
        "forced": report.entry.get("forced"),
    }


def _outputs(head) -> int | None:
    return getattr(head, "out_features", None) or getattr(head, "out_channels", None)


def _node(value: str, prepared: Prepared, where: str, what: str) -> str:
    """A node named in an entry, by its original ONNX name or zoo's module name."""
    names = {n.name for n in prepared.model.graph.node}
    if value in names:
        return value
    if value in prepared.renamed:
        return prepared.renamed[value]
    raise ConversionError(f"{where}: {what} '{value}' is not a node of the graph")


def _groups_from_starts(starts, prepared: Prepared, head: str, where: str) -> list[tuple[str, list[str]]]:
    """An entry's `groups = [["name", "FIRST_NODE"], ...]`: each group runs to the next one's first node."""
    order = [n.name for n in prepared.model.graph.node]
    bounds = []
    for item in starts:
        if not isinstance(item, list) or len(item) != 2:
            raise ConversionError(f'{where}: groups must be [["name", "first node"], ...]')
        bounds.append((str(item[0]), order.index(_node(str(item[1]), prepared, where, f"group '{item[0]}' start"))))
    bounds.sort(key=lambda b: b[1])
    bounds[0] = (bounds[0][0], 0)  # nodes before the first named start belong to the first group
    out = []
    for i, (gname, start) in enumerate(bounds):
        end = bounds[i + 1][1] if i + 1 < len(bounds) else len(order)
        out.append((gname, [n for n in order[start:end] if n != head]))
    out[-1][1].append(head)
    return [(g, m) for g, m in out if m]
