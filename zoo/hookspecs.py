"""The hooks a zoo plugin can implement (pluggy project name: `zoo`)."""

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
