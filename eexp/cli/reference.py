"""The CLI reference, generated from every command's --help (the one source of the options' help): docs/cli.md and
the man pages man/*.1, both written by `make docs`:

    python -m eexp.cli.reference > docs/cli.md
    python -m eexp.cli.reference --man man

A man page is its command's help in roff: NAME (the first sentence), SYNOPSIS (the usage line), DESCRIPTION (the
help text), OPTIONS (each option's help with its default, as --help prints it), EXAMPLES (the help's `Example:`
block) and SEE ALSO (eexp(1) and the commands the help names). What a page says beyond --help (the record shapes at
length, the exit status, notes on one option) is written once in eexp/cli/man/PAGE.roff, roff under `.SH` headings:

    .SH DESCRIPTION           more paragraphs after the help text
    .SH OPTION --act          more about one option, after its help (the option must exist)
    .SH EXAMPLES              more examples after the help's own
    .SH SEE ALSO              eexp-x(1), eexp-y(1) lines: pages listed first; any other line is kept as text
    .SH ANY OTHER TITLE       a section of its own, after OPTIONS (EXIT STATUS, ENVIRONMENT and FILES last)

tests/test_docs.py regenerates both and fails when a checked-in file differs, so neither goes stale (what simonw/llm
does with cog)."""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
from pathlib import Path

import click

from eexp import __version__
from eexp.cli import SECTIONS, cli, first_sentence

WIDTH = 100  # fixed, so the text does not depend on the terminal that generates it
EXTRA = Path(__file__).with_name("man")  # eexp/cli/man/PAGE.roff: what a man page says beyond --help
# The sections that close a page, in this order, after the extra sections of eexp/cli/man/PAGE.roff
CLOSING = ("EXAMPLES", "ENVIRONMENT", "FILES", "EXIT STATUS", "SEE ALSO")
GENERATED = ("NAME", "SYNOPSIS", "OPTIONS", "COMMANDS")  # written from the command alone, never from an extra file


def context(command: click.Command, name: str, parent: click.Context | None = None) -> click.Context:
    """The context --help would get (the group's settings, -h included), at the fixed width."""
    settings = {**(command.context_settings or {}), "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


def reference() -> str:
    top = context(cli, "eexp")
    parts = [
        "# eexp command reference",
        "",
        "Generated from `--help` by `python -m eexp.cli.reference > docs/cli.md`; the man pages in `man/` say the "
        "same at length.",
        "",
        "```",
        cli.get_help(top),
        "```",
    ]
    for name in sorted(cli.commands):
        command = cli.commands[name]
        parts += ["", f"## eexp {name}", "", "```", command.get_help(context(command, name, top)), "```"]
    return "\n".join(parts) + "\n"


# ---- man pages -------------------------------------------------------------------------------------------------

# an option named in help text: --long-name, or -x alone (not the hyphen inside a word, a path or a number)
OPTION_IN_TEXT = re.compile(r"(?<![\w/.$=-])(--[A-Za-z][\w-]*|-[A-Za-z](?![\w-]))")
COMMAND_IN_TEXT = re.compile(r"\beexp[ -]([a-z][a-z-]*[a-z])")
PAGE_REFERENCE = re.compile(r"\s*(?:\\fB)?(eexp(?:\\?-[a-z-]+)?)(?:\\fR)?\s*\(1\),?")


def escape(text: str) -> str:
    """Plain text as roff: backslashes kept, every hyphen a minus (options and commands copy as typed)."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def inline(text: str) -> str:
    """A help sentence as roff: `code` and option names in bold."""
    out = []
    for i, part in enumerate(text.split("`")):
        if i % 2:
            out.append(f"\\fB{escape(part)}\\fR")
        else:
            out.append(
                "".join(
                    f"\\fB{escape(piece)}\\fR" if j % 2 else escape(piece)
                    for j, piece in enumerate(OPTION_IN_TEXT.split(part))
                )
            )
    return "".join(out)


def safe_line(line: str) -> str:
    """A text line that roff will not read as a request (a leading . or ')."""
    return "\\&" + line if line.startswith((".", "'")) else line


def filled(text: str) -> list[str]:
    """A paragraph of help as roff source lines (filled by roff; wrapped here only to keep the source readable)."""
    lines = textwrap.wrap(inline(" ".join(text.split())), WIDTH + 10, break_long_words=False, break_on_hyphens=False)
    return [safe_line(line) for line in lines]


def verbatim(lines: list[str]) -> list[str]:
    return [".nf", *(safe_line(escape(line)) for line in lines), ".fi"]


def help_parts(command: click.Command) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """A command's help as paragraphs, each ("text" | "verbatim", lines), and the lines of its Example block."""
    paragraphs, examples = [], []
    text = inspect.cleandoc(command.help or "").split("\f")[0]
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if lines[0].strip() == "\b":
            lines = textwrap.dedent("\n".join(lines[1:])).split("\n")
            if re.fullmatch(r"Examples?:", lines[0].strip()):
                examples += textwrap.dedent("\n".join(lines[1:])).split("\n")
            else:
                paragraphs.append(("verbatim", lines))
        elif block.strip():
            paragraphs.append(("text", lines))
    return paragraphs, [line.rstrip() for line in examples]


def description(paragraphs: list[tuple[str, list[str]]]) -> list[str]:
    out = []
    for kind, lines in paragraphs:
        if out:
            out.append(".PP")
        out += filled(" ".join(lines)) if kind == "text" else [".RS 2", *verbatim(lines), ".RE"]
    return out


def option_tag(record: str) -> str:
    """`-o, --output FILE` as roff: the switches bold, the value's name italic."""
    words, tag = record.split(" "), []
    for i, word in enumerate(words):
        switch = word.rstrip(",")
        if switch.startswith("-"):
            tag.append(f"\\fB{escape(switch)}\\fR" + ("," if word.endswith(",") else ""))
        elif word == "/":
            tag.append("/")
        else:
            tag.append(f"\\fI{escape(' '.join(words[i:]))}\\fR")
            break
    return " ".join(tag)


def read_extra(page: str) -> dict[str, str]:
    """eexp/cli/man/PAGE.roff as {section title: roff}, in the file's order."""
    path = EXTRA / f"{page}.roff"
    if not path.exists():
        return {}
    sections: dict[str, list[str]] = {}
    title = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith(".SH "):
            title = line[4:].strip().strip('"')
            if title in sections or title in GENERATED:
                raise ValueError(
                    f"{path}:{number}: .SH {title}: "
                    + ("given twice" if title in sections else "generated from --help, not written here")
                )
            sections[title] = []
        elif title is not None:
            sections[title].append(line)
        elif line.strip() and not line.startswith('.\\"'):
            raise ValueError(f"{path}:{number}: text before the first .SH")
    return {title: "\n".join(lines).strip("\n") for title, lines in sections.items()}


def see_also(page: str, names: list[str], extra: str | None) -> list[str]:
    """eexp(1), then the pages the extra file lists, then the commands the help names; then the extra's text."""
    listed, text = [], []
    for line in (extra or "").splitlines():
        refs = PAGE_REFERENCE.findall(line)
        if refs and not PAGE_REFERENCE.sub("", line).strip():
            listed += [ref.replace("\\-", "-") for ref in refs]
        elif line.strip():
            text.append(line)
    pages = []
    for ref in ["eexp", *listed, *(f"eexp-{name}" for name in names)]:
        if ref != "eexp" and ref.removeprefix("eexp-") not in cli.commands:
            raise ValueError(f"eexp/cli/man/{page}.roff: SEE ALSO names {ref}(1), which is no command's page")
        if ref != page and ref not in pages:
            pages.append(ref)
    lines = [f".BR {escape(ref)} (1)" + ("," if i < len(pages) - 1 else "") for i, ref in enumerate(pages)]
    return lines + ([".PP"] if lines and text else []) + text


def man_page(page: str, command: click.Command, ctx: click.Context) -> str:
    """One man page: the command's help as roff, with what eexp/cli/man/PAGE.roff adds."""
    extra = read_extra(page)
    paragraphs, examples = help_parts(command)
    params = {opt: param for param in command.get_params(ctx) for opt in (*param.opts, *param.secondary_opts)}
    addenda = {}
    for title, body in extra.items():
        if title.startswith("OPTION "):
            if title[7:] not in params:
                raise ValueError(f"eexp/cli/man/{page}.roff: .SH {title}: {page} has no such option")
            addenda[params[title[7:]].name] = body
    name = first_sentence(command).rstrip(".")
    title = ctx.command_path
    out = [
        f'.TH {page.upper()} 1 "" "eexp {__version__}" "eexp manual"',
        f'.\\" Generated by `make docs` (python -m eexp.cli.reference --man man) from `{title} --help` and',
        f'.\\" eexp/cli/man/{page}.roff: edit those, not this file.',
        ".SH NAME",
        f"{escape(page)} \\- {inline(name)}",
        ".SH SYNOPSIS",
        f".B {escape(title)}",
        re.sub(r"\b([A-Z][A-Z_]*)\b", r"\\fI\1\\fR", " ".join(command.collect_usage_pieces(ctx))),
        ".SH DESCRIPTION",
        *description(paragraphs),
    ]
    if extra.get("DESCRIPTION"):
        out += [".PP", extra["DESCRIPTION"]]
    out.append(".SH OPTIONS")
    for param in command.get_params(ctx):
        record = None if isinstance(param, click.Argument) else param.get_help_record(ctx)
        if record is None:  # arguments are the synopsis' to name, and the description's to explain
            continue
        out += [".TP", option_tag(record[0]), *filled(record[1])]
        if param.name in addenda:
            out += [".IP", addenda[param.name]]
    if isinstance(command, click.Group):
        out += commands_section(ctx)
    for section, body in extra.items():
        if section not in CLOSING and section != "DESCRIPTION" and not section.startswith("OPTION "):
            out += [f".SH {section}", body]
    if examples or extra.get("EXAMPLES"):
        out += [".SH EXAMPLES", *(verbatim(examples) if examples else [])]
        if extra.get("EXAMPLES"):
            out += [".PP", extra["EXAMPLES"]] if examples else [extra["EXAMPLES"]]
    for section in ("ENVIRONMENT", "FILES", "EXIT STATUS"):
        if extra.get(section):
            out += [f".SH {section}", extra[section]]
    named = (
        []
        if isinstance(command, click.Group)
        else [  # eexp(1) lists every command under COMMANDS
            m for m in COMMAND_IN_TEXT.findall(command.help or "") if m in cli.commands and m != ctx.info_name
        ]
    )
    out += [".SH SEE ALSO", *see_also(page, names=named, extra=extra.get("SEE ALSO"))]
    return "\n".join(out) + "\n"


def commands_section(ctx: click.Context) -> list[str]:
    """eexp(1)'s COMMANDS: each command's page and the first sentence of its help, by stage of the pipeline."""
    group = ctx.command
    names = group.list_commands(ctx)
    sections = {**SECTIONS, "Other commands": [n for n in names if not any(n in v for v in SECTIONS.values())]}
    out = [".SH COMMANDS"]
    for title, members in sections.items():
        members = [name for name in members if name in names]
        if members:
            out.append(f".SS {title}")
            for name in members:
                out += [".TP", f".BR eexp\\-{escape(name)} (1)", *filled(first_sentence(group.commands[name]))]
    return out


def man_pages() -> dict[str, str]:
    """Every man page by file name: eexp.1 (the group) and eexp-COMMAND.1 for each command."""
    top = context(cli, "eexp")
    pages = {"eexp.1": man_page("eexp", cli, top)}
    for name in sorted(cli.commands):
        command = cli.commands[name]
        pages[f"eexp-{name}.1"] = man_page(f"eexp-{name}", command, context(command, name, top))
    unknown = sorted(p.stem for p in EXTRA.glob("*.roff") if f"{p.stem}.1" not in pages)
    if unknown:
        raise ValueError(f"eexp/cli/man/: {', '.join(unknown)}.roff: no such command")
    return pages


def stale_pages(folder: Path) -> list[str]:
    """The pages in folder that differ from what the commands' help makes now: stale, missing, or of a command that is
    gone (what tests/test_docs.py checks of man/)."""
    pages = man_pages()
    held = {path.name: path.read_text() for path in folder.glob("eexp*.1")}
    return sorted(name for name in pages.keys() | held.keys() if pages.get(name) != held.get(name))


def write_man_pages(folder: Path) -> list[str]:
    """Write every page into folder, and remove a page there of a command that is gone; the names written."""
    pages = man_pages()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("eexp*.1"):
        if stale.name not in pages:
            stale.unlink()
    for name, text in pages.items():
        path = folder / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return sorted(pages)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--man"] and len(sys.argv) == 3:
        write_man_pages(Path(sys.argv[2]))
    elif len(sys.argv) == 1:
        click.echo(reference(), nl=False)
    else:
        sys.exit("usage: python -m eexp.cli.reference [--man FOLDER]")
