"""slab_edge.runtime imports in one direction: no module imports another that (indirectly) imports it back.

Lazy imports inside functions count: they make cycles too (session.load used to import the backends, which
import session). Every runtime module also imports first in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import slab_edge.runtime

PACKAGE = "slab_edge.runtime"
RUNTIME_DIR = Path(slab_edge.runtime.__file__).parent
MODULES = sorted(PACKAGE if p.stem == "__init__" else f"{PACKAGE}.{p.stem}" for p in RUNTIME_DIR.glob("*.py"))


def runtime_imports(module: str) -> set[str]:
    """The runtime modules `module` imports anywhere in its source (module level or inside functions)."""
    path = RUNTIME_DIR / ("__init__.py" if module == PACKAGE else f"{module.rsplit('.', 1)[1]}.py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, (
                f"{path.name}:{node.lineno}: relative import (the package uses absolute ones)"
            )
            if node.module == PACKAGE:  # `from slab_edge.runtime import x`: the package, and x if a module
                found.add(PACKAGE)
                found.update(f"{PACKAGE}.{a.name}" for a in node.names if f"{PACKAGE}.{a.name}" in MODULES)
            elif node.module and node.module.startswith(PACKAGE + "."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name == PACKAGE or a.name.startswith(PACKAGE + "."))
    return found - {module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with an explicit path)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_runtime_import_graph_is_acyclic():
    graph = {module: runtime_imports(module) for module in MODULES}
    # submodules may use each other but never the package itself: its __init__ imports them all
    assert {m for m, deps in graph.items() if PACKAGE in deps} == set()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    backends = {f"{PACKAGE}.onnxruntime_session", f"{PACKAGE}.tensorrt_session"}
    assert graph[f"{PACKAGE}.session"] & (backends | {f"{PACKAGE}.loader"}) == set()
    assert backends <= graph[f"{PACKAGE}.loader"]
    assert all(f"{PACKAGE}.loader" not in graph[b] for b in backends)


def test_cycle_finder_finds_a_lazy_import_cycle():
    """The check above can fail: the graph main had (session.load imported the backends) is cyclic."""
    session, ort = f"{PACKAGE}.session", f"{PACKAGE}.onnxruntime_session"
    assert find_cycle({session: {ort}, ort: {session}}) in ([session, ort, session], [ort, session, ort])
    assert find_cycle({session: set(), ort: {session}}) is None


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first_in_a_fresh_interpreter(module):
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
