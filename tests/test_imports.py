"""The package's import graph has no circle: config at the bottom, the trainer at the top.

The graph is read statically (ast) from src/remix_rft, so the test needs no heavy import and names the circle it
finds. Two graphs: the imports that run when a module is imported (top level, outside `if TYPE_CHECKING:`), which must
be acyclic for any import order to work; and every import statement wherever it sits (inside functions, type-only),
which must be acyclic too, so that no module reaches back to one that depends on it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "src" / "remix_rft"


def module_files() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _import_nodes(body: list[ast.stmt], everywhere: bool):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if everywhere or not _is_type_checking(node):
                yield from _import_nodes(node.body, everywhere)
                yield from _import_nodes(node.orelse, everywhere)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _import_nodes(block, everywhere)
        elif everywhere and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.With,
                                               ast.For, ast.While)):
            yield from _import_nodes(node.body, everywhere)
            yield from _import_nodes(getattr(node, "orelse", []), everywhere)


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement may load (`from a import b` may load a.b)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def import_graph(everywhere: bool) -> dict[str, set[str]]:
    """Module -> the package modules it imports (importing a.b.c also runs a and a.b)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in files.items():
        deps = set()
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8")).body, everywhere):
            for name in _targets(module, is_package, node):
                parts = name.split(".")
                deps.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        # a package's own parents are already being imported when it runs: not an edge
        graph[module] = {d for d in deps if d in files and d != module and not module.startswith(d + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, colours white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_reads_the_package():
    graph = import_graph(everywhere=True)
    assert len(graph) > 40
    assert "remix_rft.config" in graph["remix_rft.trainer"]
    assert "remix_rft.config_parsing" in graph["remix_rft.config"]


def test_no_import_cycle_at_import_time():
    cycle = find_cycle(import_graph(everywhere=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_even_through_lazy_or_type_only_imports():
    cycle = find_cycle(import_graph(everywhere=True))
    assert cycle is None, "import cycle (counting imports inside functions and under TYPE_CHECKING): " + \
        " -> ".join(cycle)


def test_config_imports_no_engine_and_no_schedule():
    graph = import_graph(everywhere=True)
    reached, todo = set(), ["remix_rft.config"]
    while todo:
        for dep in graph[todo.pop()] - reached:
            reached.add(dep)
            todo.append(dep)
    assert not {"remix_rft.rollout", "remix_rft.schedule", "remix_rft.trainer", "remix_rft.models"} & reached


def test_engine_names_match_the_light_table():
    from remix_rft.config import ROLLOUT_ENGINES
    from remix_rft.rollout import ENGINES

    assert set(ENGINES) == set(ROLLOUT_ENGINES)


@pytest.mark.parametrize("module", sorted(module_files()))
def test_every_module_imports(module):
    importlib.import_module(module)  # optional packages (vllm, trl) are imported inside functions, never at the top
