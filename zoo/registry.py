"""The registry: every backbone the installed plugins provide, plus registry.toml data.

Nothing here imports torch: listing and looking up backbones reads plugin data
only. Building a model is `zoo.models.create_model`.

Data comes from two `registry.toml` files, the project's (shipped in the
package) and the user's (`$ZOO_HOME/registry.toml`), which may add aliases,
change defaults and override a backbone's data fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import logging
import os
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from zoo.backbone import Backbone, check_spec
from zoo.errors import InvalidBackbone, RegistryError, UnknownBackbone
from zoo.plugins import PluginInfo, make_manager, register_module

log = logging.getLogger(__name__)

_OVERRIDABLE = {"default_weights", "tags", "description", "atol", "min_input_size", "preprocess"}
_TOP_LEVEL = {"aliases", "defaults", "backbones", "policies", "onnx"}


def zoo_home() -> Path:
    """Where user data lives: $ZOO_HOME, else $XDG_DATA_HOME/zoo, else ~/.local/share/zoo."""
    if home := os.environ.get("ZOO_HOME"):
        return Path(home).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "zoo"


def read_registry_file(path: Path | str, text: str | None = None) -> dict[str, Any]:
    """Parse one registry.toml, checking its top-level tables."""
    try:
        data = tomllib.loads(text if text is not None else Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - _TOP_LEVEL
    if unknown:
        raise RegistryError(
            f"{path}: unknown table(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_TOP_LEVEL))}"
        )
    for table in data:
        if not isinstance(data[table], dict):
            raise RegistryError(f"{path}: '{table}' must be a table")
    return data


def merge_registry_data(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The user's file over the project's: tables merge, the user's keys win."""
    merged = {key: dict(value) for key, value in base.items()}
    for table, values in extra.items():
        merged.setdefault(table, {}).update(values)
    return merged


def load_registry_data() -> tuple[dict[str, Any], list[Path]]:
    """The project's registry.toml merged with the user's, and the files read."""
    project = resources.files("zoo") / "registry.toml"
    data = read_registry_file("registry.toml (zoo package)", project.read_text(encoding="utf-8"))
    files = [Path(str(project))]
    user = zoo_home() / "registry.toml"
    if user.is_file():
        data = merge_registry_data(data, read_registry_file(user))
        files.append(user)
    return data, files


@dataclass
class PolicyEntry:
    """A freeze policy registered by a plugin: `factory(argument)` builds it."""

    name: str
    factory: Callable[..., Any]
    source: str
    help: str = ""


@dataclass
class Registry:
    """Backbones, aliases, policies and registry data, as the installed plugins define them."""

    backbones: dict[str, Backbone] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    policies: dict[str, PolicyEntry] = field(default_factory=dict)
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def add_backbone(self, spec: Backbone, source: str) -> None:
        """Validate and add one spec; raise InvalidBackbone naming the plugin."""
        if not isinstance(spec, Backbone):
            raise InvalidBackbone(f"plugin '{source}' registered {type(spec).__name__}, not a Backbone")
        spec = dataclasses.replace(spec, source=source)
        check_spec(spec)
        if spec.name in self.backbones:
            other = self.backbones[spec.name].source
            raise InvalidBackbone(f"plugin '{source}': backbone '{spec.name}' is already registered by '{other}'")
        self.backbones[spec.name] = spec

    def resolve(self, name: str) -> str:
        """The backbone name behind an alias (or the name itself)."""
        return self.aliases.get(name, name)

    def get(self, name: str) -> Backbone:
        """The spec called `name` (or an alias of it); UnknownBackbone with suggestions otherwise.

        A spec registered with `resolve` and no groups yet (an ONNX model-zoo entry) is
        completed first: that may download and convert a file. `list()` never does.
        """
        real = self.resolve(name)
        if real in self.backbones:
            spec = self.backbones[real]
            if spec.resolve and not spec.groups:
                spec = self._complete(spec)
            return spec
        candidates = list(self.backbones) + list(self.aliases)
        raise UnknownBackbone(name, difflib.get_close_matches(name, candidates, n=1, cutoff=0.6))

    def _complete(self, spec: Backbone) -> Backbone:
        from zoo.models import load_callable

        done = load_callable(spec.resolve, spec)(spec)
        done = dataclasses.replace(done, source=spec.source, resolve=None)
        check_spec(done)
        self.backbones[spec.name] = done
        return done

    def list(self, pattern: str | None = None, tag: str | None = None, source: str | None = None) -> list[Backbone]:
        """Backbones sorted by name, filtered like timm's `list_models`.

        Args:
            pattern: fnmatch pattern on the name, e.g. "resnet*" (a plain word matches as a substring).
            tag: keep backbones carrying this tag.
            source: keep backbones registered by this plugin.

        Example:
            >>> [b.name for b in get_registry().list("resnet1*")]
            ['resnet101', 'resnet152', 'resnet18']
        """
        if pattern and not any(ch in pattern for ch in "*?["):
            pattern = f"*{pattern}*"
        return [
            spec
            for name, spec in sorted(self.backbones.items())
            if (not pattern or fnmatch.fnmatchcase(name, pattern.lower()))
            and (not tag or tag in spec.tags)
            and (not source or spec.source == source)
        ]

    def apply_data(self, data: dict[str, Any], files: Iterable[Path] = ()) -> None:
        """Aliases and per-backbone overrides from registry.toml data."""
        self.data, self.files = data, list(files)
        for alias, target in data.get("aliases", {}).items():
            if not isinstance(target, str):
                raise RegistryError(f"registry.toml [aliases]: '{alias}' must name a backbone")
            self.aliases[alias] = target
        for name, fields in data.get("backbones", {}).items():
            if name not in self.backbones:
                log.warning("registry.toml [backbones.%s]: no such backbone; override ignored", name)
                continue
            self.backbones[name] = _override(self.backbones[name], fields)


def _override(spec: Backbone, fields: dict[str, Any]) -> Backbone:
    unknown = set(fields) - _OVERRIDABLE
    if unknown:
        raise RegistryError(
            f"registry.toml [backbones.{spec.name}]: cannot override "
            f"{', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_OVERRIDABLE))}"
        )
    changes = dict(fields)
    if "preprocess" in changes:
        pre = {k: tuple(v) if isinstance(v, list) else v for k, v in changes["preprocess"].items()}
        try:
            changes["preprocess"] = dataclasses.replace(spec.preprocess, **pre)
        except TypeError as exc:
            raise RegistryError(f"registry.toml [backbones.{spec.name}.preprocess]: {exc}") from None
    if "tags" in changes:
        changes["tags"] = tuple(changes["tags"])
    new = dataclasses.replace(spec, **changes)
    try:
        check_spec(new)
    except InvalidBackbone as exc:
        raise RegistryError(f"registry.toml [backbones.{spec.name}]: {exc}") from None
    return new


def build_registry(extra_plugins: Iterable[tuple[str, object]] = ()) -> Registry:
    """Load every installed plugin, plus `extra_plugins` as (name, module) pairs, and collect what each registers."""
    pm, infos = make_manager()
    for name, plugin in extra_plugins:
        register_module(pm, infos, plugin, name)
    registry = Registry(plugins=infos)
    collect(registry, pm)
    data, files = load_registry_data()
    registry.apply_data(data, files)
    return registry


def collect(registry: Registry, pm) -> None:
    """Call each plugin's hooks one at a time, so each failure is pinned on its plugin."""
    for impl in pm.hook.register_backbones.get_hookimpls():
        info = registry.plugins.setdefault(impl.plugin_name, PluginInfo(name=impl.plugin_name))

        def register(spec: Backbone, _source=impl.plugin_name, _info=info) -> None:
            try:
                registry.add_backbone(spec, _source)
                _info.backbones.append(spec.name)
            except InvalidBackbone as exc:
                _info.errors.append(str(exc))
                log.warning("%s; skipped", exc)

        _call_hook(impl, info, register)
    for impl in pm.hook.register_policies.get_hookimpls():
        info = registry.plugins.setdefault(impl.plugin_name, PluginInfo(name=impl.plugin_name))

        def register_policy(
            name: str, factory: Callable[..., Any], help: str = "", _source=impl.plugin_name, _info=info
        ) -> None:
            if name in registry.policies:
                msg = f"plugin '{_source}': policy '{name}' is already registered by '{registry.policies[name].source}'"
                _info.errors.append(msg)
                log.warning("%s; skipped", msg)
                return
            registry.policies[name] = PolicyEntry(name, factory, _source, help)
            _info.policies.append(name)

        _call_hook(impl, info, register_policy)


def _call_hook(impl, info: PluginInfo, register: Callable[..., None]) -> None:
    try:
        impl.function(register=register)
    except Exception as exc:  # a third party's bug must not stop zoo
        info.errors.append(f"{impl.function.__name__} raised {type(exc).__name__}: {exc}")
        log.warning("plugin '%s' failed in %s: %s: %s", info.name, impl.function.__name__, type(exc).__name__, exc)


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    return _REGISTRY


def reset_registry() -> None:
    """Forget the registry (after installing a plugin, or between tests)."""
    global _REGISTRY
    _REGISTRY = None


def get_backbone(name: str) -> Backbone:
    """Shortcut: `get_registry().get(name)`."""
    return get_registry().get(name)
