"""Commands that turn records into training examples and check them: imitation-data, world-model-data,
preference-data, critic-data, mix, validate. No model and no environment needed."""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass

import click

from eexp.cli.group import cli
from eexp.cli.options import config_option, field_options, serializer_options, stage_options
from eexp.errors import InputError, first_line
from eexp.fields import setting
from eexp.io import Reader, refuse_writing_an_input
from eexp.records import KIND_NAMES, expect, kind_of
from eexp.records import validate as validate_record
from eexp.runner import StageIO
from eexp.stages.critic import critic_examples
from eexp.stages.imitation import imitation_examples
from eexp.stages.mix import mix, parse_source
from eexp.stages.preference import REJECTED, preference_pairs
from eexp.stages.world_model import world_model_examples

# Each command's own options, a default and a help written once (eexp.fields.setting; the click options are made from
# the fields by eexp.cli.options.field_options). The options every stage shares come from eexp.cli.options' bundles.


@dataclass(frozen=True)
class ImitationDataSettings:
    include_failed: bool = setting(False, "Also imitate trajectories that did not succeed.")
    observation_loss: bool = setting(
        False,
        "The ActObs baseline: each example also trains on the next observation (a user turn asks for it, an "
        "assistant turn `Observation: ...` answers), so finetune puts loss on observation tokens too.",
    )
    observation_weight: float = setting(
        1.0,
        "With --observation-loss: loss weight of the observation turn (the action's is 1).",
        metavar="W",
        min=0,
        min_open=True,
    )


@dataclass(frozen=True)
class WorldModelDataSettings:
    max_chars: int = setting(0, "Clip each next observation to this many characters (0: no limit).", show_default=False)
    summarizer: str | None = setting(
        None,
        "Python function (next_observation, state, action) -> str that replaces each next observation by a "
        "summary, for long or noisy observations.",
        metavar="MODULE:FUNCTION",
    )


def _rejected(side: str):
    """--rejected of preference-data and critic-data: which executed alternatives count against the expert's."""
    return setting(
        "all",
        f"Which executed alternatives are {side}: invalid (the environment refused them), no-progress (invalid, "
        "changed nothing, or ended the episode where the expert's action did not or with less reward), or all of "
        "them.",
        choices=REJECTED,
    )


@dataclass(frozen=True)
class PreferenceDataSettings:
    rejected: str = _rejected("the rejected side")


@dataclass(frozen=True)
class CriticDataSettings:
    rejected: str = _rejected("the `No` examples")
    balance: bool = setting(
        True,
        "Give the expert's example loss weight n, the number of `No` examples of its state, so each state weighs "
        "`Yes` and `No` alike (finetune reads the weight of an assistant turn).",
        flag="--balance/--no-balance",
    )


@dataclass(frozen=True)
class MixSettings:
    output: str = setting("-", "Write here instead of stdout.", short="-o", metavar="FILE", show_default=False)
    seed: int = setting(0, "Seed of the interleave and the shuffle.")
    concat: bool = setting(False, "Plain concatenation in the order given (the paper's SR + IL); weights are ignored.")
    shuffle_buffer: int = setting(
        0, "Shuffle within a buffer of N records (bounded memory).", metavar="N", min=0, show_default=False
    )
    dedup: bool = setting(False, "Drop examples whose messages were already written.")
    limit: int | None = setting(None, "Stop after this many examples.", min=0)
    on_error: str = setting(
        "fail", "On a bad input record: stop (exit 1), or skip it and count it.", choices=["fail", "skip"]
    )
    stats: str | None = setting(None, "Write a JSON summary of the run here.", metavar="FILE")


@dataclass(frozen=True)
class ValidateSettings:
    kind: str | None = setting(None, "Require this kind of record.", choices=sorted(KIND_NAMES))
    quiet: bool = setting(False, "Print only problems.", short="-q")


@cli.command("imitation-data")
@stage_options
@serializer_options
@field_options(ImitationDataSettings, "include_failed", "observation_loss", "observation_weight")
def imitation_data(io, serializer, include_failed, observation_loss, observation_weight):
    """Trajectories -> one imitation-learning example per expert step (state -> `Action: <expert action>`).

    With --observation-loss (ActObs: imitation with a loss on the observations, no new data, no alternatives) the
    conversation goes on after the action: a user turn asks what the environment shows, and the assistant turn
    `Observation: <next observation>` (the one the trajectory recorded, clipped to --max-observation-chars) is a
    training target too. The policy prompt is the IL prompt unchanged; ids are `ilobs:<trajectory id>#<step>`, meta
    kind `il-obs`, meta.extra records the option and the weight.

    \b
    Examples:
      eexp expert --env shop -n 100 | eexp imitation-data > il.jsonl
      eexp imitation-data --observation-loss expert.jsonl -o il_obs.jsonl
    """
    if observation_weight != 1.0 and not observation_loss:
        raise click.UsageError("--observation-weight is the weight of the observation turn: give --observation-loss")
    io.run(
        lambda t: imitation_examples(
            t,
            serializer,
            include_failed,
            io.count,
            observation_loss=observation_loss,
            observation_weight=observation_weight,
        ),
        validate=expect("trajectory"),
        output_kind="example",
    )
    if io.stats.counts.get("unsuccessful_skipped"):
        click.echo(
            f"eexp: {io.stats.counts['unsuccessful_skipped']} unsuccessful trajectories not imitated "
            "(--include-failed keeps them)",
            err=True,
        )


def _load_summarizer(spec: str | None):
    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name or "summarize")
    except Exception as e:  # the user's module: not found, or broken (a SyntaxError, an error at import)
        raise click.BadParameter(
            f"cannot load {spec!r}: {type(e).__name__}: {first_line(e)}", param_hint="--summarizer"
        )


@cli.command("world-model-data")
@stage_options
@serializer_options
@field_options(WorldModelDataSettings, "max_chars", "summarizer")
def world_model_data(io, serializer, max_chars, summarizer):
    """Outcome records -> one implicit-world-modeling example per transition (state + action -> next observation).

    The expert transition is included and invalid actions are kept (the error message is the next state). The
    examples have their own system prompt and an `Observation: ...` target, so a model trained on them still
    answers with an action where an action is asked.

    \b
    Example:
      eexp branch -k 8 expert.jsonl | eexp rollout | eexp world-model-data > iwm.jsonl
    """
    summarize = _load_summarizer(summarizer)
    io.run(
        lambda o: world_model_examples(o, serializer, max_chars, summarize, io.count),
        validate=expect("outcome"),
        output_kind="example",
    )
    check_alternatives(io.stats.counts.get("no_alternatives", 0), io.stats.records_in)


def check_alternatives(without: int, states: int) -> None:
    """World-model data is about what the expert did not do: states without an executed alternative are counted
    and said, and a file where no state has one is an error (its examples are the expert's transitions alone)."""
    hint = (
        "branch proposes none where a state lists no admissible actions: propose with a model (branch --propose policy)"
    )
    if states and without == states:
        raise InputError(
            f"none of the {states} states has an alternative action, so these examples are the expert's "
            f"transitions alone, not world-model data; {hint}"
        )
    if without:
        click.echo(
            f"eexp: {without} of {states} states have no alternative action (their example is the expert "
            f"transition alone; no_alternatives in --stats); {hint}",
            err=True,
        )


@cli.command("preference-data")
@stage_options
@serializer_options
@field_options(PreferenceDataSettings, "rejected")
def preference_data(io, serializer, rejected):
    """Outcome records -> preference pairs: the state, the expert action chosen, an executed alternative rejected.

    The reward-free assumption of SR: at an expert state the expert's action is the better one. The prompt is the
    policy prompt imitation-data and eval render (the same serializer options give the same messages); chosen and
    rejected are one assistant message each, `Action: ...`: the conversational shape TRL's DPOTrainer reads as it is,
    and `eexp finetune --objective dpo` trains on. One pair per alternative --rejected takes; ids are
    `pref:<outcome id>:<j>`, j the alternative's index; meta says which alternative and why (meta.reason).

    \b
    Examples:
      eexp branch -k 4 expert.jsonl | eexp rollout | eexp preference-data > pairs.jsonl
      eexp preference-data --rejected no-progress outcomes.jsonl -o pairs.jsonl
    """
    io.run(
        lambda o: preference_pairs(o, serializer, rejected, io.count),
        validate=expect("outcome"),
        output_kind="preference",
    )
    if io.stats.records_in and not io.stats.records_out and not io.stats.counts.get("resumed"):
        click.echo(
            f"eexp: no preference pairs: none of the {io.stats.records_in} states has an executed "
            f"alternative that --rejected {rejected} takes (see --stats)",
            err=True,
        )


@cli.command("critic-data")
@stage_options
@serializer_options
@field_options(CriticDataSettings, "rejected", "balance")
def critic_data(io, serializer, rejected, balance):
    """Outcome records -> critic examples: the state and a proposed action -> `Yes` (the expert's) or `No`.

    One example for the expert action and one per executed alternative --rejected takes, at every state that has
    such an alternative. The prompt is the critic's own system prompt, then the state exactly as imitation-data
    renders it (the same serializer options give the same text) and `Proposed action: <action>`; the answer is one
    word, `Yes` or `No`. Train with `eexp finetune` as it is; `eexp critic-eval` measures the result and
    eexp.policies.critic.Critic uses it. Ids are `critic:<outcome id>:expert` and `critic:<outcome id>:<j>`, j the
    alternative's index; meta.extra says the verdict, the alternative, why it counts and its weight.

    \b
    Examples:
      eexp branch -k 4 expert.jsonl | eexp rollout | eexp critic-data > critic.jsonl
      eexp finetune critic.jsonl --model IL -o critic
      eexp critic-data --rejected no-progress --no-balance outcomes.jsonl -o critic.jsonl
    """
    io.run(
        lambda o: critic_examples(o, serializer, rejected, balance, io.count),
        validate=expect("outcome"),
        output_kind="example",
    )
    if io.stats.records_in and not io.stats.records_out and not io.stats.counts.get("resumed"):
        click.echo(
            f"eexp: no critic examples: none of the {io.stats.records_in} states has an executed "
            f"alternative that --rejected {rejected} takes (see --stats)",
            err=True,
        )


@cli.command("mix", context_settings={"ignore_unknown_options": True})  # so `-:3` (stdin, weight 3) is a source
@click.argument("sources", nargs=-1, required=True, metavar="FILE[:WEIGHT]...")
@field_options(MixSettings, "output", "seed", "concat", "shuffle_buffer", "dedup", "limit", "on_error", "stats")
@config_option
def mix_command(sources, output, seed, concat, shuffle_buffer, dedup, limit, on_error, stats):
    """Interleave example files; a weight is a sampling ratio (a file without :WEIGHT has weight 1).

    A file that runs out drops out, so without --limit every example is written once (with --dedup, every distinct
    one). `-` is stdin.

    \b
    Examples:
      eexp mix il.jsonl:3 iwm.jsonl:1 --shuffle-buffer 10000 > train.jsonl
      eexp mix --concat il.jsonl sr.jsonl > sr_train.jsonl
      eexp imitation-data < expert.jsonl | eexp mix -:1
    """
    for source in sources:
        if source.startswith("-") and source != "-" and not source.startswith("-:"):
            raise click.NoSuchOption(source.split("=")[0])
    try:
        parsed = [parse_source(s) for s in sources]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="SOURCES")
    refuse_writing_an_input(output, [path for path, _ in parsed])
    io = StageIO(output=output, on_error=on_error, stats=stats, quiet=True, resumable=False)
    check = expect("example")
    io.write(
        mix(
            [(io.read([path], validate=check), w) for path, w in parsed],
            seed=seed,
            concat=concat,
            shuffle_buffer=shuffle_buffer,
            dedup=dedup,
            limit=limit,
            count=io.count,
        )
    )


@cli.command()
@click.argument("files", nargs=-1, required=True)
@field_options(ValidateSettings, "kind", "quiet")
def validate(files, kind, quiet):
    """Check files of records: say what kind each file holds and what is wrong, as FILE:LINE.

    Exits 1 if any record is invalid.

    \b
    Example:
      eexp validate expert.jsonl outcomes.jsonl sr.jsonl
    """
    bad = unread = 0
    for path in files:
        kinds: Counter = Counter()
        reader = Reader([path], on_error="skip", warn=lambda msg: click.echo(msg.replace("skipping ", ""), err=True))
        try:  # streamed: a file of any size
            for item in reader:
                found = kind_of(item.record)
                if kind and found != kind:
                    problem = f"expected {KIND_NAMES[kind]}, got {KIND_NAMES.get(found, 'a record of no known kind')}"
                elif found is None:
                    problem = (
                        "not a record of any kind eexp knows (trajectory, branch, outcome, example, preference "
                        "pair, episode, summary, world-model prediction)"
                    )
                else:
                    problem = validate_record(item.record, found)
                if problem:
                    bad += 1
                    click.echo(f"{item.path}:{item.line}: {problem}", err=True)
                else:
                    kinds[found] += 1
        except InputError as e:  # a file that cannot be read at all (missing, a directory, empty): said, and on
            click.echo(str(e), err=True)
            unread += 1
            continue
        bad += reader.skipped
        if not quiet:
            listing = ", ".join(f"{n} {k}" for k, n in kinds.most_common()) or "no valid records"
            click.echo(f"{path}: {listing}" + (f"; {reader.skipped} unreadable line(s)" if reader.skipped else ""))
    if bad or unread:
        said = [f"{bad} invalid record(s)"] if bad else []
        said += [f"{unread} file(s) that could not be read"] if unread else []
        raise InputError("; ".join(said))
