"""The package's import graph has no circle, read from the source (every import statement,
including those inside functions), so a lower module never needs a higher one to load."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sda"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the sda modules it imports. `from sda.x import y` counts sda.x.y when that is a
    module, else sda.x. A parent package's implicit import is left out: Python runs it first."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_sda_has_no_import_circle():
    graph = import_graph()
    assert {"sda.files", "sda.outputs", "sda.pipeline", "sda.report"} <= set(graph), "the graph was read"
    assert "sda.pipeline" in graph["sda.outputs"], "imports are found"
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    package = tmp_path / "sda"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from sda.sub import b\n")
    (package / "sub" / "b.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("def f():\n    from sda.a import thing\n")
    graph = import_graph(package)
    assert find_cycle(graph) == ["sda.a", "sda.sub.b", "sda.sub.c", "sda.a"]
    (package / "sub" / "c.py").write_text("import numpy\n")
    assert find_cycle(import_graph(package)) is None


def test_importing_sda_leaves_the_garbage_collector_as_it_was():
    # sda pauses the collector while torch and the rest load (sda/__init__.py).
    code = (
        "import gc, sys\n"
        "wanted = sys.argv[1] == 'on'\n"
        "(gc.enable if wanted else gc.disable)()\n"
        "import sda\n"
        "assert gc.isenabled() is wanted, gc.isenabled()\n"
    )
    for state in ("on", "off"):
        done = subprocess.run([sys.executable, "-c", code, state], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
