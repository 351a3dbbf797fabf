"""The `zoo` command line: parse, call the library, print.

Commands live by what they do (`catalogue`, `training`, `deploy`); plugins add
their own through the `register_commands(cli)` hook (the ONNX plugin adds `zoo
import` this way). Nothing on the `list`, `info` listing or `--help` path imports
torch.
"""

from __future__ import annotations

from zoo.cli import auditing, catalogue, deploy, reporting, selecting, serving, training, tuning  # noqa: F401  (each registers its commands on `app`, in this order)
from zoo.cli.app import app


def add_plugin_commands() -> None:
    """Let every plugin add its commands, one plugin at a time (a failing plugin is named and skipped)."""
    from zoo.catalogue.plugins import get_plugins

    def names() -> set[str]:
        commands = {c.name or c.callback.__name__ for c in app.registered_commands}
        return commands | {g.name for g in app.registered_groups}

    def add(register_commands, info) -> None:
        before = names()
        register_commands(cli=app)
        info.commands.extend(sorted(names() - before))

    get_plugins().each_plugin("register_commands", add)


add_plugin_commands()


def main() -> None:
    app(prog_name="zoo")


__all__ = ["app", "main"]
