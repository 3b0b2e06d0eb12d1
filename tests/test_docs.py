"""Every command is documented: --help with an example, and docs/cli.md and the man pages generated from it (make docs);
the pages name every option, render without a warning, and eexp(1) lists every command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
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
    assert page.exists(), f"man/eexp-{command}.1 is missing: run `make docs`"
    text = man_text(page.name)
    assert ".SH EXAMPLES" in text and ".SH EXIT STATUS" in text and ".SH SEE ALSO" in text
    options = [
        opt
        for param in cli.commands[command].params
        for opt in getattr(param, "opts", [])
        if opt.startswith("--") and opt != "--help"
    ]
    missing = [opt for opt in options if opt not in text]
    assert not missing, f"man/eexp-{command}.1 does not mention {missing}"


def test_main_page_lists_every_command():
    text = man_text("eexp.1")
    missing = [c for c in COMMANDS if f"eexp-{c}" not in text]
    assert not missing, f"man/eexp.1 does not list {missing}"


def test_man_pages_are_generated_from_the_current_help():
    """man/*.1 are every command's help with eexp/cli/man/PAGE.roff; regenerate them with `make docs`."""
    from eexp.cli.reference import stale_pages

    stale = stale_pages(MAN)
    assert not stale, f"man/ is stale ({', '.join(stale)}): run `make docs`"
    assert sorted(p.name for p in MAN.glob("*.1")) == sorted(["eexp.1", *(f"eexp-{c}.1" for c in COMMANDS)])


def test_a_stale_missing_or_orphan_man_page_is_caught(tmp_path):
    from eexp.cli.reference import stale_pages, write_man_pages

    written = write_man_pages(tmp_path)
    assert written == sorted(p.name for p in MAN.glob("*.1")) and stale_pages(tmp_path) == []
    page = tmp_path / "eexp-branch.1"
    page.write_text(page.read_text().replace("Alternatives", "Alternates", 1))
    (tmp_path / "eexp-mix.1").unlink()
    (tmp_path / "eexp-gone.1").write_text(".TH EEXP-GONE 1\n")
    assert stale_pages(tmp_path) == ["eexp-branch.1", "eexp-gone.1", "eexp-mix.1"]
    write_man_pages(tmp_path)  # what `make docs` does: every page rewritten, the orphan removed
    assert stale_pages(tmp_path) == [] and not (tmp_path / "eexp-gone.1").exists()


def test_an_extra_section_for_an_option_the_command_lacks_is_an_error(tmp_path, monkeypatch):
    from eexp.cli import reference

    for path in reference.EXTRA.glob("*.roff"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "eexp-mix.roff").write_text(".SH OPTION --no-such-option\nText.\n")
    monkeypatch.setattr(reference, "EXTRA", tmp_path)
    with pytest.raises(ValueError, match=r"eexp-mix\.roff: \.SH OPTION --no-such-option: eexp-mix has no such option"):
        reference.man_pages()


def render_command() -> list[str] | None:
    """groff's man macros to UTF-8 text with every warning on (-k: preconv for the UTF-8 source), else man -l."""
    if shutil.which("groff"):
        return ["groff", "-k", "-man", "-Tutf8", "-ww"]
    if shutil.which("man"):
        return ["man", "-l"]
    return None


@pytest.mark.parametrize("page", ["eexp.1", *(f"eexp-{c}.1" for c in COMMANDS)])
def test_man_page_renders(page):
    command = render_command()
    if command is None:
        pytest.skip("neither groff nor man is installed")
    env = {**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0", "LANG": "C.UTF-8"}
    result = subprocess.run([*command, str(MAN / page)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and not result.stderr.strip(), f"{page}: {result.stderr[:2000]}"
    text = re.sub(r".\x08", "", result.stdout)  # overstrike bold and underline, where the formatter writes them
    text = text.replace("\u2212", "-").replace("\u2010", "-")  # \- and - as a formatter may draw them
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SEE ALSO"):
        assert re.search(rf"^{heading}$", text, re.MULTILINE), f"{page}: no {heading} when rendered"
    assert page.removesuffix(".1") in text


def test_cli_reference_is_generated_from_the_current_help():
    """docs/cli.md is --help of every command; regenerate it with `make docs` after changing an option."""
    from eexp.cli.reference import reference

    checked_in = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    assert checked_in == reference(), "docs/cli.md is stale: run `make docs`"
    assert all(f"## eexp {name}\n" in checked_in for name in COMMANDS)


# Where click options may be declared by hand: the shared bundles (sqlite-utils' style: -o, --resume, --shard, -q,
# --policy, ...) and the group's own --version. A command's own options are fields of a settings dataclass.
SHARED_DECLARATIONS = {"options.py", "group.py"}


def test_commands_declare_their_options_through_settings_dataclasses():
    """One way to declare an option (issue 64): a command module under eexp/cli/ makes its own options from a
    settings dataclass (eexp.fields.setting: one default, one help; eexp.cli.options.field_options or
    dataclass_options) or takes eexp/cli/options.py's shared decorators; it writes no click.option of its own."""
    import ast

    cli_dir = Path(__file__).parent.parent / "eexp" / "cli"
    offenders = []
    for path in sorted(cli_dir.glob("*.py")):
        if path.name in SHARED_DECLARATIONS:
            continue
        tree = ast.parse(path.read_text(), str(path))
        from_click = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "click"
            for alias in node.names
            if alias.name in ("option", "Option")
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            bare = (
                isinstance(func, ast.Attribute)
                and func.attr in ("option", "Option")
                and isinstance(func.value, ast.Name)
                and func.value.id == "click"
            ) or (isinstance(func, ast.Name) and func.id in from_click)
            if bare:
                offenders.append(f"eexp/cli/{path.name}:{node.lineno}")
    assert offenders == [], (
        "declare a command's option as a setting() field of its settings dataclass (field_options), or use a shared "
        f"decorator of eexp/cli/options.py: {offenders}"
    )
