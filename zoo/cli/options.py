"""Typer options built from dataclass fields, so each option is declared once (`zoo.core.options.option`).

    @app.command()
    @with_options(TrainConfig, LaunchConfig)
    def finetune(ctx: typer.Context, backbone: ..., **options): ...

The decorated function receives every option as a keyword argument; `given(ctx, options)`
tells which ones the user typed (for `--resume`, which must not silently drop them). A field
declared `tuple[str, ...]` is a repeatable flag (the function gets a tuple); the function's own
keyword-only parameters (after `*`) come after the fields, as `--json` last in `--help`. A field declared
with `flag_value` takes an optional value (`--ema` alone is `--ema=0.999`): Typer has no such option, so
its command is declared `@app.command(cls=FlagValueCommand)`, which adds the value to the arguments
before Typer parses them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer import _click
from typer.core import TyperCommand

from zoo.core.options import cli_fields


def _repeated(kind: Any) -> Any:
    """X for a field of type tuple[X, ...] (a repeatable flag), else None."""
    args = typing.get_args(kind)
    return args[0] if typing.get_origin(kind) is tuple and len(args) == 2 and args[1] is Ellipsis else None


def _flag(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def _negatable(field: dataclasses.Field, kind: Any) -> bool:
    """A flag with its --no- form: on, off (or, for bool | None, the default the library picks)."""
    return kind == bool | None or bool(field.metadata.get("negatable"))


def _option(field: dataclasses.Field, kind: Any) -> Any:
    flag = _flag(field)
    default = field.default
    flags = [f"{flag}/--no-{flag[2:]}"] if _negatable(field, kind) else [flag]
    if _repeated(kind) is not None:  # typer takes a repeated flag as a list, None when not given
        kind, default = list[_repeated(kind)] | None, None
    info = typer.Option(
        *flags,
        help=field.metadata["help"],
        show_default=default is not None and default != "",
        metavar=field.metadata.get("metavar"),
    )
    if field.metadata.get("flag_value") is not None:
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        setattr(info, _FLAG_VALUE, (field.metadata["flag_value"], base))
    return Annotated[kind, info]


_FLAG_VALUE = "zoo_flag_value"  # on a typer.Option: (the value its flag alone gives, the type of a typed value)


def flag_value_of(param: _click.Parameter) -> tuple[Any, type] | None:
    """(the value the flag alone gives, the type of a typed value) of a command's option declared with a
    flag_value, else None."""
    info = getattr(getattr(param, "type_descriptor", None), "parameter_info", None)
    return getattr(info, _FLAG_VALUE, None)


def _fill_flag_values(command: _click.Command, args: list[str]) -> list[str]:
    """`args` with `--ema` written as `--ema=VALUE` (VALUE: its flag value) where the next argument is not a value
    of its type: at the end, before another option, or before a positional (`--ema resnet18 data/`)."""
    wanted = {}
    for param in command.params:
        spec = flag_value_of(param)
        if spec is not None:
            wanted.update(dict.fromkeys(param.opts, spec))
    if not wanted:
        return args
    out = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        out.append(arg)
        if arg in wanted:
            value, kind = wanted[arg]
            try:
                kind(args[i + 1])
            except (IndexError, TypeError, ValueError):
                out[-1] = f"{arg}={value}"
    return out


class FlagValueCommand(TyperCommand):
    """A command whose options may have a flag value (`@app.command(cls=FlagValueCommand)`): `--ema` alone is read
    as `--ema=0.999` before Typer parses the arguments."""

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _fill_flag_values(self, list(args)))


def with_options(
    *classes: type, only: tuple[str, ...] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add a keyword option for each command-line field of `classes` (or the fields named in `only`) to a command's
    signature."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        annotations = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(annotation=annotations.get(p.name, p.annotation))
            for p in signature.parameters.values()
            if p.kind != inspect.Parameter.VAR_KEYWORD
        ]
        params = [p for p in own if p.kind != inspect.Parameter.KEYWORD_ONLY]
        taken = {p.name for p in own}
        repeated = set()
        for cls in classes:
            hints = typing.get_type_hints(cls)
            for field in cli_fields(cls):
                if field.name in taken or (only is not None and field.name not in only):
                    continue
                annotation = _option(field, hints[field.name])
                default = field.default
                if _repeated(hints[field.name]) is not None:
                    repeated.add(field.name)
                    default = None
                params.append(
                    inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                      annotation=annotation)
                )  # fmt: skip
                annotations[field.name] = annotation
                taken.add(field.name)
        params += [p for p in own if p.kind == inspect.Parameter.KEYWORD_ONLY]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            for name in repeated & set(kwargs):
                kwargs[name] = tuple(kwargs[name] or ())
            return fn(*args, **kwargs)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {**annotations}
        return command

    return decorate


def options_for(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """The options that are fields of `cls`."""
    names = {f.name for f in cli_fields(cls)}
    return {k: v for k, v in options.items() if k in names}


def given(ctx: typer.Context, options: dict[str, Any]) -> set[str]:
    """The options the user typed (or set through the environment), as opposed to defaults."""
    typed = (_click.core.ParameterSource.COMMANDLINE, _click.core.ParameterSource.ENVIRONMENT)
    return {name for name in options if ctx.get_parameter_source(name) in typed}


def as_flags(cls: type, options: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """The command-line flags that give `options` (those of `cls` that differ from its defaults), shell-quoted:
    what a printed `zoo ...` hint needs to repeat the user's choices."""
    import shlex

    hints = typing.get_type_hints(cls)
    flags = []
    for field in cli_fields(cls):
        value = options.get(field.name, field.default)
        if field.name in skip or value == field.default or value is None:
            continue
        flag = _flag(field)
        if isinstance(value, bool):
            flags += [flag] if value else ([f"--no-{flag[2:]}"] if _negatable(field, hints[field.name]) else [])
        elif isinstance(value, tuple | list):
            for item in value:
                flags += [flag, shlex.quote(str(item))]
        else:
            flags += [flag, shlex.quote(str(value))]
    return flags
