"""The CLI reference, docs/cli.md, generated from every command's --help (the one source of the options' help):

    python -m eexp.cli.reference > docs/cli.md

tests/test_docs.py regenerates it and fails when the checked-in file differs, so it never goes stale (what simonw/llm
does with cog)."""

from __future__ import annotations

import click

from eexp.cli import cli

WIDTH = 100  # fixed, so the text does not depend on the terminal that generates it


def context(command: click.Command, name: str, parent: click.Context | None = None) -> click.Context:
    """The context --help would get (the group's settings, -h included), at the fixed width."""
    settings = {**(command.context_settings or {}), "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


def reference() -> str:
    top = context(cli, "eexp")
    parts = ["# eexp command reference", "",
             "Generated from `--help` by `python -m eexp.cli.reference > docs/cli.md`; the man pages in `man/` say the "
             "same at length.", "", "```", cli.get_help(top), "```"]
    for name in sorted(cli.commands):
        command = cli.commands[name]
        parts += ["", f"## eexp {name}", "", "```", command.get_help(context(command, name, top)), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    click.echo(reference(), nl=False)
