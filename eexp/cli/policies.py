"""`eexp doctor`: check that a GGUF renders and tokenizes conversations exactly as its training tokenizer does."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import click
import orjson

from eexp.cli.group import cli
from eexp.cli.options import config_option, field_options
from eexp.errors import PolicyError
from eexp.fields import setting
from eexp.policies import policy_kind


@dataclass(frozen=True, kw_only=True)
class DoctorSettings:
    """doctor's options, a default and a help written once (made into click options by field_options)."""

    policy_spec: str = setting(
        help="The GGUF to check (e.g. the output of eexp export).", flag="--policy", metavar="MODEL.gguf", required=True
    )
    tokenizer: str | None = setting(
        None,
        "The transformers checkpoint (tokenizer and chat template) it was made from. Default: the checkpoint named in "
        "the GGUF's eexp.source metadata.",
        metavar="DIR",
    )
    as_json: bool = setting(False, "Print the checks as one JSON object instead of lines.", flag="--json")


@cli.command()
@field_options(DoctorSettings, "policy_spec", "tokenizer", "as_json")
@config_option
def doctor(policy_spec, tokenizer, as_json):
    """Compare how a GGUF and its transformers tokenizer see one conversation.

    The conversation (system, user, assistant, user) is rendered with the tokenizer's chat template and with the
    template stored in the GGUF, tokenized on each side, and compared token by token; BOS (none, one, never two)
    and EOS (the token that ends an assistant turn must stop generation) are compared too. Any difference means
    the model would see prompts at inference that it never saw in training. Exit status 1 on a difference.

    It also prints the CPU features llama.cpp's kernels depend on and whether weights may be repacked into extra
    buffer types (off on CPUs with AMX, where quantized models crash otherwise).

    \b
    Example:
      eexp export models/il -o il.q8_0.gguf --quant q8_0
      eexp doctor --policy il.q8_0.gguf --tokenizer models/il
    """
    import os

    from eexp.policies.doctor import doctor as run_doctor

    if policy_kind(policy_spec) != "gguf":
        raise click.BadParameter(
            "doctor compares a GGUF file with its tokenizer; give --policy MODEL.gguf", param_hint="--policy"
        )
    if not os.path.isfile(policy_spec):
        raise PolicyError(f"{policy_spec}: no such GGUF file")
    checks, summary = run_doctor(policy_spec, tokenizer)
    if as_json:
        out = {**summary, "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]}
        sys.stdout.buffer.write(orjson.dumps(out) + b"\n")
    else:
        click.echo(f"gguf:      {summary['gguf']} ({summary['architecture']})")
        click.echo(f"tokenizer: {summary['tokenizer']}")
        click.echo(f"cpu:       {' '.join(summary['cpu_flags']) or 'no flags reported'}")
        click.echo(f"llama.cpp: {summary['buffers']}")
        for c in checks:
            click.echo(c.line())
        failed = sum(not c.ok for c in checks)
        click.echo("all checks agree" if not failed else f"{failed} difference(s)")
    if not summary["ok"]:
        if as_json:
            click.get_current_context().exit(1)
        raise PolicyError("the GGUF and the tokenizer disagree (see above)")
