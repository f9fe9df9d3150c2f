"""Layers point down: parsers <- workflows <- daemon, read from the import graph of the source itself.

Every import in a module counts, also one inside a function: an import the interpreter meets later is still
a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each layer may import of ours; a package not named here is above it.
LAYERS = {"parsers": {"parsers"}, "workflows": {"parsers", "workflows"}, "daemon": {"parsers", "workflows", "daemon"}}


def _modules(package: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


def _imports(path: Path, package: str) -> Iterator[tuple[ast.stmt, str, bool]]:
    """Each import of the module: the node, the top-level package it names, and whether it is in a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.stmt, str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child, alias.name.split(".")[0], in_function
            elif isinstance(child, ast.ImportFrom):
                # A relative import stays inside the module's own package.
                yield child, package if child.level else (child.module or "").split(".")[0], in_function
            yield from walk(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    yield from walk(tree, False)


def _upward(package: str, root: Path = ROOT) -> list[str]:
    out = []
    for path in _modules(package, root):
        for node, target, _ in _imports(path, package):
            if target in LAYERS and target not in LAYERS[package]:
                out.append(f"{path.relative_to(root).as_posix()}:{node.lineno}: imports {target}")
    return out


@pytest.mark.parametrize("package", ["parsers", "workflows"])
def test_no_layer_imports_a_higher_one(package: str) -> None:
    assert _upward(package) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    # The walker must find an upward import at any depth and in any form, or the test above could never fail.
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "probe.py").write_text(
        "import daemon.cli\nfrom . import store\n\n\ndef f():\n    if True:\n        from daemon.config import Config\n",
        encoding="utf-8")
    (tmp_path / "parsers").mkdir()
    (tmp_path / "parsers" / "probe.py").write_text("from workflows import store\n", encoding="utf-8")
    assert _upward("workflows", tmp_path) == ["workflows/probe.py:1: imports daemon", "workflows/probe.py:7: imports daemon"]
    assert _upward("parsers", tmp_path) == ["parsers/probe.py:1: imports workflows"]
