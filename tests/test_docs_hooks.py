"""Guard: every hook has a heading in docs/plugins.md and a test that uses it."""

from __future__ import annotations

import inspect
from pathlib import Path

from zoo.catalogue import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "zoo_spec")]


def test_hooks_are_found():
    assert set(HOOKS) >= {"register_backbones", "register_policies"}


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
