"""The house as docs/architecture.md draws it, checked against the code.

The folder table in docs/architecture.md says, for each folder of zoo/ (and each top-level module), which
folders it may import and whether it may import torch at import time. These tests read every import with
`ast` (function-local ones too, so a lazy import against the rules fails as well) and hold the code to
that table: no folder imports one it may not, no import loop between folders or between modules, no
plugin import, torch-free folders stay torch-free at import time (worked out from the code, through zoo's
own imports), each folder's `__init__.py` states its rule in the same words, and the size limits hold.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zoo"
TORCH = {"torch", "torchvision", "onnx2torch", "timm"}
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def _table(name: str) -> list[list[str]]:
    block = DOC.split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]
    rows = []
    for line in block.splitlines():
        cells = [c.strip().replace("\\_", "_").strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] and not set(cells[0]) <= set("-: ") and cells[0] != "folder":
            rows.append(cells)
    return rows


def _folders() -> dict[str, tuple[set[str] | None, bool]]:
    """folder or top-level module -> (the folders it may import, None for any; may it import torch at import)."""
    rules = {}
    for cells in _table("folders"):
        allowed = cells[1]
        may = None if allowed == "anything" else {a.strip().strip("`") for a in allowed.split(",") if a.strip("- ")}
        rules[cells[0].removesuffix("/")] = (may, cells[2] == "yes")
    return rules


RULES = _folders()
FILES = sorted(PACKAGE.rglob("*.py"))


def _unit(path: Path) -> str:
    """The folder a file is in, or the top-level module it is."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_module(p): p for p in FILES}


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, at top level, line) for every import in the file; `from a import b` names a.b when that
    is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            names = subs if len(subs) == len(node.names) else [node.module, *subs]
        found += [(name, id(node) in top, node.lineno) for name in names]
    return found


def _target_unit(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "zoo":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_every_folder_and_top_level_module_is_on_the_map():
    units = {_unit(p) for p in FILES}
    assert units == set(RULES), f"not on the map: {units - set(RULES)}; on the map, gone: {set(RULES) - units}"


def test_each_folder_imports_only_what_its_rule_allows():
    for path in FILES:
        me = _unit(path)
        may = RULES[me][0]
        for name, _, line in _imports(path):
            target = _target_unit(name)
            if target is None or target == me or may is None:
                continue
            allowed = sorted(may) or "nothing of zoo"
            assert target in may, f"{_where(path, line)}: {me}/ may import {allowed}, not {name}"


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*trail, node, nxt]
            if nxt not in state and (loop := visit(nxt, [*trail, node])):
                return loop
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (loop := visit(node, [])):
            return loop
    return None


def test_no_import_loop_between_folders():
    edges: dict[str, set[str]] = {}
    for path in FILES:
        me = _unit(path)
        if RULES[me][0] is None:  # cli, demo, testing and the shims sit above everything and are imported by nothing
            continue
        for name, _, _ in _imports(path):
            target = _target_unit(name)
            if target and target != me and target != "__init__":
                edges.setdefault(me, set()).add(target)
    assert _cycle(edges) is None, f"import loop between folders: {' -> '.join(_cycle(edges))}"


def test_no_import_loop_between_modules_at_import_time():
    edges: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        for name, top, _ in _imports(path):
            if top and name in MODULES and name != module and not module.startswith(name + "."):
                edges.setdefault(module, set()).add(name)
    assert _cycle(edges) is None, f"import loop: {' -> '.join(_cycle(edges))}"


def test_the_core_never_imports_a_plugin():
    for path in FILES:
        for name, _, line in _imports(path):
            assert not re.match(r"zoo_\w+", name), f"{_where(path, line)} imports the plugin {name}"


def _imports_torch() -> dict[str, str]:
    """module -> the import chain by which importing it imports torch, worked out from the code."""
    chains: dict[str, str] = {}
    direct = {m: [(n, t) for n, t, _ in _imports(p)] for m, p in MODULES.items()}
    for module, names in direct.items():
        for name, top in names:
            if top and name.split(".")[0] in TORCH:
                chains[module] = name
    changed = True
    while changed:
        changed = False
        for module, names in direct.items():
            if module in chains:
                continue
            for name, top in names:
                parents = [".".join(name.split(".")[:i]) for i in range(2, name.count(".") + 2)]
                hit = next((p for p in parents if p in chains and p != module), None)
                if top and hit:
                    chains[module] = f"{hit} -> {chains[hit]}"
                    changed = True
                    break
    return chains


def test_torch_free_folders_import_no_torch_at_import_time():
    chains = _imports_torch()
    for module, path in MODULES.items():
        if not RULES[_unit(path)][1]:
            assert module not in chains, f"{path.relative_to(ROOT)} imports torch at import time: {chains[module]}"


def test_each_folder_docstring_states_its_rule():
    for folder, (may, _) in RULES.items():
        init = PACKAGE / folder / "__init__.py"
        if not init.exists() or may is None:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        stated = re.search(r"^Imports (.*?)(?:;|\.$)", doc, re.M)
        assert stated, f"{init.relative_to(ROOT)}: the docstring has no 'Imports ...' line"
        named = set(re.findall(r"zoo\.(\w+)", stated.group(1)))
        if stated.group(1).startswith("nothing"):
            named = set()
        assert named == may, f"{init.relative_to(ROOT)} says it imports {sorted(named)}; docs say {sorted(may)}"


def test_every_package_is_in_the_distribution():
    """setuptools is given an explicit package list: a new sub-package must be added to it, or a wheel lacks it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert packages <= listed, f"missing from pyproject.toml [tool.setuptools] packages: {packages - listed}"


def _sizes():
    """(file, what, lines) of every module and function of zoo/ and plugins/."""
    roots = [PACKAGE, ROOT / "plugins"]
    for path in sorted(p for r in roots for p in r.rglob("*.py") if "tests" not in p.parts):
        text = path.read_text(encoding="utf-8")
        rel = str(path.relative_to(ROOT))
        yield rel, "module", text.count("\n") + 1
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield rel, node.name, node.end_lineno - node.lineno + 1


def test_no_module_over_400_lines_and_no_function_over_100_unless_named():
    named = {(cells[0], cells[1]) for cells in _table("exceptions")}
    over = [
        f"{rel} {what}: {n} lines"
        for rel, what, n in _sizes()
        if n > (400 if what == "module" else 100) and (rel, what) not in named
    ]
    assert not over, "over the size limits and not named in docs/architecture.md: " + "; ".join(over)
