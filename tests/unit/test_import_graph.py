"""streamfn's modules import each other without cycles, and the engine imports no concrete connector.

The graph is read from the source with ``ast``: every ``import`` that runs (at module level or
inside a function) is an edge; imports under ``if TYPE_CHECKING:`` are not, since they never run.
A cycle through a function-level import still counts: it only hides an order dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2] / "streamfn"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The streamfn modules ``path`` imports when it runs."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            targets.add(submodule if submodule in modules else base)
    return {target for target in targets if target in modules and target != name}


def import_graph() -> nx.DiGraph:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = nx.DiGraph()
    for path in paths:
        graph.add_node(module_name(path))
        for target in imported_modules(path, modules):
            graph.add_edge(module_name(path), target)
    return graph


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    assert graph.has_edge("streamfn.engine.pipeline", "streamfn.protocols.source")
    assert graph.has_edge("streamfn.connectors.kafka.source", "streamfn.connectors.kafka.group"), \
        "a function-level import is an edge"
    assert not graph.has_edge("streamfn.connectors.kafka.group", "streamfn.connectors.kafka.source"), \
        "a TYPE_CHECKING import is not"


def test_no_module_of_streamfn_is_part_of_an_import_cycle() -> None:
    cycles = [sorted(component) for component in nx.strongly_connected_components(import_graph())
              if len(component) > 1]
    assert cycles == []


def test_the_engine_imports_no_concrete_connector() -> None:
    graph = import_graph()
    engine = [node for node in graph if node.startswith("streamfn.engine.")]
    reached = {target for node in engine for target in graph.successors(node)}
    assert sorted(t for t in reached if t.startswith("streamfn.connectors.")) == []
