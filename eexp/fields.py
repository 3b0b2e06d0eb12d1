"""`setting()`: a field of a settings or config dataclass, its default and its help written once; the commands' click
options are made from the fields (eexp.cli.options). Below every layer that declares options (the stages' settings,
eexp.stages.settings; training's and rl's configs; merge's): it imports nothing of eexp."""

from __future__ import annotations

import dataclasses
from dataclasses import field


def setting(default=None, help: str = "", *, factory=None, **hints):
    """A settings (or config) field: its default and its help live here, once, and a command's options are made from
    the fields (eexp.cli.options.field_options and dataclass_options). `hints` for click: flag ("--lora/--full"),
    short ("-o"), metavar, min/max (min_open/max_open: a float's bound excluded), choices, required, argument (the
    positional files), multiple (repeated), sep (one comma-separated value). `factory`: a default made anew for each
    instance (a list)."""
    metadata = {"help": help, **hints}
    if hints.get("required") or hints.get("argument"):
        return field(metadata=metadata)  # no default: the dataclass, like the command, needs it
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(f: dataclasses.Field):
    """A field's default: its value, or a fresh one from its factory; None for a field without (a required one)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None
