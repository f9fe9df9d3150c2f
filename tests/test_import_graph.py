"""Our modules import each other without a cycle: a layer that needs a lower one's helper imports it, and
a helper two modules share lives below both. An import inside a function counts too: it hides a cycle
from Python, not from the reader."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("daemon", "workflows", "parsers")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(("subdomaind", *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Each of our modules -> the modules of ours it imports anywhere in its text (top level or inside a
    function). `from a.b import c` names module a.b.c when that is a module, else a.b."""
    modules = _modules()

    def ours(name: str) -> str | None:
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(ours(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(ours(f"{node.module}.{a.name}") for a in node.names)
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_function_level_import() -> None:
    # The shape the handlers and the intake once had: one imports the other at the top, the other
    # imports back inside a function.
    graph = {"workflows.inbound": {"workflows.handlers"}, "workflows.handlers": {"workflows.inbound"},
             "workflows.store": set()}
    assert cycles(graph) == [["workflows.handlers", "workflows.inbound"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_graph_reads_imports_inside_functions() -> None:
    graph = import_graph()
    # workflows/handlers.py imports the engine at the top; parsers/__init__.py imports its classifier
    # inside `parse` (the readers load on first use).
    assert "subdomaind.workflows.engine" in graph["subdomaind.workflows.handlers"]
    assert "subdomaind.parsers.classify" in graph["subdomaind.parsers"]


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles among our modules: " + "; ".join(" <-> ".join(c) for c in found)



def test_mail_parser_is_used_through_its_public_api() -> None:
    # parsers/mime.py states mail-parser's one role (defect names, a fallback Date); no class of ours
    # extends it, so none can override its private methods.
    subclasses = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.startswith("mailparser") or b == "MailParser" for b in bases):
                    subclasses.append(f"{name}.{node.name}")
    assert not subclasses, f"mail-parser subclassed: {subclasses}"
