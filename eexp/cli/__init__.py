"""The `eexp` command: one click group (eexp/cli/group.py); each subcommand lives in the module of its concept,
stays thin and registers itself on the group. Importing this package assembles the group: the imports below register
every command, in the order they always have (`eexp --help` lists them in SECTIONS' order, in group.py)."""

from __future__ import annotations

from eexp.cli import (
    corpus,
    critic,
    curation,
    data,
    envs,
    evaluate,
    experience,
    games,
    models,
    policies,
    reflect,
    rl,  # noqa: F401
    train,
    world_model,
)
from eexp.cli.group import SECTIONS, VERSION_PACKAGES, Group, cli, first_sentence, main, version_text

__all__ = ["SECTIONS", "VERSION_PACKAGES", "Group", "cli", "first_sentence", "main", "version_text"]
