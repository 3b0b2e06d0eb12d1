"""How eexp's modules import one another and what they import when.

- No import circle: every import of an eexp module anywhere in a module of eexp/ (at its top, or inside a function;
  read with `ast`, nothing is imported; relative imports resolved) is an edge of a graph with no circle. Importing
  `eexp.a.b` runs `eexp/a/__init__.py` first, so it is an edge to the package `eexp.a` too.
- Imports at the top, where a reader sees them: outside eexp/cli/, no function imports the standard library, eexp's
  own modules or eexp's dependencies (CORE), except the few ALLOWED_INSIDE, each with its reason. What a function
  may import: an optional package (torch, transformers, PEFT, an environment's package, llama.cpp, Ray, matplotlib:
  whatever `pip install eexp` does not install), where the option or the backend that needs it asks for it. The
  click commands of eexp/cli/ import their implementation when they run, so that `eexp --help` stays fast.
- Layers (LAYERS): a module imports modules of its own layer and of the layers below it, never above. Shared
  helpers sit at the bottom (`setting()` in eexp/fields.py, the model files and hashes in eexp/files.py), models/
  below policies/ (a backend loads a model; nothing in models/ needs a policy), and the dream environment, a world
  backed by a model, above policies/ (the other environments import no policy), so no two layers import each other.
- eexp/training/ names no module of eexp/rl/, the layer above it, in its code: no import, and no "module:Class"
  string either (rl's objectives are registered in eexp/rl/config.py); docstrings may point a reader there.
- eexp/training/ and eexp/rl/ import everything at their top, torch included; their packages' __init__.py import
  nothing, so the commands' start-up, which reads their config modules, imports no torch (nor numpy).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "eexp"

# What `pip install eexp` installs (pyproject.toml's dependencies), by the name each is imported as: imported at the
# top of a module like the standard library.
CORE = {"click", "orjson", "tqdm", "yaml", "numpy"}
IMPORT_NAMES = {"pyyaml": "yaml"}

# The imports of the standard library, of eexp and of CORE that stay inside a function outside eexp/cli/, each with
# its reason. numpy takes about 120 ms to import (measured after eexp.cli's own imports, 2 shared cores) and every
# command's start-up, `eexp --help` included, imports eexp.cli's modules and theirs: numpy stays out of it.
ALLOWED_INSIDE = {
    ("eexp/stats.py", "numpy"): "numpy (~120 ms) for eval --compare's seed-level bootstrap only; every command's "
    "start-up imports eexp.stats (through eexp.stages.evaluate.compare)",
    ("eexp/stages/evaluate/episode.py", "eexp.policies.critic"): "imports numpy at its top (through "
    "eexp.policies.chat), for --critic only; every "
    "command's start-up imports this module",
}

# Inside a function of eexp/training/ or eexp/rl/, where even torch is imported at the top: a package that
# eexp[train] does not install, looked for only when an option asks for it.
TRAINING_ALLOWED_INSIDE = {
    ("eexp/training/model.py", "bitsandbytes"): "--qlora only: CUDA-only, not a dependency of eexp[train]; its "
    "absence is a usage error that says to install it",
}


def module_names() -> dict[str, Path]:
    """Every module of eexp by its dotted name (a package by its own name, for its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def source_of(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a `from ... import` reads from (a relative one resolved against `package`)."""
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def eexp_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The eexp modules `name` imports, at its top or inside a function. `from P import x` is an edge to P.x where
    that is a module, else to P; an edge to a module is an edge to every package above it too (their __init__.py
    run first), but for the packages `name` is itself in."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = package_of(name, path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in modules:  # `import eexp.a.b.c` where c is a name: eexp.a.b
                    target = target.rpartition(".")[0]
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            source = source_of(node, package)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif source in modules:
                    found.add(source)
    for target in list(found):
        parts = target.split(".")
        found.update(
            ".".join(parts[:i])
            for i in range(1, len(parts))
            if ".".join(parts[:i]) in modules and not name.startswith(".".join(parts[:i]) + ".")
        )
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: eexp_imports(name, path, modules) for name, path in modules.items()}


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
    assert "eexp.training.config" in graph["eexp.training.recipe"]
    assert "eexp.io" in graph["eexp.training.dpo"]
    assert "eexp.cli.group" in graph["eexp.cli.train"] and "eexp.cli.train" in graph["eexp.cli"]
    assert "eexp.training.recipe" in graph["eexp.cli.train"]  # inside the command's function
    assert "eexp.files" in graph["eexp.models.import_gguf"]
    assert "eexp.models" in graph["eexp.policies.hf"]  # eexp.models.adapter runs it first
    assert "eexp.training" not in graph["eexp.training.recipe"]  # a module of the package itself


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycle: " + "; ".join(" <-> ".join(c) for c in found)


# The layers of eexp, each with the layers its modules may import beside its own (and, in turn, what those may): a
# module is in the layer of the longest name here that it is, or is inside. "eexp" is the bottom: the top-level
# modules (errors, io, records, prompts, card, runner, fields: `setting()`, files: model files and their hashes, ...),
# which import no layer.
LAYERS = {
    "eexp": set(),
    "eexp.envs": set(),  # the environments: a world with rules of its own
    "eexp.models": set(),  # model files: init-model, GGUF import and export, merge
    "eexp.policies": {"eexp.models"},  # a backend loads a model (a GGUF base imported first)
    "eexp.envs.dream": {"eexp.envs", "eexp.policies"},  # a world backed by a model: an environment over a policy
    "eexp.stages": {"eexp.envs.dream"},
    "eexp.training": {"eexp.policies"},  # the chat format's thoughts; no stage (setting() is below)
    "eexp.rl": {"eexp.training", "eexp.stages"},
    "eexp.integrations": {"eexp.envs", "eexp.policies"},
    "eexp.cli": {"eexp.rl", "eexp.integrations"},
    "eexp.__main__": {"eexp.cli"},
}


def layer_of(module: str) -> str:
    return max((name for name in LAYERS if module == name or module.startswith(name + ".")), key=len)


def below(layer: str) -> set[str]:
    """The layers `layer` may import: those LAYERS gives it, and theirs, down to the bottom."""
    found, todo = {"eexp"}, list(LAYERS[layer])
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += LAYERS[name]
    return found


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} imports {target}: {layer_of(name)} is below {layer_of(target)}"
        for name, targets in graph.items()
        for target in targets
        if layer_of(target) != layer_of(name) and layer_of(target) not in below(layer_of(name))
    )


def test_the_layers_are_kept():
    found = layer_violations(import_graph())
    assert not found, "\n".join(found)


def test_a_module_that_imports_above_its_layer_is_found():
    assert layer_violations({"eexp.models.merge": {"eexp.policies.hf", "eexp.files"}}) == [
        "eexp.models.merge imports eexp.policies.hf: eexp.models is below eexp.policies"
    ]
    assert layer_violations({"eexp.training.config": {"eexp.stages.settings"}}) == [
        "eexp.training.config imports eexp.stages.settings: eexp.training is below eexp.stages"
    ]
    assert layer_violations(
        {
            "eexp.envs.shop": {"eexp.policies"},
            "eexp.envs.dream": {"eexp.policies.base"},
            "eexp.stages.branch": {"eexp.envs.dream"},
            "eexp.rl.recipe": {"eexp.models.adapter"},
        }
    ) == ["eexp.envs.shop imports eexp.policies: eexp.envs is below eexp.policies"]
    assert layer_of("eexp.fields") == layer_of("eexp") == "eexp" and layer_of("eexp.envs.dream") == "eexp.envs.dream"


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_inside_functions_and_relative_ones_are_edges(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("import eexp.io\n\ndef f():\n    from .records import validate\n    from eexp.x import y\n")
    modules = {"eexp": mod, "eexp.io": mod, "eexp.records": mod, "eexp.x": mod, "eexp.x.y": mod}
    # (the package eexp is eexp.m's own: no edge)
    assert eexp_imports("eexp.m", mod, modules) == {"eexp.io", "eexp.records", "eexp.x", "eexp.x.y"}


def function_level_imports(path: Path, package: str = "") -> list[tuple[int, str]]:
    """(line, module) of every import inside a function (or method) of the file; a relative one resolved against
    `package`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    found.append((inner.lineno, source_of(inner, package)))
                elif isinstance(inner, ast.Import):
                    found += [(inner.lineno, a.name) for a in inner.names]
    return sorted(set(found))


def belongs_at_the_top(module: str) -> bool:
    """The standard library, eexp, and what `pip install eexp` installs."""
    top = module.split(".")[0]
    return top in sys.stdlib_module_names or top == "eexp" or top in CORE


def test_core_is_what_pip_install_eexp_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {
        dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for dep in project["dependencies"]
    }
    assert {IMPORT_NAMES.get(name, name) for name in names} == CORE


def test_outside_the_cli_imports_are_at_the_top():
    """No function of eexp/ (eexp/cli/ aside) imports the standard library, eexp or CORE, but ALLOWED_INSIDE."""
    modules = {path: name for name, path in module_names().items()}
    inside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("eexp/cli/"):
            continue
        inside += [
            f"{rel}:{line}: import {module} inside a function"
            for line, module in function_level_imports(path, package_of(modules[path], path))
            if belongs_at_the_top(module) and (rel, module) not in ALLOWED_INSIDE
        ]
    assert not inside, "\n".join(inside)


def test_training_and_rl_import_at_module_level():
    """torch, transformers, PEFT, safetensors, jinja2, accelerate and eexp's own modules are imported at the top of
    eexp/training/ and eexp/rl/, where a reader sees them; the CLI's start-up stays light because it imports these
    packages from inside its command functions (test_the_commands_start_without_torch)."""
    inside = []
    for path in sorted([*(PACKAGE / "training").glob("*.py"), *(PACKAGE / "rl").glob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        inside += [
            f"{rel}:{line}: import {module} inside a function"
            for line, module in function_level_imports(path)
            if (rel, module) not in TRAINING_ALLOWED_INSIDE
        ]
    assert not inside, "\n".join(inside)


def test_an_import_inside_a_function_is_found(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text(
        "import os\n\nclass C:\n    def f(self):\n        if os:\n            from torch import nn\n"
        "\nasync def g():\n    import torch.nn.functional as F\n    from . import io\n"
    )
    assert function_level_imports(mod, "eexp") == [(6, "torch"), (9, "torch.nn.functional"), (10, "eexp")]
    assert [belongs_at_the_top(m) for m in ("torch", "json", "eexp.io", "numpy", "llama_cpp")] == [
        False,
        True,
        True,
        True,
        False,
    ]


def test_every_allowed_import_is_still_there():
    modules = {path: name for name, path in module_names().items()}
    for (rel, module), reason in {**ALLOWED_INSIDE, **TRAINING_ALLOWED_INSIDE}.items():
        path = ROOT / rel
        found = [m for _, m in function_level_imports(path, package_of(modules[path], path))]
        assert module in found, f"{rel}: {module} (take it off)"
        assert reason


def test_the_training_and_rl_packages_import_nothing():
    """Their names are imported from their modules (`from eexp.training.recipe import finetune`): one import path
    for each, which go-to-definition follows."""
    for package in ("training", "rl"):
        tree = ast.parse((PACKAGE / package / "__init__.py").read_text(encoding="utf-8"))
        assert not [node for node in tree.body if not isinstance(node, ast.Expr)], package


HEAVY = ("torch", "transformers", "peft", "accelerate", "safetensors", "numpy")


@pytest.mark.parametrize(
    "args", [["--help"], ["finetune", "--help"], ["rl", "--help"], ["merge", "--help"], ["eval", "--help"], ["envs"]]
)
def test_the_commands_start_without_torch(args):
    """What the command imports to get this far (in a fresh interpreter, as `eexp ARGS` would): no torch, and no
    numpy (ALLOWED_INSIDE keeps it out of the start-up)."""
    code = (
        "import sys\nfrom eexp.cli import main\nsys.argv = ['eexp', *sys.argv[1:]]\ntry:\n    main()\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "[]", f"eexp {' '.join(args)} imported {done.stderr.splitlines()[-1]}"


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module's tree (of the module, its classes and functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


RL_MODULE = re.compile(r"\beexp\.rl\b")


def names_of_rl(path: Path, package: str) -> list[str]:
    """Where a module depends on eexp.rl: an import of it (at the top or inside a function, relative ones resolved
    against `package`), or a string in its code that names one of its modules ("eexp.rl.rollouts:Episodes",
    importlib's argument), which the import graph does not see. Docstrings name the layer above for a reader and
    run nothing: they may."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if RL_MODULE.match(a.name)]
        elif isinstance(node, ast.ImportFrom):
            source = source_of(node, package)
            if any(RL_MODULE.match(name) for name in (source, *(f"{source}.{a.name}" for a in node.names))):
                found.append(f"{node.lineno}: from {source} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if RL_MODULE.search(node.value):
                found.append(f"{node.lineno}: {node.value!r}")
    return found


def test_training_names_no_rl_module():
    """eexp/training/ is below eexp/rl/ (LAYERS): it neither imports eexp.rl nor names one of its modules by string
    (rl's objectives are registered in eexp/rl/config.py, `REWARDS`), so training knows nothing of the layer above."""
    found = [
        f"{path.relative_to(ROOT).as_posix()}:{where}"
        for name, path in module_names().items()
        if name.startswith("eexp.training")
        for where in names_of_rl(path, package_of(name, path))
    ]
    assert not found, "\n".join(found)


def test_a_string_or_import_naming_an_rl_module_is_found(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text(
        '"""Beside eexp.rl.recipe (a docstring: allowed)."""\nimport eexp.rl.loss\n\n'
        'def f():\n    """eexp.rl.config"""\n    from eexp import rl\n    from ..rl.config import REWARDS\n'
        '    return {"x": "eexp.rl.rollouts:Episodes", "y": "eexp.rlx", "z": "eexp.training.dpo:DPO"}\n'
    )
    assert names_of_rl(mod, "eexp.training") == [
        "2: import eexp.rl.loss",
        "6: from eexp import rl",
        "7: from eexp.rl.config import REWARDS",
        "8: 'eexp.rl.rollouts:Episodes'",
    ]
