"""The `zoo` command line: parse, call the library, print.

Every user mistake arrives as a `ZooError`, caught once in `_ZooGroup.invoke`
and printed as one line with a non-zero exit. Nothing on the `list`, `info`
listing or `--help` path imports torch.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from zoo.errors import ZooError

console = Console()
err_console = Console(stderr=True)


class _ZooGroup(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ZooError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_ZooGroup,
    help="Model-zoo registry, fine-tuner and verified ONNX exporter for image classification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


@app.callback()
def _setup(verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")] = 0):
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", force=True)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _millions(n: int | None) -> str:
    return f"{n / 1e6:.1f}M" if n else "?"


@app.command("list")
def list_(
    pattern: Annotated[str | None, typer.Argument(help="Name filter: a substring, or a glob like 'resnet*'.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only backbones with this tag (e.g. mobile, tutorial).")] = None,
    source: Annotated[str | None, typer.Option(help="Only backbones from this plugin (see `zoo plugins`).")] = None,
    as_json: JsonFlag = False,
):
    """List every backbone the installed plugins provide."""
    from zoo.registry import get_registry

    specs = get_registry().list(pattern, tag=tag, source=source)
    if as_json:
        _print_json([_summary(s) for s in specs])
        return
    table = Table(title=f"{len(specs)} backbones", title_justify="left")
    table.add_column("name", no_wrap=True)
    for column in ("source", "family"):
        table.add_column(column, overflow="fold")
    for column in ("params", "input", "acc@1"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("default weights", overflow="fold")
    for s in specs:
        default = s.get_weights(s.default_weights) if s.default_weights else None
        acc = f"{default.acc1:.1f}" if default and default.acc1 else ""
        weights = default.tag if default else "none"
        if len(s.weights) > 1:
            weights += f" (+{len(s.weights) - 1})"
        table.add_row(
            s.name, s.source, s.family, _millions(s.num_params), str(s.preprocess.input_size[0]), acc, weights
        )
    console.print(table)


def _summary(s) -> dict[str, Any]:
    default = s.get_weights(s.default_weights) if s.default_weights else None
    return {
        "name": s.name,
        "source": s.source,
        "family": s.family,
        "tags": list(s.tags),
        "num_params": s.num_params,
        "input_size": list(s.preprocess.input_size),
        "acc1": default.acc1 if default else None,
        "weights": [w.tag for w in s.weights],
        "default_weights": s.default_weights,
    }


@app.command()
def info(
    name: Annotated[str, typer.Argument(help="Backbone name or alias.")],
    as_json: JsonFlag = False,
):
    """Show a backbone's full spec: head, layer groups with parameter counts, preprocessing, weights."""
    from zoo.info import describe

    data = describe(name)
    if as_json:
        _print_json(data)
        return
    console.print(f"[bold]{data['name']}[/]  ({data['family']}, from plugin '{data['source']}')")
    if data["description"]:
        console.print(data["description"])
    console.print(f"tags: {', '.join(data['tags']) or '-'}")
    head = data["head"]
    console.print(
        f"head: {head['path']} ({head['module']}: {head['in_features']} -> {head['out_features']})"
        + (f"; auxiliary heads: {', '.join(data['aux_heads'])}" if data["aux_heads"] else "")
    )
    pre = data["preprocess"]
    console.print(
        f"preprocess: resize {pre['resize_size']} ({pre['interpolation']}), crop "
        f"{pre['input_size'][0]}x{pre['input_size'][1]}, mean {pre['mean']}, std {pre['std']}"
    )
    groups = Table(title="layer groups (input → output)", title_justify="left")
    for column in ("#", "group", "params", "modules"):
        groups.add_column(column, justify="right" if column in ("#", "params") else "left", overflow="fold")
    for i, g in enumerate(data["groups"]):
        members = g["members"]
        shown = ", ".join(members[:4]) + (f", ... ({len(members)} in all)" if len(members) > 4 else "")
        groups.add_row(str(i), g["name"], f"{g['params']:,}", shown)
    console.print(groups)
    weights = Table(title="weights", title_justify="left")
    for column in ("tag", "acc@1", "input", "classes", "url"):
        weights.add_column(column, overflow="fold")
    for w in data["weights"]:
        tag = w["tag"] + (" (default)" if w["tag"] == data["default_weights"] else "")
        weights.add_row(tag, str(w["acc1"] or ""), str(w["input_size"][0]), str(w["num_classes"]), w["url"])
    console.print(weights if data["weights"] else "weights: none (random init only)")


@app.command()
def plugins(as_json: JsonFlag = False):
    """List the loaded plugins, their versions, what each registered, and load errors."""
    from dataclasses import asdict

    from zoo.registry import get_registry

    infos = list(get_registry().plugins.values())
    if as_json:
        _print_json([asdict(i) for i in infos])
        return
    table = Table(title=f"{len(infos)} plugins", title_justify="left")
    for column in ("plugin", "version", "module"):
        table.add_column(column, no_wrap=True)
    for column in ("backbones", "policies", "errors"):
        table.add_column(column, overflow="fold")
    for i in infos:
        shown = ", ".join(i.backbones[:3]) + (f" (+{len(i.backbones) - 3})" if len(i.backbones) > 3 else "")
        table.add_row(
            i.name,
            i.version,
            i.module,
            shown,
            ", ".join(i.policies),
            "[red]" + "; ".join(i.errors) + "[/]" if i.errors else "",
        )
    console.print(table)


def main() -> None:
    app(prog_name="zoo")
