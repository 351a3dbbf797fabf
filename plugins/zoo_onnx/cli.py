"""`zoo import`: the ONNX plugin's command, added to the `zoo` CLI through the `register_commands` hook."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zoo.cli.render import check_table, count, note, out, print_json, print_table
from zoo.core.errors import ConversionMismatch, UsageError
from zoo.core.interrupts import stops_as_interrupted


def import_(
    source: Annotated[str, typer.Argument(help="An .onnx file, or the name of an [onnx.NAME] registry entry.")],
    name: Annotated[str | None, typer.Option(help="Backbone name for a file (e.g. my-net).")] = None,
    mean: Annotated[str | None, typer.Option(help="Per-channel mean on 0..1 pixels, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel std on 0..1 pixels (1/255 for raw 0-255 input).")] = None,
    input_size: Annotated[str | None, typer.Option(help="H,W when the graph does not fix it.")] = None,
    layout: Annotated[str | None, typer.Option(help="Input layout: NCHW or NHWC [default: from the shape].")] = None,
    labels: Annotated[str | None, typer.Option(help="Text file with one class label per line.")] = None,
    check_data: Annotated[str | None, typer.Option(help="Also verify on these images (folder).")] = None,
    force: Annotated[
        bool, typer.Option(help="Import even if the conversion does not match (marked unverified).")
    ] = False,
    replace: Annotated[bool, typer.Option(help="Import over an earlier import of the same name.")] = False,
    description: Annotated[str | None, typer.Option(help="One line for `zoo list` and `zoo info`.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")] = False,
):
    """Import an ONNX classifier as a backbone; the conversion to torch must reproduce onnxruntime."""
    from zoo_onnx.importer import import_entry, import_file

    is_file = source.endswith(".onnx") or Path(source).exists()
    # SIGTERM as Ctrl-C: the download's partial file and the staged copy are removed, the registry is untouched
    with stops_as_interrupted(lambda signal: f"interrupted ({signal}); nothing was imported"):
        try:
            if is_file:
                if not name:
                    raise UsageError(f"{source}: pass --name NAME for the new backbone")
                report = import_file(
                    source, name, mean, std, input_size, layout, labels, check_data, force, replace, description
                )
            else:
                if any(v is not None for v in (name, mean, std, input_size, layout, labels, description)):
                    raise UsageError(
                        f"{source}: a registry entry's settings live in registry.toml; options are for files"
                    )
                report = import_entry(source, check_data, force)
        except ConversionMismatch as exc:
            if exc.report is not None and not as_json:
                _table(exc.report, stderr=True)
            raise
    if as_json:
        print_json(report.to_dict())
        return
    _table(report)
    for line in report.notes:
        note(f"note: {line}")
    groups = ", ".join(f"{g['name']} ({len(g['members'])} nodes)" for g in report.groups)
    out(f"head: {report.head}; groups: {groups}; {count(report.num_params)} parameters")
    status = ("imported UNVERIFIED (--force)", "bold red") if report.forced else ("imported", "bold")
    out(status, f": {report.name} (`zoo info {report.name}`, `zoo finetune {report.name} DATA`)")


def _table(report, stderr: bool = False) -> None:
    title = f"{report.path}: torch (onnx2torch) vs onnxruntime on {report.images}"
    print_table(check_table(title, report.checks), stderr=stderr)
    if report.divergence:
        note(report.divergence)


def register(cli) -> None:
    cli.command("import")(import_)
