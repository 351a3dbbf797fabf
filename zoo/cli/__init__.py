"""The `zoo` command line: parse, call the library, print.

Commands live by what they do (`catalogue`, `training`, `deploy`); plugins add
their own through the `register_commands(cli)` hook (the ONNX plugin adds `zoo
import` this way). Nothing on the `list`, `info` listing or `--help` path imports
torch.
"""

from __future__ import annotations

from zoo.cli import catalogue, deploy, serving, training  # noqa: F401  (each registers its commands on `app`, in this order)
from zoo.cli.app import app


def add_plugin_commands() -> None:
    """Let every plugin add its commands, one plugin at a time (a failing plugin is named and skipped)."""
    from zoo.catalogue.plugins import get_plugins

    plugins = get_plugins()
    for impl in plugins.pm.hook.register_commands.get_hookimpls():
        info = plugins.infos.get(impl.plugin_name)
        before = {c.name or c.callback.__name__ for c in app.registered_commands}
        before |= {g.name for g in app.registered_groups}
        try:
            impl.function(cli=app)
        except Exception as exc:  # a third party's bug must not stop zoo
            if info is not None:
                info.errors.append(f"register_commands raised {type(exc).__name__}: {exc}")
            import logging

            logging.getLogger(__name__).warning(
                "plugin '%s' failed in register_commands: %s: %s", impl.plugin_name, type(exc).__name__, exc
            )
            continue
        after = {c.name or c.callback.__name__ for c in app.registered_commands}
        after |= {g.name for g in app.registered_groups}
        if info is not None:
            info.commands.extend(sorted(after - before))


add_plugin_commands()


def main() -> None:
    app(prog_name="zoo")


__all__ = ["app", "main"]
