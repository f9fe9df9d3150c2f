"""Layers point down: parsers <- workflows <- daemon, read from the import graph of the source itself.

Every import in a module counts, also one inside a function: an import the interpreter meets later is still a
dependency. Our own modules are imported at the top, so the graph is what the top of each file says; an import
inside a function is kept only for a heavy or optional library, with a comment saying why. The command line
(daemon/cli.py) is the exception: each command loads what it runs, so `subdomaind --help` and `status` start
without the daemon, reportlab, pyHanko or matplotlib.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each layer may import of ours; a package not named here is above it.
LAYERS = {"parsers": {"parsers"}, "workflows": {"parsers", "workflows"}, "daemon": {"parsers", "workflows", "daemon"}}
OURS = set(LAYERS) | {"templates"}
PER_COMMAND = {"daemon/cli.py"}
# Modules whose function-level imports are still to be reworked; strict, so the mark fails (and must go)
# once a module is clean.
REWORKED: set[str] = set()


HEAVY = ("reportlab", "pyhanko", "matplotlib", "docx", "pdfplumber", "PIL", "lxml", "msal", "google.auth", "alembic")


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # the module named ("" for `from . import x`)
    target: str  # the top-level package named
    function: ast.AST | None  # the function it is in, None at module level


def _modules(package: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


def _package(name: str) -> str:
    """The package of ours a dotted name is in (`subdomaind.daemon.cli` -> daemon), else its top name."""
    top, _, rest = name.partition(".")
    return rest.split(".")[0] if top == "subdomaind" and rest else top


def _imports(path: Path, package: str) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))

    def walk(node: ast.AST, function: ast.AST | None) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(child.lineno, alias.name, _package(alias.name), function)
            elif isinstance(child, ast.ImportFrom):
                # A relative import stays inside the module's own package.
                module = "" if child.level else child.module or ""
                yield Import(child.lineno, module, package if child.level else _package(module), function)
            inner = child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            yield from walk(child, inner)

    yield from walk(tree, None)


def _upward(package: str, root: Path = ROOT) -> list[str]:
    out = []
    for path in _modules(package, root):
        for imp in _imports(path, package):
            if imp.target in LAYERS and imp.target not in LAYERS[package]:
                out.append(f"{path.relative_to(root).as_posix()}:{imp.line}: imports {imp.target}")
    return out


@pytest.mark.parametrize("package", ["parsers", "workflows"])
def test_no_layer_imports_a_higher_one(package: str) -> None:
    assert _upward(package) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    # The walker must find an upward import at any depth and in any form, or the test above could never fail.
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "probe.py").write_text(
        "import subdomaind.daemon.cli\nfrom . import store\n\n\ndef f():\n    if True:\n        from subdomaind.daemon.config import Config\n",
        encoding="utf-8")
    (tmp_path / "parsers").mkdir()
    (tmp_path / "parsers" / "probe.py").write_text("from subdomaind.workflows import store\n", encoding="utf-8")
    assert _upward("workflows", tmp_path) == ["workflows/probe.py:1: imports daemon", "workflows/probe.py:7: imports daemon"]
    assert _upward("parsers", tmp_path) == ["parsers/probe.py:1: imports workflows"]


@functools.cache
def _loads_heavy(module: str) -> bool:
    """Whether importing one of our modules, alone in a fresh interpreter, loads a heavy library."""
    code = f"import sys, {module}\nprint(any(m in sys.modules for m in {HEAVY!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip() == "True"


def _late_imports(path: Path, package: str) -> list[str]:
    """Function-level imports of our modules that load no heavy library, and function-level imports with no
    comment saying why (on the first such import of the function, or the line above it)."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    out, seen = [], set()
    for imp in _imports(path, package):
        if imp.function is None:
            continue
        if imp.target in OURS and rel not in PER_COMMAND and not (imp.module and _loads_heavy(imp.module)):
            out.append(f"{rel}:{imp.line}: imports {imp.target} inside a function")
        if id(imp.function) in seen or rel in PER_COMMAND:
            continue
        seen.add(id(imp.function))
        here, above = lines[imp.line - 1], lines[imp.line - 2]
        if "#" not in here and not above.strip().startswith("#"):
            out.append(f"{rel}:{imp.line}: no comment says why this import is inside a function")
    return out


def _product() -> list[object]:
    params: list[object] = []
    for package in LAYERS:
        for path in _modules(package):
            rel = path.relative_to(ROOT).as_posix()
            marks = [pytest.mark.xfail(strict=True, reason="reworked separately")] if rel in REWORKED else []
            params.append(pytest.param(path, package, id=rel, marks=marks))
    return params


@pytest.mark.parametrize(("path", "package"), _product())
def test_late_imports_are_heavy_libraries_with_a_reason(path: Path, package: str) -> None:
    assert _late_imports(path, package) == []


def test_the_command_line_starts_without_heavy_libraries() -> None:
    heavy = ("reportlab", "pyhanko", "matplotlib", "docx", "pdfplumber", "PIL", "msal", "alembic", "subdomaind.daemon.service")
    code = ("import sys\nfrom subdomaind.daemon.cli import build_parser\nbuild_parser()\n"
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == []
