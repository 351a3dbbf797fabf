"""The house as docs/architecture.md draws it: layers, no import loops, no core -> plugin import, torch-free modules.

Imports are read with `ast` (function-local ones too), so a lazy import against the layers fails as well.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zoo"
TORCH = {"torch", "torchvision", "onnx2torch"}


def _map() -> dict[str, tuple[int, bool]]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text.split("<!-- modules:begin -->")[1].split("<!-- modules:end -->")[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit():
            rows[cells[1].replace("\\_", "_")] = (int(cells[0]), cells[2] == "yes")
    return rows


MAP = _map()


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem  # zoo/cli/*.py is the module `cli`


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at top level) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found += [(name, id(node) in top) for name in names]
    return found


def _zoo_target(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "zoo" or len(parts) == 1:
        return None
    return parts[1] if parts[1] in MAP else None


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_on_the_map():
    modules = {_module_of(p) for p in FILES}
    assert modules == set(MAP), f"not on the map: {modules - set(MAP)}; on the map, gone: {set(MAP) - modules}"


def test_imports_go_down_the_layers_without_loops():
    edges: dict[str, set[str]] = {m: set() for m in MAP}
    for path in FILES:
        me = _module_of(path)
        for name, _ in _imports(path):
            target = _zoo_target(name)
            if target is None or target == me:
                continue
            assert MAP[target][0] <= MAP[me][0], (
                f"{path.relative_to(ROOT)} (layer {MAP[me][0]}) imports zoo.{target} (layer {MAP[target][0]})"
            )
            edges[me].add(target)
    # no loops, also within a layer
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            assert state.get(nxt) != 1, f"import loop: {' -> '.join([*trail, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in edges:
        if module not in state:
            visit(module, [])


def test_the_core_never_imports_a_plugin():
    for path in FILES:
        for name, _ in _imports(path):
            assert not re.match(r"zoo_\w+", name), f"{path.relative_to(ROOT)} imports the plugin {name}"


def test_torch_free_modules_import_no_torch_at_import_time():
    for path in FILES:
        me = _module_of(path)
        if MAP[me][1]:
            continue
        for name, top in _imports(path):
            if not top:
                continue
            assert name.split(".")[0] not in TORCH, f"{path.relative_to(ROOT)} (torch: no) imports {name}"
            target = _zoo_target(name)
            assert target is None or not MAP[target][1], (
                f"{path.relative_to(ROOT)} (torch: no) imports zoo.{target}, which imports torch"
            )


def test_every_package_is_in_the_distribution():
    """setuptools is given an explicit package list: a new sub-package must be added to it, or a wheel lacks it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert packages <= listed, f"missing from pyproject.toml [tool.setuptools] packages: {packages - listed}"
