"""No import cycle among eexp's modules: the module-level imports of every module under eexp/ (read with `ast`,
nothing is imported) make a graph with no circle. An import inside a function is not counted (eexp keeps heavy
imports such as torch lazy for the CLI's start-up), so a circle cannot hide behind one without this test saying so
once the import moves to the top."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "eexp"


def module_names() -> dict[str, Path]:
    """Every module of eexp by its dotted name (a package by its own name, for its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def module_level_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The eexp modules `name` imports at module level (also under `if`/`try` at the top, not in a function or a
    class body's methods). `from P import x` is an edge to P.x where that is a module, else to P."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        found.add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    if sub in modules:
                        found.add(sub)
                    elif source in modules:
                        found.add(source)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            else:
                visit([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])

    visit(tree.body)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: module_level_imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of the graph: each set of modules that import one another, directly or not (Tarjan's strongly
    connected components of more than one module), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def walk(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                walk(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            walk(node)
    return sorted(found)


def test_the_graph_is_read():
    graph = import_graph()
    assert "eexp.training.recipe" in graph["eexp.training"]
    assert "eexp.training.config" in graph["eexp.training.recipe"]
    assert "eexp.io" in graph["eexp.training.dpo"]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycle: " + "; ".join(" <-> ".join(c) for c in found)


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_function_level_imports_are_not_counted(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("import eexp.io\n\ndef f():\n    import eexp.records\n")
    assert module_level_imports("eexp.m", mod, {"eexp.io": mod, "eexp.records": mod}) == {"eexp.io"}


def function_level_eexp_imports(path: Path) -> list[str]:
    """The eexp modules imported inside a function of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or "").startswith("eexp")):
                    found.append(inner.module or ".")
                elif isinstance(inner, ast.Import):
                    found += [a.name for a in inner.names if a.name.startswith("eexp")]
    return found


def test_training_imports_eexp_at_module_level():
    """No import inside a function of eexp/training/ or eexp/rl/ that hides a circle: an eexp module is imported at
    the top (torch, transformers and the like stay lazy, for the CLI's start-up). The one exception is the optional
    GGUF export, whose absence --export-gguf reports."""
    optional = {"eexp.models.export"}
    for path in sorted([*(PACKAGE / "training").glob("*.py"), *(PACKAGE / "rl").glob("*.py")]):
        inside = [m for m in function_level_eexp_imports(path) if m not in optional]
        assert not inside, f"{path.relative_to(ROOT)}: imported inside a function: {inside}"
