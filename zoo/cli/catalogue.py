"""Commands that read the catalogue: `zoo list`, `info`, `plugins`, `policies`, `plugin new`. No torch on
the `list`, `plugins`, `policies` path."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from zoo.cli.app import JsonFlag, app, complete_backbone
from zoo.cli.render import count, note, out, print_columns, print_json, print_table, table


@app.command("list")
def list_(
    pattern: Annotated[str | None, typer.Argument(help="Name filter: a substring, or a glob like 'resnet*'.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only backbones with this tag (e.g. mobile, tutorial).")] = None,
    source: Annotated[str | None, typer.Option(help="Only backbones from this plugin (see `zoo plugins`).")] = None,
    as_json: JsonFlag = False,
):
    """List every backbone the installed plugins provide."""
    from zoo.catalogue.registry import get_registry

    registry = get_registry()
    specs = registry.list(pattern, tag=tag, source=source)
    if not specs:
        _check_filter("--source", source, {s.source for s in registry.backbones.values()}, "zoo plugins")
        _check_filter("--tag", tag, {t for s in registry.backbones.values() for t in s.tags}, "zoo list --json")
    if as_json:
        print_json([_summary(s) for s in specs])
        return
    rows = []
    for s in specs:
        default = s.get_weights(s.default_weights) if s.default_weights else None
        weights = default.tag if default else "none"
        if len(s.weights) > 1:
            weights += f" (+{len(s.weights) - 1})"
        acc = f"{default.acc1:.1f}" if default and default.acc1 else ""
        rows.append((s.name, s.source, s.family, count(s.num_params), str(s.preprocess.input_size[0]), acc, weights))
    columns = [("name", "left"), ("source", "left"), ("family", "left"), ("params", "right"), ("input", "right"),
               ("acc@1", "right"), ("default weights", "left")]  # fmt: skip
    print_columns(f"{len(specs)} backbones", columns, rows)


def _check_filter(flag: str, value: str | None, known: set[str], see: str) -> None:
    """A --source or --tag that no backbone has is a mistake (a typo, a plugin not installed), not an empty list."""
    if value is not None and value not in known:
        import difflib

        from zoo.core.errors import UsageError

        if len(known) <= 12:
            hint = f"known: {', '.join(sorted(known)) or 'none'}"
        else:
            close = difflib.get_close_matches(value, sorted(known), n=3)
            hint = (f"did you mean {' or '.join(close)}? " if close else "") + f"{len(known)} are known"
        raise UsageError(f"{flag} {value}: no backbone has it; {hint} (see {see})")


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
    name: Annotated[str, typer.Argument(help="Backbone name or alias.", autocompletion=complete_backbone)],
    as_json: JsonFlag = False,
):
    """Show a backbone's full spec: head, layer groups with parameter counts, preprocessing, weights."""
    from zoo.model.info import describe

    data = describe(name)
    if as_json:
        print_json(data)
        return
    out((data["name"], "bold"), f"  ({data['family']}, from plugin '{data['source']}')")
    if data["description"]:
        out(data["description"])
    out(f"tags: {', '.join(data['tags']) or '-'}")
    head = data["head"]
    aux = f"; auxiliary heads: {', '.join(data['aux_heads'])}" if data["aux_heads"] else ""
    out(f"head: {head['path']} ({head['module']}: {head['in_features']} -> {head['out_features']}){aux}")
    pre = data["preprocess"]
    mode = "" if pre["crop_mode"] == "center" else f", {pre['crop_mode']}"
    order = "" if pre["channel_order"] == "RGB" else f", {pre['channel_order']}"
    out(
        f"preprocess: resize {pre['resize_size']} ({pre['interpolation']}{mode}), crop "
        f"{pre['input_size'][0]}x{pre['input_size'][1]}, mean {pre['mean']}, std {pre['std']}{order}"
    )
    for line in data.get("notes", []):
        out(f"note: {line}")
    groups = table("layer groups (input → output)", [("#", "right"), ("group", "left"), ("params", "right"),
                                                      ("modules", "left")])  # fmt: skip
    for i, g in enumerate(data["groups"]):
        members = g["members"]
        shown = ", ".join(members[:4]) + (f", ... ({len(members)} in all)" if len(members) > 4 else "")
        groups.add_row(str(i), g["name"], f"{g['params']:,}", shown)
    print_table(groups)
    if not data["weights"]:
        out("weights: none (random init only)")
        return
    weights = table("weights", [(c, "left") for c in ("tag", "acc@1", "input", "classes", "url")])
    for w in data["weights"]:
        tag = w["tag"] + (" (default)" if w["tag"] == data["default_weights"] else "")
        weights.add_row(tag, str(w["acc1"] or ""), str(w["input_size"][0]), str(w["num_classes"]), w["url"])
    print_table(weights)


@app.command()
def plugins(as_json: JsonFlag = False):
    """List the loaded plugins, their versions, what each registered, and load errors."""
    from dataclasses import asdict

    from zoo.catalogue.registry import get_registry

    infos = list(get_registry().plugins.values())
    if as_json:
        print_json([asdict(i) for i in infos])
        return
    t = table(f"{len(infos)} plugins", [(c, "left") for c in ("plugin", "version", "module", "backbones",
                                                               "policies", "commands", "errors")])  # fmt: skip
    for i in infos:
        shown = ", ".join(i.backbones[:3]) + (f" (+{len(i.backbones) - 3})" if len(i.backbones) > 3 else "")
        errors = Text("; ".join(i.errors), style="red") if i.errors else ""
        t.add_row(i.name, i.version, i.module, shown, ", ".join(i.policies), ", ".join(i.commands), errors)
    print_table(t)


@app.command()
def version(as_json: JsonFlag = False):
    """zoo's version, with Python's, the platform's, the key packages' and every plugin's: what a bug report needs."""
    from zoo.catalogue.registry import get_registry
    from zoo.core.version import environment

    info = environment()
    info["plugins"] = {i.name: i.version for i in get_registry().plugins.values()}
    if as_json:
        print_json(info)
        return
    out((f"zoo {info['zoo']}", "bold"), f"  (Python {info['python']}, {info['platform']})")
    for group in ("packages", "plugins"):
        out(f"{group}: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info[group].items()))


@app.command()
def policies(as_json: JsonFlag = False):
    """List the freeze policies: built-in, from registry.toml, and from plugins."""
    from zoo.catalogue.policies import available_policies

    rows = available_policies()
    if as_json:
        print_json([{"name": n, "source": s, "help": h} for n, s, h in rows])
        return
    t = table("freeze policies", [("policy", "left"), ("source", "left"), ("what it does", "left")])
    for row in rows:
        t.add_row(*row)
    print_table(t)


plugin_app = typer.Typer(help="Plugin authoring: `zoo plugin new NAME`.", no_args_is_help=True)
app.add_typer(plugin_app, name="plugin")


@plugin_app.command("new")
def plugin_new(
    name: Annotated[str, typer.Argument(help="Plugin name, e.g. my-models (package zoo-my-models).")],
    directory: Annotated[str, typer.Option("--dir", help="Where to create zoo-NAME/.")] = ".",
):
    """Create a plugin package: entry point, one Backbone, its builder and a check_backbone test."""
    from zoo.catalogue.scaffold import new_plugin

    root = new_plugin(name, directory)
    out(("created", "bold"), f" {root}")
    note(f"next: pip install -e '{root}[test]' && zoo list {name} && (cd {root} && python -m pytest)")
