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
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from zoo.catalogue import hookspecs

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
    commands: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # import failure, specs it was refused, hooks that raised


@dataclass
class Plugins:
    """A plugin manager with every installed plugin loaded, and what zoo knows about each."""

    pm: pluggy.PluginManager
    infos: dict[str, PluginInfo]

    def add(self, module: ModuleType | object, name: str, version: str = "") -> None:
        """Add a plugin object by hand (tests, and programs embedding zoo)."""
        self.pm.register(module, name=name)
        self.infos[name] = PluginInfo(name=name, version=version, module=getattr(module, "__name__", repr(module)))

    def each_plugin(self, hook: str, call: Callable[[Callable[..., Any], PluginInfo], None]) -> None:
        """Run `call(hook_function, info)` for each plugin that implements `hook`, one plugin at a time: a plugin
        whose hook raises is named (in its info's errors and a warning) and the others still run."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            info = self.infos.setdefault(impl.plugin_name, PluginInfo(name=impl.plugin_name))
            try:
                call(impl.function, info)
            except Exception as exc:  # a third party's bug must not stop zoo
                info.errors.append(f"{hook} raised {type(exc).__name__}: {exc}")
                log.warning("plugin '%s' failed in %s: %s: %s", info.name, hook, type(exc).__name__, exc)

    def call_each(self, hook: str, **kwargs: Any) -> None:
        """Call one hook plugin by plugin, so a plugin that raises is named and the others still run."""
        self.each_plugin(hook, lambda function, _info: function(**kwargs))

    def register_with(self, hook: str, make_register: Callable[[PluginInfo, str], Callable[..., None]]) -> None:
        """Call a `register`-style hook plugin by plugin, each with its own `register` callback."""
        self.each_plugin(hook, lambda function, info: function(register=make_register(info, info.name)))


def allowed_plugins() -> set[str] | None:
    """Names from ZOO_LOAD_PLUGINS, or None when every plugin may load."""
    value = os.environ.get(LOAD_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def load_plugins(extra: tuple[tuple[str, object], ...] = ()) -> Plugins:
    """Every installed plugin loaded (or its failure recorded), plus `extra` (name, object) pairs."""
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
    plugins = Plugins(pm, infos)
    for name, module in extra:
        plugins.add(module, name)
    return plugins


_PLUGINS: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = load_plugins()
    return _PLUGINS


def set_plugins(plugins: Plugins | None) -> None:
    """Install `plugins` as the process-wide ones (None: load again on next use)."""
    global _PLUGINS
    _PLUGINS = plugins
