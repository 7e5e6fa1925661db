"""Imports run downward: every module imports on its own, the package's import graph has no cycle, and a stage
(training, export, serving, evaluation, nir) imports the core and only the stages ``MAY_IMPORT`` names for it.

The graph is read from the source, not from a running interpreter, so an import placed inside a function
(the usual way to hide a cycle) is an edge like any other.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gee_deploy"
STAGES = ("training", "export", "serving", "evaluation", "nir")
# the stages each stage may import besides the core: NIR conversion builds ONNX graphs with export's writers;
# evaluation runs the runtimes serving serves and the NIR executor as a reference; --format nir is dispatched
# to the nir stage by gee_deploy.formats, above both
MAY_IMPORT = {"training": set(), "export": set(), "serving": set(), "evaluation": {"serving", "nir"},
              "nir": {"export"}}


def package_modules(src_root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module under ``src_root/package`` (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted((src_root / package).rglob("*.py")):
        parts = path.relative_to(src_root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom at any depth (module level, functions, classes), except under TYPE_CHECKING."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(src_root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (relative imports resolved; ``from pkg import sub`` is an
    edge to ``pkg.sub`` when that is a module, else to ``pkg``, so a package's re-exports are edges of its
    ``__init__``)."""
    modules = package_modules(src_root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]  # the package relative imports start in
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = here[:len(here) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:  # `import pkg.sub.attr`-style: the longest module prefix
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:  # shortest way back to the start, inside the component (BFS)
        start = min(component)
        parents = {start: None}
        queue = [start]
        end = None
        while queue and end is None:
            node = queue.pop(0)
            for succ in sorted(graph[node] & component):
                if succ == start:
                    end = node
                    break
                if succ not in parents:
                    parents[succ] = node
                    queue.append(succ)
        path = [start]  # walked backwards: start <- end <- ... <- start
        while end is not None:
            path.append(end)
            end = parents[end]
        cycles.append(path[::-1])
    return cycles


def test_the_checker_sees_cycles_through_functions_and_reexports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import helper\n")
    (pkg / "sub" / "__init__.py").write_text("from .deep import helper\n")  # a re-export: an edge of the __init__
    (pkg / "sub" / "deep.py").write_text("def helper():\n    from ..a import x  # hidden in a function\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub"} and graph["pkg.sub"] == {"pkg.sub.deep"}
    assert graph["pkg.sub.deep"] == {"pkg.a"} and graph["pkg.b"] == set()
    assert find_cycles(graph) == [["pkg.a", "pkg.sub", "pkg.sub.deep", "pkg.a"]]


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(package_modules(ROOT, PACKAGE))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_package_has_no_import_cycle():
    cycles = find_cycles(import_graph(ROOT, PACKAGE))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_only_the_stages_it_may(stage):
    graph = import_graph(ROOT, PACKAGE)

    def stage_of(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[1] in STAGES else None

    crossings = sorted(f"{module} -> {target}" for module, targets in graph.items() if stage_of(module) == stage
                       for target in targets if stage_of(target) not in (None, stage, *MAY_IMPORT[stage]))
    assert not crossings, "stages import each other:\n" + "\n".join(crossings)


def test_the_format_dispatch_sits_above_the_stages():
    """gee_deploy.formats hands an export to the export or the nir stage by format, so only the commands and
    the package's lazy Python API import it; a stage or core module that did would import both stages."""
    graph = import_graph(ROOT, PACKAGE)
    assert {"gee_deploy.export.api", "gee_deploy.nir.export"} <= graph["gee_deploy.formats"]
    importers = sorted(m for m, targets in graph.items() if "gee_deploy.formats" in targets)
    assert importers and all(m == PACKAGE or m.startswith(f"{PACKAGE}.commands.") for m in importers), importers
