"""`eexp world-model-eval`: how well a model predicts the next state of held-out outcome records, in the prompt
format IWM trains (eexp.stages.world_model_eval)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import click
import orjson

from eexp.cli.group import cli
from eexp.cli.options import (
    check_requests,
    concurrency_option,
    count_requests,
    explicit_serializer_settings,
    field_options,
    policy_options,
    policy_or_default,
    sampling_options,
    serializer_options,
    stage_options,
)
from eexp.errors import UsageProblem
from eexp.fields import setting
from eexp.io import Reader, read_records, write_atomic
from eexp.policies import load_policy, policy_kind
from eexp.policies.base import resolve_concurrency
from eexp.records import expect, kind_of
from eexp.stages.evaluate.settings import resolve_serializer
from eexp.stages.reflect import policy_writer
from eexp.stages.world_model_compare import compare_predictions, format_predictions_comparison, read_predictions
from eexp.stages.world_model_eval import Settings, WorldModelEval, format_summary, summarize


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """world-model-eval's options about the run rather than a prediction (those are eexp.stages.world_model_eval's
    Settings): a default and a help written once (made into click options by field_options)."""

    summary_path: str | None = setting(
        None,
        "Write the summary JSON here: per environment the counts, the rates with their 95% Wilson intervals and the "
        "mean token F1 with its 95% bootstrap interval, and which effect fields could be scored (with --compare: the "
        "comparison).",
        flag="--summary",
        metavar="FILE",
    )
    compare: bool = setting(
        False,
        "Compare prediction files (INPUT...: what world-model-eval -o wrote) instead of predicting; NAME=FILE,FILE,... "
        "groups the runs (seeds) of one model.",
    )


@cli.command("world-model-eval")
@stage_options
@policy_options(settings=Settings, chooses_actions=False)
@serializer_options(build=False)  # the model's recorded settings, overridden by those given
@field_options(Settings, "max_chars")
@sampling_options(k=False, settings=Settings)  # greedy by default: the model's most likely next state
@concurrency_option("predictions")
@field_options(RunSettings, "summary_path", "compare")
def world_model_eval(
    io, policy_spec, policy_args, max_tokens, top_p, max_chars, seed, temperature, concurrency, summary_path, compare
):
    """Measure how well a model predicts the next state of outcome records, in the prompt IWM trains.

    One record per prediction, a summary per environment. For every transition world-model-data makes an IWM example of
    (the expert's action and each executed
    alternative of every outcome record), the model is asked that example's prompt, exactly: the same serializer
    (the settings recorded with the model, overridden by any serializer option given here), the world-model system
    prompt, the state and `Action: <action>`. Its answer is scored against the example's target, the observation
    the environment really showed: `exact` (equal once the `Observation:` label is taken off and the surrounding
    whitespace stripped, as the serializer writes a target; nothing else normalised), `f1` (token-level F1: text
    case folded, every run of letters, digits and underscores one token and every other non-space character one
    token, counted as multisets), and the action's effect where the record can say it: `changed` (whether the
    prediction differs from the current observation, against whether the recorded next observation does,
    whitespace-normalised) and `valid` (whether the environment accepted the action, read from the
    prediction by the environment's refusal reply where that has a fixed form: alfworld, scienceworld, shop,
    miniwob, tau2). Whether the episode ended is in the record but not in an IWM target, so it is not scored.

    Give it outcomes the model was not trained on (held-out tasks). Greedy by default (--temperature 0); each
    prediction's seed is derive_seed(--seed, its example id, 0). Records are flushed one per prediction, in input
    order whatever --concurrency; a failed request is recorded (its finish_reason says so) and left out of the
    scores. The summary (stderr, and --summary FILE) gives per environment the exact-match rate, the share of
    replies in the `Observation:` format and the effect rates with their 95% Wilson intervals, the mean F1 with a
    seeded bootstrap interval, the same for the expert's and the alternatives' transitions, and the counts.

    With --compare, INPUT are prediction files of earlier runs (-o FILE) of the same outcome records, compared as
    eval --compare compares episode files: per environment a row per model (its predictions, failed requests, the
    exact-match rate with its 95% Wilson interval, the mean F1 with its bootstrap interval, the share of labelled
    answers), and each model tested against the first over the transitions both predicted (the same prediction
    ids; those only one has are left out and counted, failed requests too): exact match by McNemar's exact test,
    the difference in mean F1 by a seeded paired bootstrap. NAME=FILE,FILE,... (or a quoted glob) names one model's
    runs, one file per seed, pooled into one row and tested over transitions x seeds (an exact sign-flip test on
    the exact matches summed over seeds), and over seeds where both have the same number of files (file i against
    file i, on exact match: as eval --compare).

    --resume continues a file only with the run that began it (model, decoding, serializer) and the input it was
    begun from: the predictions it holds for an outcome it skips must show that outcome's prompts and targets.

    \b
    Examples:
      eexp expert --env shop --split test -n 50 | eexp branch -k 4 | eexp rollout > heldout.jsonl
      eexp world-model-eval --policy IWM/ heldout.jsonl --summary iwm.json > iwm_predictions.jsonl
      eexp world-model-eval --policy http://127.0.0.1:8080/v1 --concurrency 16 heldout.jsonl -o p.jsonl
      eexp world-model-eval --compare il_predictions.jsonl iwm_predictions.jsonl --summary cmp.json
      eexp world-model-eval --compare IL=il-s0.jsonl,il-s1.jsonl,il-s2.jsonl IWM='iwm-s*.jsonl'
    """
    ctx = click.get_current_context()
    if compare:
        return run_compare(ctx, io, seed, summary_path)
    policy_spec = policy_or_default(policy_spec, "world-model-eval needs the model whose predictions to score")
    if policy_kind(policy_spec) == "baseline":
        raise click.UsageError(f"the {policy_spec} policy writes no text: give a model with --policy")
    settings = Settings(max_chars=max_chars, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    policy = load_policy(policy_spec, policy_args, max_tokens=max_tokens, top_p=top_p)
    try:
        concurrency = resolve_concurrency(policy, concurrency)
        serializer = resolve_serializer(policy.serializer_settings(), explicit_serializer_settings(ctx))
        described = policy.describe()
        model = {
            "model": described.get("model", policy_spec),
            "model_sha256": described.get("model_sha256", ""),
            "policy": policy_spec,
        }
        count_requests(io, policy)
        stage = WorldModelEval(
            predict=policy_writer(policy, settings),
            serializer=serializer,
            settings=settings,
            model=model,
            count=io.count,
            concurrency=concurrency,
            keep=io.output in (None, "-"),
        )
        if io.resume:
            check_resumed_run(io.output, stage.run)
        io.run(stage, validate=expect("outcome"), unit="state", output_kind="prediction", made_from=stage.made_from())
    finally:
        policy.close()
    records = stage.kept if io.output in (None, "-") else list(read_records([io.output]))
    summary = summarize(records, seed=seed)
    click.echo(format_summary(summary), err=True)
    if summary_path:
        write_atomic(summary_path, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    check_requests(policy, policy_spec)


# what --compare reads besides its INPUTs: the rest is for predicting
COMPARE_OPTIONS = {"inputs", "output", "on_error", "quiet", "config", "seed", "summary_path", "compare"}


def run_compare(ctx: click.Context, io, seed: int, summary_path: str | None) -> None:
    """--compare: the table of prediction files on stdout (or -o FILE), the comparison in --summary FILE."""
    for param in ctx.command.params:
        if (
            param.expose_value
            and param.name not in COMPARE_OPTIONS
            and ctx.get_parameter_source(param.name) != click.core.ParameterSource.DEFAULT
        ):
            raise click.UsageError(f"--compare reads prediction files; it takes no {max(param.opts, key=len)}")
    if not ctx.params["inputs"]:
        raise click.UsageError(
            "--compare needs the prediction files to compare (eexp world-model-eval --compare A.jsonl B.jsonl ...)"
        )
    result = compare_predictions(read_predictions(io.inputs, on_error=io.on_error), seed=seed)
    table = format_predictions_comparison(result)
    if io.output in (None, "-"):
        click.echo(table, nl=False)
    else:
        write_atomic(io.output, table.encode())
    if summary_path:
        write_atomic(summary_path, orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")


def check_resumed_run(path: str, run: str) -> None:
    """--resume continues a file only with the run that began it: the same model, decoding, serializer and
    clipping (meta.run), so that one file never mixes two models' predictions."""
    if not os.path.isfile(path):
        return
    # a torn or foreign line is skipped here: the runner's own resume check says what is wrong with it
    for item in Reader([path], on_error="skip", warn=lambda message: None):
        record = item.record
        if kind_of(record) == "prediction" and (record.get("meta") or {}).get("run") != run:
            raise UsageProblem(
                f"--resume: {path} holds predictions of another model or other settings (meta.run "
                f"{(record.get('meta') or {}).get('run')!r}, this run's {run!r}): write to another "
                f"file"
            )
