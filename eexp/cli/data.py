"""Commands that turn records into training examples and check them: imitation-data, world-model-data, mix,
validate. No model and no environment needed."""

from __future__ import annotations

import importlib
import sys
from collections import Counter

import click

from eexp.cli import cli
from eexp.cli.options import UserError, config_option, serializer_options, stage_options
from eexp.io import Reader, StageIO
from eexp.records import KIND_NAMES, expect, kind_of, validate as validate_record
from eexp.stages.imitation import imitation_examples
from eexp.stages.mix import mix, parse_source
from eexp.stages.world_model import world_model_examples


@cli.command("imitation-data")
@stage_options
@serializer_options
@click.option("--include-failed", is_flag=True, help="Also imitate trajectories that did not succeed.")
@click.option("--observation-loss", is_flag=True,
              help="The ActObs baseline: each example also trains on the next observation (a user turn asks for "
              "it, an assistant turn `Observation: ...` answers), so finetune puts loss on observation tokens too.")
@click.option("--observation-weight", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              metavar="W", help="With --observation-loss: loss weight of the observation turn (the action's is 1).")
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
    io.run(lambda t: imitation_examples(t, serializer, include_failed, io.count, observation_loss=observation_loss,
                                        observation_weight=observation_weight),
           validate=expect("trajectory"), output_kind="example")
    if io.stats.counts.get("unsuccessful_skipped"):
        click.echo(f"eexp: {io.stats.counts['unsuccessful_skipped']} unsuccessful trajectories not imitated "
                   "(--include-failed keeps them)", err=True)


def _load_summarizer(spec: str | None):
    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name or "summarize")
    except (ImportError, AttributeError) as e:
        raise click.BadParameter(f"cannot load {spec!r}: {e}", param_hint="--summarizer")


@cli.command("world-model-data")
@stage_options
@serializer_options
@click.option("--max-chars", type=int, default=0, help="Clip each next observation to this many characters "
              "(0: no limit).")
@click.option("--summarizer", metavar="MODULE:FUNCTION", help="Python function (next_observation, state, action) "
              "-> str that replaces each next observation by a summary, for long or noisy observations.")
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
    io.run(lambda o: world_model_examples(o, serializer, max_chars, summarize, io.count), validate=expect("outcome"),
           output_kind="example")


@cli.command("mix", context_settings={"ignore_unknown_options": True})  # so `-:3` (stdin, weight 3) is a source
@click.argument("sources", nargs=-1, required=True, metavar="FILE[:WEIGHT]...")
@click.option("-o", "--output", default="-", metavar="FILE", help="Write here instead of stdout.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the interleave and the shuffle.")
@click.option("--concat", is_flag=True, help="Plain concatenation in the order given (the paper's SR + IL).")
@click.option("--shuffle-buffer", type=click.IntRange(min=0), default=0, metavar="N",
              help="Shuffle within a buffer of N records (bounded memory).")
@click.option("--dedup", is_flag=True, help="Drop examples whose messages were already written.")
@click.option("--limit", type=click.IntRange(min=0), help="Stop after this many examples.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True)
@click.option("--stats", metavar="FILE", help="Write a JSON summary of the run here.")
@config_option
def mix_command(sources, output, seed, concat, shuffle_buffer, dedup, limit, on_error, stats):
    """Interleave example files; a weight is a sampling ratio (a file without :WEIGHT has weight 1).

    A file that runs out drops out, so without --limit every example is written once. `-` is stdin.

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
    io = StageIO(output=output, on_error=on_error, stats=stats, quiet=True, resumable=False)
    check = expect("example")
    io.write(mix([(io.read([path], validate=check), w) for path, w in parsed], seed=seed, concat=concat,
                 shuffle_buffer=shuffle_buffer, dedup=dedup, limit=limit, count=io.count))


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--kind", type=click.Choice(sorted(KIND_NAMES)), help="Require this kind of record.")
@click.option("-q", "--quiet", is_flag=True, help="Print only problems.")
def validate(files, kind, quiet):
    """Check files of records: say what kind each file holds and what is wrong, as FILE:LINE.

    Exits 1 if any record is invalid.

    \b
    Example:
      eexp validate expert.jsonl outcomes.jsonl sr.jsonl
    """
    bad = 0
    for path in files:
        kinds: Counter = Counter()
        reader = Reader([path], on_error="skip", warn=lambda msg: click.echo(msg.replace("skipping ", ""),
                                                                                   err=True))
        for item in reader:
            found = kind_of(item.record)
            if kind and found != kind:
                problem = f"expected {KIND_NAMES[kind]}, got {KIND_NAMES.get(found, 'a record of no known kind')}"
            elif found is None:
                problem = "not a record of any kind eexp knows (trajectory, branch, outcome, example, episode, " \
                          "summary)"
            else:
                problem = validate_record(item.record, found)
            if problem:
                bad += 1
                click.echo(f"{item.path}:{item.line}: {problem}", err=True)
            else:
                kinds[found] += 1
        bad += reader.skipped
        if not quiet:
            listing = ", ".join(f"{n} {k}" for k, n in kinds.most_common()) or "no valid records"
            click.echo(f"{path}: {listing}" + (f"; {reader.skipped} unreadable line(s)" if reader.skipped else ""))
    if bad:
        raise UserError(f"{bad} invalid record(s)")
