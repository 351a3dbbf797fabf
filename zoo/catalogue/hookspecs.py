"""The hooks a zoo plugin can implement (pluggy project name: `zoo`). docs/plugins.md documents each."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("zoo")
hookimpl = pluggy.HookimplMarker("zoo")


@hookspec
def register_backbones(register):
    """Call `register(Backbone(...))` once for each backbone the plugin provides."""


@hookspec
def register_policies(register):
    """Call `register(name, factory, help="...")` for each freeze policy the plugin adds."""


@hookspec
def register_commands(cli):
    """Add commands to the `zoo` command line: `@cli.command()` on a function (a Typer app)."""


@hookspec
def on_run_event(event):
    """Receive a `zoo.catalogue.events.RunEvent` of a fine-tuning run: started, epoch_ended, best_improved, finished,
    ..."""
