"""The layout's rules, checked on the source: no import cycle between kmemopt's modules at module level,
and nothing but the entry points imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kmemopt"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.Module, module: str, *, top_level_only: bool) -> set[str]:
    """kmemopt modules `tree` imports (`from kmemopt.x import y` counts x.y when y is a module)."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kmemopt")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("kmemopt"):
            found.add(node.module or "")
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    sources = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in sources.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {m for m in _imports(tree, name, top_level_only=top_level_only) if m in sources and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_at_module_level():
    graph = _graph(top_level_only=True)
    assert len(graph) > 40  # the walk saw the package
    assert _cycle(graph) is None


def test_only_the_entry_points_import_the_cli():
    graph = _graph(top_level_only=False)  # deferred imports inside functions count here
    importers = sorted(m for m, deps in graph.items() if "kmemopt.cli" in deps)
    assert importers == ["kmemopt.__main__"]


def test_commands_do_not_import_each_other_or_reach_into_private_cli_helpers():
    graph = _graph(top_level_only=False)
    commands = {m for m in graph if m.startswith("kmemopt.commands.") and not m.endswith("_common")}
    for m in commands:
        assert not (graph[m] & (commands - {m})), m
