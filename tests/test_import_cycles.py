"""No import cycle between the project's modules (issue 18: modules that can be read in one direction).

The graph is built from the source with ``ast``: every module-level import of one project module by another
(``import a.b``, ``from a.b import c``, where ``a.b.c`` may itself be a module). Imports inside functions (the
lazy imports that keep ``inspector --help`` free of torch) and under ``if TYPE_CHECKING:`` (annotations
only) do not run at import time and are left out. A submodule's implicit import of its own package is not an
edge. A strongly connected component of more than one module is a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "inspector", "ui")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported_names(node: ast.stmt, modules: dict[str, Path]) -> Iterator[str]:
    """Names imported when ``node`` runs at module level."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        for child in node.orelse:
            yield from _imported_names(child, modules)
        return
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            yield full if full in modules else node.module
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt):
            yield from _imported_names(child, modules)


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports at module level."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for statement in ast.parse(path.read_text(encoding="utf-8")).body:
            for target in _imported_names(statement, modules):
                while target and target not in modules:        # "inspector.store.Store" -> "inspector.store"
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["inspector.store", "inspector.capture"])
def test_packages_are_seen_with_their_modules(package: str) -> None:
    graph = import_graph()
    children = {name for name in graph if name.startswith(package + ".")}
    assert len(children) >= 4, f"{package}: expected its modules in the graph, found {sorted(children)}"
    assert graph[package] & children, f"{package}/__init__.py should import its modules to re-export names"


def test_no_import_cycle_between_project_modules() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (module-level imports): " + "; ".join(" -> ".join(c) for c in found)
