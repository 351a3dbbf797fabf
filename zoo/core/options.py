"""Options declared once: a dataclass field carries its command-line help, and what `--resume` does with it.

    epochs: int = option(10, "Epochs to train.", on_resume="apply")

The CLI builds each command's flags from these fields (name, type, default, help),
so a flag is written in one place and its default is never copied into prose.
"""

from __future__ import annotations

import dataclasses
from typing import Any

APPLY = "apply"  # `--resume` applies a new value
REFUSE = "refuse"  # `--resume` refuses a new value (it would change what the run is)


def option(
    default: Any,
    help: str,
    *,
    on_resume: str = REFUSE,
    cli: bool = True,
    metavar: str | None = None,
    negatable: bool = False,
    flag_value: Any = None,
):
    """A dataclass field that is also a command-line option (`negatable`: a bool flag with its `--no-` form;
    `flag_value`: the value the flag takes when given without one, `--ema` as `--ema 0.999`)."""
    return dataclasses.field(
        default=default,
        metadata={"help": help, "on_resume": on_resume, "cli": cli, "metavar": metavar, "negatable": negatable,
                  "flag_value": flag_value},
    )  # fmt: skip


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of `cls` that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli")]
