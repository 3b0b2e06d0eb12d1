"""The `eexp` click group itself: its help (the commands by `SECTIONS`), `--version`, how eexp's errors become
`Error: ...` and exit codes, and `main`. The command modules import `cli` from here to register on it;
eexp/cli/__init__.py imports them all, so the group has every command once `eexp.cli` is imported."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import click

from eexp import __version__
from eexp.errors import EexpError, Terminated
from eexp.workers import sigterm_raises

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _stdout_to_devnull() -> None:
    """The reader went away (`eexp ... | head`): point stdout at /dev/null so the interpreter's final flush does
    not raise again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# The commands as `eexp` and `eexp --help` list them: in the order of the pipeline, not the alphabet's.
SECTIONS = {
    "Collect experience": ["envs", "expert", "curate", "branch", "rollout", "alfworld-games"],
    "Make training data": [
        "imitation-data",
        "world-model-data",
        "reflect",
        "preference-data",
        "critic-data",
        "mix",
        "corpus",
    ],
    "Models": ["init-model", "import-model", "finetune", "rl", "export", "merge"],
    "Evaluate and check": ["eval", "critic-eval", "world-model-eval", "doctor", "validate"],
}
# What `--version` reports besides eexp's own version: the packages that decide what eexp can do here.
VERSION_PACKAGES = ("torch", "transformers", "peft", "llama-cpp-python")


def version_text() -> str:
    """eexp's version, then Python's and those of the packages that decide what runs here (read from their
    metadata, without importing them)."""
    found = []
    for name in VERSION_PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return f"eexp, version {__version__}\npython {platform.python_version()} ({sys.executable}); {', '.join(found)}"


def first_sentence(command: click.Command, most: int = 110) -> str:
    """The first sentence of a command's help; past `most` characters, what comes before its first colon."""
    text = " ".join((command.help or "").split("\n\n")[0].split())
    end = text.find(". ")
    text = text[: end + 1] if end >= 0 else text
    return text.split(": ", 1)[0] if len(text) > most and ": " in text else text


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit()


class Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        listed = [name for names in SECTIONS.values() for name in names if name in self.commands]
        return listed + sorted(set(self.commands) - set(listed))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands by section, each with the first sentence of its help, whole (wrapped, never cut)."""
        names = self.list_commands(ctx)
        sections = {**SECTIONS, "Other commands": [n for n in names if not any(n in v for v in SECTIONS.values())]}
        for title, members in sections.items():
            rows = [(name, first_sentence(self.commands[name])) for name in members if name in names]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EexpError as e:  # the one place eexp's errors become `Error: message` and their exit code
            message = "\n".join([str(e), *getattr(e, "__notes__", ())])  # notes: what the run left, on lines below
            error = click.UsageError(message) if e.exit_code == 2 else click.ClickException(message)
            error.exit_code = e.exit_code
            raise error from None
        except BrokenPipeError:
            # click itself turns a broken pipe into exit 1; a reader that stops early is not an error of ours
            _stdout_to_devnull()
            sys.exit(0)
        except KeyboardInterrupt:
            # click's main answers a KeyboardInterrupt with a blank line on stderr before its Abort; main says
            # `eexp: interrupted` on its own line, ending a progress bar's line first where one is drawn
            raise click.exceptions.Abort() from None


def _end_progress_line() -> None:
    """A progress bar still open on the terminal (tqdm draws its line on stderr without a newline; a closed bar has
    ended its line itself) gets its line ended, so the next message starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None and any(not bar.disable for bar in list(tqdm.tqdm._instances)):
        click.echo(err=True)


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS, invoke_without_command=True)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version of eexp, Python and the packages eexp runs on, and exit.",
)
@click.pass_context
def cli(ctx: click.Context):
    """Train language agents from their own early experience (arXiv 2510.08558).

    Stages read JSON Lines (files, or stdin when none or `-`) and write JSON Lines to stdout (or -o FILE):

    \b
      eexp expert --env shop -n 100 > expert.jsonl
      eexp imitation-data expert.jsonl > il.jsonl
      eexp branch -k 8 expert.jsonl | eexp rollout | eexp world-model-data > iwm.jsonl

    Exit codes: 0 success, 1 bad input or runtime error (also a run whose environment errors or failed policy
    requests pass 5% of its records, once every record is written), 2 usage error, 130 interrupted (Ctrl-C), 143
    terminated (SIGTERM).
    Every command has --help with an example, and a man page (man eexp-COMMAND).
    """
    if ctx.invoked_subcommand is None:  # `eexp` alone: this overview, on stdout, as a successful run
        click.echo(ctx.get_help())


def main() -> None:
    """Entry point: exit codes and signals as DESIGN.md says (1 error, 2 usage, 130 Ctrl-C, 143 SIGTERM, quiet
    broken pipe)."""
    with sigterm_raises():  # SIGTERM stops every stage as Ctrl-C does, with worker processes or without
        try:
            rv = cli.main(prog_name="eexp", standalone_mode=False)
            sys.stdout.flush()
        except click.exceptions.Abort:
            _end_progress_line()
            click.echo("eexp: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except BrokenPipeError:  # at the final flush
            _stdout_to_devnull()
            sys.exit(0)
        except Terminated:  # SIGTERM (sigterm_raises): the stage stopped as on Ctrl-C, its lines whole
            click.echo("eexp: terminated", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            _end_progress_line()
            click.echo("eexp: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)
