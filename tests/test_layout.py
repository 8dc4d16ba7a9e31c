"""The package's shape: no import cycle among the modules of ``dht``.

Every import counts, those under ``TYPE_CHECKING`` too: a cycle hidden
there still means two modules that cannot be read alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dht"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The ``dht`` modules ``path`` imports (``from .x import y`` counts
    ``x.y`` when that is a module, else ``x``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in modules and module != name}


def _graph() -> dict[str, set[str]]:
    paths = [p for p in PACKAGE.rglob("*.py") if "fb" not in p.relative_to(PACKAGE).parts]
    modules = {_module_name(path) for path in paths}
    return {_module_name(path): _imports(path, modules) for path in paths}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None. Imports of a package's ``__init__`` by its
    own modules are not edges (they import siblings, not the package)."""
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if module.startswith(target + "."):
                continue  # a package's own __init__
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


@pytest.mark.timeout(30)
def test_the_package_has_no_import_cycle() -> None:
    graph = _graph()
    assert "dht.core.engine" in graph and "dht.core.operations" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


@pytest.mark.timeout(30)
def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]


@pytest.mark.timeout(30)
def test_operations_and_key_transfer_do_not_import_the_engine() -> None:
    graph = _graph()
    for module in ("dht.core.operations", "dht.core.transfer", "dht.core.maintenance"):
        assert "dht.core.engine" not in graph[module], module
