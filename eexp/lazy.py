"""A package's public names, each imported from its module the first time it is used (PEP 562's module
`__getattr__`). eexp.training and eexp.rl use it: their modules import torch, transformers and PEFT at the top, and
every command's start-up (`eexp --help` included) imports their light config modules, which runs the package's
__init__.py first; with the names imported here on first use, that start-up does not import torch."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, lazy_imports: dict[str, list[str]]) -> tuple[list[str], Callable[[str], Any],
                                                                             Callable[[], list[str]]]:
    """`__all__`, `__getattr__` and `__dir__` for `package`, whose public names are `lazy_imports`' (module -> the
    names it provides). A name is imported from its module when first asked for, then kept in the package."""
    module_of = {name: module for module, names in lazy_imports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:  # not a public name: `from package import submodule` goes on to import the submodule
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # found there the next time, without this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *module_of})

    return list(module_of), __getattr__, __dir__
