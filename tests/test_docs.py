"""Every command is documented: --help with an example, a man page that names every option, and eexp(1) lists it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from eexp.cli import cli

MAN = Path(__file__).parent.parent / "man"
COMMANDS = sorted(cli.commands)


def man_text(name: str) -> str:
    # roff escapes dashes as \- ; compare with plain dashes
    return (MAN / name).read_text().replace("\\-", "-")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(runner, command):
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert re.search(r"^\s*Examples?:", result.output, re.MULTILINE), f"eexp {command} --help has no example"


@pytest.mark.parametrize("command", COMMANDS)
def test_man_page_names_every_option(command):
    page = MAN / f"eexp-{command}.1"
    assert page.exists(), f"man/eexp-{command}.1 is missing"
    text = man_text(page.name)
    assert ".SH EXAMPLES" in text and ".SH EXIT STATUS" in text
    options = [opt for param in cli.commands[command].params for opt in getattr(param, "opts", [])
               if opt.startswith("--") and opt != "--help"]
    missing = [opt for opt in options if opt not in text]
    assert not missing, f"man/eexp-{command}.1 does not mention {missing}"


def test_main_page_lists_every_command():
    text = man_text("eexp.1")
    missing = [c for c in COMMANDS if f"eexp-{c}" not in text]
    assert not missing, f"man/eexp.1 does not list {missing}"


def test_only_the_cli_imports_the_cli():
    """Click parses and prints; the library under it never reaches back up (sqlite-utils' layering)."""
    package = Path(__file__).parent.parent / "eexp"
    offenders = [str(p.relative_to(package.parent)) for p in package.rglob("*.py")
                 if "cli" not in p.relative_to(package).parts[:1] and p.name != "__main__.py"
                 and re.search(r"^\s*(from eexp\.cli\b|import eexp\.cli\b|from eexp import cli\b)", p.read_text(),
                               re.MULTILINE)]
    assert offenders == []


def test_cli_reference_is_generated_from_the_current_help():
    """docs/cli.md is --help of every command; regenerate it with `make docs` after changing an option."""
    from eexp.cli.reference import reference
    checked_in = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    assert checked_in == reference(), "docs/cli.md is stale: run `make docs`"
    assert all(f"## eexp {name}\n" in checked_in for name in COMMANDS)
