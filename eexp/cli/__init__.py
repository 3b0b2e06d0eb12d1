"""The `eexp` command: one click group; each subcommand lives in the module of its concept and stays thin."""

from __future__ import annotations

import os
import sys

import click

from eexp import __version__
from eexp.errors import EexpError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _stdout_to_devnull() -> None:
    """The reader went away (`eexp ... | head`): point stdout at /dev/null so the interpreter's final flush does
    not raise again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EexpError as e:  # the one place eexp's errors become `Error: message` and their exit code
            error = click.UsageError(str(e)) if e.exit_code == 2 else click.ClickException(str(e))
            error.exit_code = e.exit_code
            raise error from None
        except BrokenPipeError:
            # click itself turns a broken pipe into exit 1; a reader that stops early is not an error of ours
            _stdout_to_devnull()
            sys.exit(0)


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="eexp")
def cli():
    """Train language agents from their own early experience (arXiv 2510.08558).

    Stages read JSON Lines (files, or stdin when none or `-`) and write JSON Lines to stdout (or -o FILE):

    \b
      eexp expert --env shop -n 100 > expert.jsonl
      eexp imitation-data expert.jsonl > il.jsonl
      eexp branch -k 8 expert.jsonl | eexp rollout | eexp world-model-data > iwm.jsonl

    Exit codes: 0 success, 1 bad input or runtime error, 2 usage error, 130 interrupted.
    """


def main() -> None:
    """Entry point: exit codes and signals as DESIGN.md says (1 error, 2 usage, 130 Ctrl-C, quiet broken pipe)."""
    try:
        rv = cli.main(prog_name="eexp", standalone_mode=False)
        sys.stdout.flush()
    except click.exceptions.Abort:
        click.echo("eexp: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BrokenPipeError:  # at the final flush
        _stdout_to_devnull()
        sys.exit(0)
    except KeyboardInterrupt:
        click.echo("eexp: interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


# Register the commands (each module adds its own to `cli`).
from eexp.cli import data  # noqa: E402,F401
from eexp.cli import envs  # noqa: E402,F401
from eexp.cli import models  # noqa: E402,F401
from eexp.cli import evaluate  # noqa: E402,F401
from eexp.cli import reflect  # noqa: E402,F401
from eexp.cli import experience  # noqa: E402,F401
from eexp.cli import train  # noqa: E402,F401
from eexp.cli import policies  # noqa: E402,F401
from eexp.cli import corpus  # noqa: E402,F401
from eexp.cli import rl  # noqa: E402,F401
