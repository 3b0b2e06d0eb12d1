"""How eexp's modules import one another and what they import when.

- No import cycle: the module-level imports of every module under eexp/ (read with `ast`, nothing is imported) make
  a graph with no circle. A package's LAZY_IMPORTS (eexp/lazy.py: public names imported from their modules on first
  use) count as its imports. An import inside a function is not counted, so none is allowed in eexp/training/ and
  eexp/rl/, where a circle or a slow import could hide behind one.
- The commands' start-up (`eexp --help`, a command's --help, `eexp envs`) imports no torch: the CLI imports the
  training and RL code from inside its command functions, and the packages' public names are imported on first use.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

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
    class body's methods). `from P import x` is an edge to P.x where that is a module, else to P. The modules named
    by a module-level `LAZY_IMPORTS = {module: [names]}` are edges too: they are imported when a name is first used,
    and a circle through them is as real then."""
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
            elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                  and any(isinstance(target, ast.Name) and target.id == "LAZY_IMPORTS" for target in node.targets)):
                found.update(key.value for key in node.value.keys
                             if isinstance(key, ast.Constant) and key.value in modules)
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
    assert "eexp.rl.recipe" in graph["eexp.rl"] and "eexp.rl.config" in graph["eexp.rl"]  # LAZY_IMPORTS
    assert "eexp.cli.group" in graph["eexp.cli.train"] and "eexp.cli.train" in graph["eexp.cli"]


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


def test_lazy_imports_are_counted(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text('LAZY_IMPORTS = {"eexp.io": ["Reader"], "json": ["loads"]}\nOTHER = {"eexp.records": []}\n')
    assert module_level_imports("eexp.m", mod, {"eexp.io": mod, "eexp.records": mod}) == {"eexp.io"}


# The imports that stay inside a function of eexp/training/ or eexp/rl/, each with its reason: a package that
# eexp[train] does not install, looked for only when an option asks for it.
ALLOWED_INSIDE = {
    ("eexp/training/model.py", "bitsandbytes"): "--qlora only: CUDA-only, not a dependency of eexp[train]; its "
                                                "absence is a usage error that says to install it",
}


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import inside a function (or method) of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    found.append((inner.lineno, "." * inner.level + (inner.module or "")))
                elif isinstance(inner, ast.Import):
                    found += [(inner.lineno, a.name) for a in inner.names]
    return sorted(set(found))


def test_training_and_rl_import_at_module_level():
    """torch, transformers, PEFT, safetensors, jinja2, accelerate and eexp's own modules are imported at the top of
    eexp/training/ and eexp/rl/, where a reader sees them and the cycle test counts them; the CLI's start-up stays
    light because it imports these packages from inside its command functions (next test)."""
    inside = []
    for path in sorted([*(PACKAGE / "training").glob("*.py"), *(PACKAGE / "rl").glob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        inside += [f"{rel}:{line}: import {module} inside a function" for line, module in function_level_imports(path)
                   if (rel, module) not in ALLOWED_INSIDE]
    assert not inside, "\n".join(inside)


def test_an_import_inside_a_function_is_found(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("import os\n\nclass C:\n    def f(self):\n        if os:\n            from torch import nn\n"
                   "\nasync def g():\n    import torch.nn.functional as F\n")
    assert function_level_imports(mod) == [(6, "torch"), (9, "torch.nn.functional")]


def test_every_allowed_import_is_still_there():
    for (rel, module), reason in ALLOWED_INSIDE.items():
        assert module in [m for _, m in function_level_imports(ROOT / rel)], f"{rel}: {module} (take it off)"
        assert reason


HEAVY = ("torch", "transformers", "peft", "accelerate", "safetensors")


@pytest.mark.parametrize("args", [["--help"], ["finetune", "--help"], ["rl", "--help"], ["merge", "--help"],
                                  ["envs"]])
def test_the_commands_start_without_torch(args):
    """What the command imports to get this far (in a fresh interpreter, as `eexp ARGS` would)."""
    code = ("import sys\nfrom eexp.cli import main\nsys.argv = ['eexp', *sys.argv[1:]]\ntry:\n    main()\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "[]", f"eexp {' '.join(args)} imported {done.stderr.splitlines()[-1]}"


def test_the_public_names_are_imported_on_first_use():
    """eexp.training's and eexp.rl's public names all resolve (to their modules' objects), and what is not one is
    an AttributeError, not an import; a submodule is still imported by `from eexp.training import checkpoint`."""
    code = ("import sys, eexp.training, eexp.rl\n"
            "assert 'torch' not in sys.modules\n"
            "from eexp.training import checkpoint, finetune\n"
            "import eexp.training.recipe as recipe, eexp.training.config as config\n"
            "assert finetune is recipe.finetune and checkpoint is sys.modules['eexp.training.checkpoint']\n"
            "assert eexp.rl.RLConfig is sys.modules['eexp.rl.config'].RLConfig\n"
            "for package in (eexp.training, eexp.rl):\n"
            "    assert all(getattr(package, name) is not None for name in package.__all__)\n"
            "    assert set(package.__all__) <= set(dir(package))\n"
            "try:\n    eexp.training.no_such_name\nexcept AttributeError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "module 'eexp.training' has no attribute 'no_such_name'"
