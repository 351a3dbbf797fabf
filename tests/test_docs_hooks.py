"""Guard: every hook has a heading in docs/plugins.md and a test that uses it."""

from __future__ import annotations

import inspect
from pathlib import Path

from zoo import hookspecs

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
    files = [*(ROOT / "tests").glob("test_*.py"), ROOT / "tests" / "conftest.py"]
    sources = "\n".join(p.read_text() for p in files if p.name != Path(__file__).name)
    missing = [hook for hook in HOOKS if f"def {hook}(" not in sources]
    assert not missing, f"hooks no test implements: {missing}"
