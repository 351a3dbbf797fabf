"""Guard: every hook has a heading in docs/plugins.md and a test that uses it."""

from __future__ import annotations

import inspect
from pathlib import Path

from zoo.catalogue import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "zoo_spec")]


def test_hooks_are_found(monkeypatch):
    """HOOKS, what the two guards below go through, is exactly the set of hooks zoo's plugin manager declares
    (zoo.catalogue.plugins.load_plugins), and every hook-like heading (`## snake_case`) of docs/plugins.md names
    one of them: a hook added, removed or renamed on one side only, or HOOKS finding nothing, fails here."""
    import re

    from zoo.catalogue.plugins import LOAD_ENV, load_plugins

    monkeypatch.setenv(LOAD_ENV, "")  # the hooks zoo declares, not the plugins installed here
    manager = load_plugins().pm
    declared = {name for name in vars(manager.hook) if getattr(manager.hook, name).spec is not None}
    assert set(HOOKS) == declared and set(HOOKS) >= {"register_backbones", "register_policies"}
    headings = [line[3:].strip() for line in (ROOT / "docs" / "plugins.md").read_text().splitlines()
                if line.startswith("## ")]  # fmt: skip
    stale = [h for h in headings if re.fullmatch(r"[a-z]+(_[a-z]+)+", h) and h not in HOOKS]
    assert not stale, f"docs/plugins.md has a heading for a hook zoo does not declare: {stale}"


def test_every_hook_is_documented():
    headings = {
        line[3:].strip() for line in (ROOT / "docs" / "plugins.md").read_text().splitlines() if line.startswith("## ")
    }
    missing = [hook for hook in HOOKS if hook not in headings]
    assert not missing, f"hooks without a '## name' heading in docs/plugins.md: {missing}"


def test_every_hook_has_a_test():
    """A test module (not conftest's shared fixture plugin) implements each hook, and names it in a test's name."""
    files = [p for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name]
    for hook in HOOKS:
        users = [p.name for p in files if f"def {hook}(" in p.read_text()]
        assert users, f"no test module implements the hook {hook}"
        tested = [p.name for p in files if f"def test_{hook}" in p.read_text()]
        assert tested, f"no test is named after the hook {hook} (def test_{hook}...)"
