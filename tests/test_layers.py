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


def lazy_imports(source: str, package: str) -> list[str]:
    """The modules a package ``__init__`` imports on demand (``importlib.import_module``): the values of its
    ``_LAZY`` dict and its ``FAMILY_MODULES``, read as literals, so these edges are not hidden from the checks."""
    out = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name not in ("_LAZY", "FAMILY_MODULES"):
                continue
            value = ast.literal_eval(node.value)
            for target in (value.values() if isinstance(value, dict) else value):
                out.append(target if target.startswith("glasszoo.") else f"{package}.{target}")
    return out


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        source = path.read_text()
        targets = [t for t, *_ in read_imports(source, module, path.name == "__init__.py")]
        if path.name == "__init__.py":
            targets += lazy_imports(source, module)
        graph[module] = {t for t in targets if t in files and t != module}
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
        if path.name == "__init__.py":
            for target in lazy_imports(path.read_text(), module):
                if target not in files:
                    bad.append(f"{_rel(path)}: imports {target} on demand, which is no module of glasszoo")
                elif layer_of(target) > layer_of(module):
                    bad.append(f"{_rel(path)}: {module} imports {target} on demand, up a layer")
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


def test_lazy_package_imports_are_read():
    """The packages' on-demand imports are edges of the graph like any other (none is hidden)."""
    graph = import_graph(module_files())
    assert {"glasszoo.models.blackbox", "glasszoo.models.protopnet", "glasszoo.models._registry"} <= \
        graph["glasszoo.models"]
    assert "glasszoo.training.data" in graph["glasszoo.training"]
    planted = 'FAMILY_MODULES = ("blackbox",)\n_LAZY = {"run": "glasszoo.evaluation.experiment.runner"}\n'
    assert lazy_imports(planted, "glasszoo.models") == ["glasszoo.models.blackbox",
                                                        "glasszoo.evaluation.experiment.runner"]


@pytest.mark.parametrize("source,expected", [
    ("from . import x\n", ["glasszoo.models", "glasszoo.models.x"]),
    ("from .base import A\n", ["glasszoo.models.base", "glasszoo.models.base.A"]),
    ("import numpy as np\n", ["numpy"]),
])
def test_read_imports_resolves_relative_names(source, expected):
    got = [t for t, *_ in read_imports(source, "glasszoo.models.cbm")]
    assert got == expected


# ------------------------------------------------------------------------------------------- shared code
SHARED = ("evaluation/experiment/runner.py", "evaluation/report.py", "evaluation/experiment/bench.py")
"""Code every model goes through: it may not know any model family or registry name."""


def _string_constants(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant of a module except docstrings (f-string parts included)."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def _compared_constants(source: str) -> set[tuple[int, str]]:
    """(line, text) of the string constants compared with something (``==``, ``!=``, ``in``, ...)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                for c in ast.walk(operand):
                    if isinstance(c, ast.Constant) and isinstance(c.value, str):
                        out.add((c.lineno, c.value))
    return out


def named_models(source: str, registry_names: set[str], families: set[str]) -> list[str]:
    """String constants that hold a registry name as a word, and family names that code compares against (family
    names such as "score" or "tree" are also ordinary words and keys, so only a comparison counts)."""
    words = re.compile(r"\b(" + "|".join(sorted(map(re.escape, registry_names))) + r")\b", re.IGNORECASE)
    compared = _compared_constants(source)
    return [f"line {line}: {text!r}" for line, text in _string_constants(source)
            if words.search(text) or (text in families and (line, text) in compared)]


def test_shared_code_names_no_model_family_or_registry_name():
    from glasszoo.models import FAMILY_MODULES, list_models, model_info

    names = set(list_models())
    families = {model_info(n).family for n in names}
    assert {"blackbox", "protopnet", "cbm"} <= names and "black-box" in families and FAMILY_MODULES
    for rel in SHARED:
        bad = named_models((ROOT / rel).read_text(), names, families)
        assert not bad, f"{rel} names models: " + "; ".join(bad)


def test_the_name_check_catches_a_planted_name():
    names, families = {"blackbox", "point_score"}, {"black-box", "score"}
    planted = 'def f(m):\n    """Docstrings may say blackbox."""\n    return m["family"] == "black-box"\n'
    assert named_models(planted, names, families) == ["line 3: 'black-box'"]
    assert named_models('x = f"{a} (blackbox, resnet18)"\n', names, families) == ["line 1: ' (blackbox, resnet18)'"]
    assert named_models('x = "a score of the tree"\ny = d["score"]\nz = "point_scores"\n', names, families) == []
    assert named_models('ok = info.family in ("score", "x")\n', names, families) == ["line 1: 'score'"]
