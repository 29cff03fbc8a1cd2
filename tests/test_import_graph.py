"""No circles between tokenworks modules: dependencies point one way.

Every import counts, wherever it stands (top level, inside a function, under `if TYPE_CHECKING:`):
a lazy or type-only import hides a circle from Python's loader, not from a reader.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Collection
from pathlib import Path

import tokenworks

ROOT = Path(tokenworks.__file__).parent


def module_names() -> dict[str, Path]:
    """Dotted name -> file, for every module under tokenworks/ (a package is its __init__.py)."""
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(module: str, path: Path, modules: Collection[str]) -> set[str]:
    """The tokenworks modules `module` imports anywhere in its file, with the packages Python runs on the way."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from ..x import y` inside package a.b is a.x
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # `from a.b import c` imports the module a.b.c when there is one, else the name c of a.b.
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    edges = set()
    for target in targets:
        parts = target.split(".")
        # `import a.b.c` also runs a/__init__ and a/b/__init__.
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            # A module's own ancestor packages are no circle: Python has run them before the module.
            if name in modules and name != module and not module.startswith(name + "."):
                edges.add(name)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {module: imported(module, path, modules) for module, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module, iteratively (no recursion limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:  # every successor seen: close the node
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each circle as 'a -> b -> a': for every import inside a component, the shortest circle through it."""
    found = set()
    for component in strongly_connected(graph):
        members = set(component)
        for start in component:
            for first in sorted(graph[start] & members):
                # Shortest path first -> start within the component (breadth first).
                came_from = {first: None}
                queue = deque([first])
                while start not in came_from:
                    node = queue.popleft()
                    for successor in sorted(graph[node] & members):
                        came_from.setdefault(successor, node)
                        queue.append(successor)
                path, node = [], start
                while node is not None:
                    path.append(node)
                    node = came_from[node]
                loop = [start, *reversed(path)]  # start -> first -> ... -> start
                turn = loop.index(min(loop[:-1]))  # the same circle from any start reads the same
                found.add(" -> ".join(loop[turn:-1] + loop[:turn] + [loop[turn]]))
    return sorted(found)


def test_the_finder_sees_lazy_type_only_and_long_circles(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert cycles(graph) == ["a -> b -> c -> a", "d -> e -> d"]
    source = tmp_path / "late.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tokenworks.bench.sweep import SweepPlan\n"
        "def later():\n    from tokenworks.bench import report\n",
        encoding="utf-8",
    )
    modules = {"tokenworks", "tokenworks.bench", "tokenworks.bench.report", "tokenworks.bench.sweep"}
    found = imported("tokenworks.data.late", source, modules)
    assert found == {"tokenworks.bench", "tokenworks.bench.report", "tokenworks.bench.sweep"}


def test_no_module_imports_itself_around_a_circle() -> None:
    found = cycles(import_graph())
    assert not found, "import circles (move the shared piece down, or the caller up):\n" + "\n".join(found)
