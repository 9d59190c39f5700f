"""labkit's modules import one another without a cycle.

The graph is read from the source with ``ast``: every import that runs, at module level or inside a function
(``import labkit.x``, ``from labkit import x``, ``from . import x``, ``from .x import y``); an import under
``if TYPE_CHECKING:`` never runs, so it is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "labkit"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _modules() -> dict[str, Path]:
    """Module name → source file, for every module of the package (``labkit`` is its ``__init__.py``)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements under ``node``, less those in the body of an ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:  # the else branch of `if TYPE_CHECKING:` does run
                found.extend(_runtime_imports(ast.Module(body=[other], type_ignores=[])))
        else:
            found.extend(_runtime_imports(child))
    return found


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports at run time."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def add(name: str) -> None:
        # `import labkit.a.b` runs labkit.a.b; a name that is not a module stands for the module that defines it
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)

    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    add(alias.name)
            continue
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source != PACKAGE and not source.startswith(PACKAGE + "."):
            continue
        for alias in node.names:  # `from labkit import x`: x may be a module of its own
            sub = f"{source}.{alias.name}"
            add(sub if sub in modules else source)
    return out


def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a closed path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_graph_sees_labkits_imports() -> None:
    """The reader finds the imports the package is known to make (else an empty graph would pass)."""
    edges = graph()
    assert "labkit.errors" in edges["labkit"], edges["labkit"]
    assert "labkit.k8s" in edges["labkit.backends.local.lab"]
    assert sum(len(v) for v in edges.values()) > 50


def test_type_checking_imports_are_left_out(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "b.py").write_text("")
    (pkg / "c.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .b import X\nelse:\n    X = None\n"
        "def f():\n    from labkit import c\n    import labkit.b as bb\n")
    modules = {"labkit": pkg / "__init__.py", "labkit.a": pkg / "a.py", "labkit.b": pkg / "b.py", "labkit.c": pkg / "c.py"}
    assert imports_of("labkit.a", pkg / "a.py", modules) == {"labkit.b", "labkit.c"}  # b: from the function only
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n")
    assert imports_of("labkit.a", pkg / "a.py", modules) == set()


def test_find_cycle_names_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_labkit_has_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, (
        f"labkit's modules import one another in a cycle: {' -> '.join(cycle)}. Move what they share into a "
        "module both import (or import it under `if TYPE_CHECKING:` when only the type checker needs it).")
