"""The layers point one way: models <- training <- evaluation <- experiment, with no import cycle.

Every module's imports are read with ``ast`` (top-level and function-local alike), so a cycle cannot hide behind a
function-local import. A function-local import is allowed only for a heavy or optional dependency, with the reason
beside it (``# heavy: ...`` or ``# optional: ...`` on the import line or the line above).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"glasszoo.models": ROOT / "models", "glasszoo.training": ROOT / "training",
            "glasszoo.evaluation": ROOT / "evaluation"}
LAYERS = ("models", "training", "evaluation", "experiment")  # bottom to top
REASON = re.compile(r"#\s*(heavy|optional)\b")


def layer_of(module: str) -> int:
    parts = module.split(".")
    if parts[:3] == ["glasszoo", "evaluation", "experiment"]:
        return LAYERS.index("experiment")
    return LAYERS.index(parts[1])


def module_files() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def _resolve(node: ast.ImportFrom | ast.Import, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # ``from pkg import sub`` imports the submodule when one exists
    return [target] + [f"{target}.{a.name}" for a in node.names]


def read_imports(source: str, module: str, is_package: bool = False) -> list[tuple[str, int, bool, str]]:
    """(imported module, line, function-local?, source lines of the import and the line above) of a module."""
    tree = ast.parse(source)
    lines = source.splitlines()
    top = {id(n) for n in tree.body}
    for n in tree.body:  # imports under a module-level ``if TYPE_CHECKING:`` / ``try:`` count as top-level
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            context = "\n".join(lines[max(node.lineno - 2, 0):node.end_lineno])
            for target in _resolve(node, module, is_package):
                out.append((target, node.lineno, id(node) not in top, context))
    return out


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = read_imports(path.read_text(), module, path.name == "__init__.py")
        graph[module] = {t for t, *_ in targets if t in files and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that starts and ends on the same module), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def upward_imports(files: dict[str, Path]) -> list[str]:
    bad = []
    for module, path in files.items():
        for target, line, _, _ in read_imports(path.read_text(), module, path.name == "__init__.py"):
            if target.startswith("glasszoo.") and target in files and layer_of(target) > layer_of(module):
                bad.append(f"{_rel(path)}:{line}: {module} ({LAYERS[layer_of(module)]}) imports "
                           f"{target} ({LAYERS[layer_of(target)]})")
    return bad


def unexplained_local_imports(files: dict[str, Path]) -> list[str]:
    bad = []
    for module, path in files.items():
        for _target, line, local, context in read_imports(path.read_text(), module, path.name == "__init__.py"):
            if local and not REASON.search(context):
                bad.append(f"{_rel(path)}:{line}: function-local import ({context.splitlines()[-1].strip()}) without "
                           f"a '# heavy: ...' or '# optional: ...' reason")
    return sorted(set(bad))


def test_no_import_points_up_a_layer():
    bad = upward_imports(module_files())
    assert not bad, "imports that point up a layer:\n" + "\n".join(bad)


def test_no_import_cycle():
    cycle = find_cycle(import_graph(module_files()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_function_local_imports_give_their_reason():
    bad = unexplained_local_imports(module_files())
    assert not bad, "\n".join(bad)


def test_the_checks_catch_a_planted_upward_import_and_cycle(tmp_path):
    """The checks themselves can fail: a planted upward import (models -> training) and a two-module cycle."""
    files = module_files()
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from glasszoo.training.caseset import CaseSet\n    return CaseSet\n")
    with_plant = {**files, "glasszoo.models.planted": planted}
    assert any("glasszoo.models.planted" in b and "glasszoo.training.caseset" in b for b in upward_imports(with_plant))
    assert any("planted.py:2" in b for b in unexplained_local_imports(with_plant))
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("source,expected", [
    ("from . import x\n", ["glasszoo.models", "glasszoo.models.x"]),
    ("from .base import A\n", ["glasszoo.models.base", "glasszoo.models.base.A"]),
    ("import numpy as np\n", ["numpy"]),
])
def test_read_imports_resolves_relative_names(source, expected):
    got = [t for t, *_ in read_imports(source, "glasszoo.models.cbm")]
    assert got == expected
