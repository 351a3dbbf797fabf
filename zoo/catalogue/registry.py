"""The registry: every backbone the installed plugins provide, plus registry.toml data.

Nothing here imports torch: listing and looking up backbones reads plugin data
only. Building a model is `zoo.model.build.create_model`.

Data comes from two `registry.toml` files, the project's (shipped in the
package) and the user's (`$ZOO_HOME/registry.toml`), which may add aliases,
change defaults and override a backbone's data fields (and put mirrors in front
of downloads: `[mirrors]`, read by zoo.catalogue.sources). The registry applies
all of it, so every lookup sees the same spec.
"""

from __future__ import annotations

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

from zoo.catalogue.backbone import Backbone, Preprocess, load_callable, with_overrides
from zoo.catalogue.plugins import PluginInfo, Plugins, get_plugins, load_plugins
from zoo.core.errors import InvalidBackbone, RegistryError, UnknownBackbone

log = logging.getLogger(__name__)

_OVERRIDABLE = {"default_weights", "tags", "description", "atol", "min_input_size", "preprocess"}
_TOP_LEVEL = {"aliases", "defaults", "backbones", "policies", "onnx", "mirrors"}
_DEFAULT_WEIGHTS = ("default", "none")


def zoo_home() -> Path:
    """Where user data lives: $ZOO_HOME, else $XDG_DATA_HOME/zoo, else ~/.local/share/zoo."""
    if home := os.environ.get("ZOO_HOME"):
        return Path(home).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "zoo"


def user_registry_file() -> Path:
    return zoo_home() / "registry.toml"


def read_registry_file(path: Path | str, text: str | None = None) -> dict[str, Any]:
    """Parse one registry.toml, checking its top-level tables."""
    try:
        data = tomllib.loads(text if text is not None else Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
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


def project_registry_file() -> Path:
    return Path(str(resources.files("zoo") / "registry.toml"))


def load_registry_data() -> tuple[dict[str, Any], list[Path]]:
    """The project's registry.toml merged with the user's, and the files read."""
    project = project_registry_file()
    data = read_registry_file("registry.toml (zoo package)", project.read_text(encoding="utf-8"))
    files = [project]
    user = user_registry_file()
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
    hooks: Plugins | None = None  # the plugins, for hooks called later (`on_run_event`)

    def add_backbone(self, spec: Backbone, source: str) -> None:
        """Validate and add one spec; raise InvalidBackbone naming the plugin."""
        if not isinstance(spec, Backbone):
            raise InvalidBackbone(f"plugin '{source}' registered {type(spec).__name__}, not a Backbone")
        spec = with_overrides(spec, source=source)
        if spec.name in self.backbones:
            other = self.backbones[spec.name].source
            raise InvalidBackbone(f"plugin '{source}': backbone '{spec.name}' is already registered by '{other}'")
        self.backbones[spec.name] = spec

    def canonical(self, name: str) -> str:
        """The backbone name behind an alias (or the name itself)."""
        return self.aliases.get(name, name)

    def get(self, name: str) -> Backbone:
        """The spec called `name` (or an alias of it); UnknownBackbone with suggestions otherwise.

        A spec registered with `resolve` and no groups yet (an ONNX model-zoo entry) is
        completed first: that may download and convert a file. `list()` never does.
        """
        real = self.canonical(name)
        if real in self.backbones:
            spec = self.backbones[real]
            if spec.resolve and not spec.groups:
                spec = self._complete(spec)
            return spec
        if real != name:
            raise RegistryError(
                f"alias '{name}' ({self._alias_file(name)}) names '{real}', which is not a backbone; "
                "fix or remove the alias"
            )
        raise UnknownBackbone(name, self.suggest(name))

    def suggest(self, name: str) -> list[str]:
        """Close names: the same name in a plugin's namespace first (`resnet18d` -> `timm/resnet18d`)."""
        namespaced = sorted(n for n in self.backbones if "/" in n and n.split("/", 1)[1] == name)
        if namespaced:
            return namespaced[:2]
        candidates = list(self.backbones) + [a for a, target in self.aliases.items() if target in self.backbones]
        tails = {n.split("/", 1)[1]: n for n in self.backbones if "/" in n}
        found = difflib.get_close_matches(name, candidates + list(tails), n=1, cutoff=0.6)
        return [tails.get(f, f) if f not in self.backbones else f for f in found]

    def _alias_file(self, name: str) -> str:
        user = user_registry_file()
        if user.is_file() and name in read_registry_file(user).get("aliases", {}):
            return str(user)
        return "registry.toml"

    def _complete(self, spec: Backbone) -> Backbone:
        done = load_callable(spec.resolve, spec)(spec)
        done = with_overrides(done, source=spec.source, resolve=None)
        self.backbones[spec.name] = self._with_data(done)
        return self.backbones[spec.name]

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
        """Aliases, per-backbone overrides and [defaults] from registry.toml data."""
        self.data, self.files = data, list(files)
        defaults = data.get("defaults", {})
        unknown = set(defaults) - {"weights", "demo"}
        if unknown:
            raise RegistryError(
                f"registry.toml [defaults]: unknown key(s) {', '.join(sorted(unknown))}; allowed: demo, weights"
            )
        if defaults.get("weights", "default") not in _DEFAULT_WEIGHTS:
            raise RegistryError(f"registry.toml [defaults] weights = {defaults['weights']!r}: use 'default' or 'none'")
        from zoo.catalogue.sources import mirror_rules

        mirror_rules(data)  # a malformed [mirrors] fails here, named, not at the first download
        for alias, target in data.get("aliases", {}).items():
            if not isinstance(target, str):
                raise RegistryError(f"registry.toml [aliases]: '{alias}' must name a backbone")
            if alias in self.backbones:
                log.warning(
                    "registry.toml [aliases]: '%s' is the name of a backbone (%s); the alias to '%s' is ignored",
                    alias,
                    self.backbones[alias].source,
                    target,
                )
                continue
            self.aliases[alias] = target
        for name, fields in data.get("backbones", {}).items():
            if name not in self.backbones:
                log.warning("registry.toml [backbones.%s]: no such backbone; override ignored", name)
                continue
            _check_override(name, fields)
        for name in list(self.backbones):
            self.backbones[name] = self._with_data(self.backbones[name])

    def _with_data(self, spec: Backbone) -> Backbone:
        """A spec with the registry data applied: its [backbones.NAME] overrides, then [defaults] weights."""
        fields = self.data.get("backbones", {}).get(spec.name)
        if fields:
            spec = _override(spec, fields)
        if self.data.get("defaults", {}).get("weights") == "none" and spec.default_weights is not None:
            spec = with_overrides(spec, default_weights=None)
        return spec


def _check_override(name: str, fields: dict[str, Any]) -> None:
    unknown = set(fields) - _OVERRIDABLE
    if unknown:
        raise RegistryError(
            f"registry.toml [backbones.{name}]: cannot override "
            f"{', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_OVERRIDABLE))}"
        )


def _override(spec: Backbone, fields: dict[str, Any]) -> Backbone:
    _check_override(spec.name, fields)
    changes = dict(fields)
    if "preprocess" in changes:
        try:
            changes["preprocess"] = Preprocess.from_dict({**spec.preprocess.to_dict(), **changes["preprocess"]})
        except TypeError as exc:
            raise RegistryError(f"registry.toml [backbones.{spec.name}.preprocess]: {exc}") from None
    if "tags" in changes:
        changes["tags"] = tuple(changes["tags"])
    try:
        return with_overrides(spec, **changes)
    except InvalidBackbone as exc:
        raise RegistryError(f"registry.toml [backbones.{spec.name}]: {exc}") from None


def build_registry(extra_plugins: Iterable[tuple[str, object]] = (), plugins: Plugins | None = None) -> Registry:
    """Load every installed plugin (or use `plugins`), plus `extra_plugins` as (name, module) pairs, and collect
    what each registers."""
    data, files = load_registry_data()  # first: a malformed registry.toml is the user's file, not a plugin's fault
    plugins = plugins or load_plugins(tuple(extra_plugins))
    registry = Registry(plugins=plugins.infos, hooks=plugins)
    collect(registry, plugins)
    registry.apply_data(data, files)
    return registry


def collect(registry: Registry, plugins: Plugins) -> None:
    """Call each plugin's hooks one at a time, so each failure is pinned on its plugin."""

    def backbones(info: PluginInfo, source: str):
        def register(spec: Backbone) -> None:
            try:
                registry.add_backbone(spec, source)
                info.backbones.append(spec.name)
            except InvalidBackbone as exc:
                info.errors.append(str(exc))
                log.warning("%s; skipped", exc)

        return register

    def policies(info: PluginInfo, source: str):
        def register(name: str, factory: Callable[..., Any], help: str = "") -> None:
            if name in registry.policies:
                msg = f"plugin '{source}': policy '{name}' is already registered by '{registry.policies[name].source}'"
                info.errors.append(msg)
                log.warning("%s; skipped", msg)
                return
            registry.policies[name] = PolicyEntry(name, factory, source, help)
            info.policies.append(name)

        return register

    plugins.register_with("register_backbones", backbones)
    plugins.register_with("register_policies", policies)


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry(plugins=get_plugins())  # the same plugins the CLI took its commands from
    return _REGISTRY


def set_registry(registry: Registry | None) -> None:
    """Install `registry` as the process-wide one (None: build again on next use)."""
    global _REGISTRY
    _REGISTRY = registry


def reset_registry() -> None:
    """Forget the registry (after installing a plugin or importing a model, or between tests)."""
    set_registry(None)


def get_backbone(name: str) -> Backbone:
    """Shortcut: `get_registry().get(name)`."""
    return get_registry().get(name)
