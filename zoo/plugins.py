"""Loading plugins: the built-in ones and third-party packages, all through entry points.

Every plugin, built-in or not, is a package with an entry point in group `zoo`.
A plugin that fails to import is recorded with its error and skipped, so one
broken package never takes `zoo list` down with it.

`ZOO_LOAD_PLUGINS` restricts loading to a comma-separated list of entry-point
names (`ZOO_LOAD_PLUGINS=""` loads none), like llm's `LLM_LOAD_PLUGINS`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass, field
from types import ModuleType

import pluggy

from zoo import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "zoo"
LOAD_ENV = "ZOO_LOAD_PLUGINS"


@dataclass
class PluginInfo:
    """What zoo knows about one plugin, for `zoo plugins`."""

    name: str
    version: str = ""
    module: str = ""
    backbones: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # import failure, or specs it was refused


def allowed_plugins() -> set[str] | None:
    """Names from ZOO_LOAD_PLUGINS, or None when every plugin may load."""
    value = os.environ.get(LOAD_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def make_manager() -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """A plugin manager with every installed plugin loaded (or its failure recorded)."""
    pm = pluggy.PluginManager("zoo")
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    allowed = allowed_plugins()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (allowed is not None and ep.name not in allowed) or ep.name in infos:
            continue
        info = infos[ep.name] = PluginInfo(
            name=ep.name,
            version=ep.dist.version if ep.dist else "",
            module=ep.value,
        )
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a third party's import error must not stop zoo
            info.errors.append(f"failed to load: {type(exc).__name__}: {exc}")
            log.warning("plugin '%s' skipped: %s: %s", ep.name, type(exc).__name__, exc)
    return pm, infos


def register_module(
    pm: pluggy.PluginManager, infos: dict[str, PluginInfo], module: ModuleType | object, name: str, version: str = ""
) -> None:
    """Add a plugin object by hand (tests, and programs embedding zoo)."""
    pm.register(module, name=name)
    infos[name] = PluginInfo(name=name, version=version, module=getattr(module, "__name__", repr(module)))
