"""`eexp reflect`: outcome records -> self-reflection training examples (paper §4.3)."""

from __future__ import annotations

import os

import click
import orjson

from eexp.cli.group import cli
from eexp.cli.options import (
    check_requests,
    concurrency_option,
    count_requests,
    field_options,
    policy_options,
    policy_or_default,
    sampling_options,
    serializer_options,
    stage_options,
)
from eexp.io import prepare_resume, write_atomic
from eexp.policies import default_policy, policy_kind
from eexp.policies.base import resolve_concurrency
from eexp.records import expect
from eexp.stages.reflect import COUNTS, FILTERS, Reflect, Reflector, Settings, Template, policy_writer
from eexp.stages.reflect.settings import StageSettings
from eexp.stages.reflect.stage import example_made_from

NO_REFLECTOR = (
    "reflect needs a writer for the reflections: give --policy SPEC (the model being trained writes "
    "its own, the paper's setting; add --reflector teacher for a stronger model), set a default model "
    "with EEXP_POLICY=SPEC (it is not set), or give --reflector grounded for a deterministic rationale "
    "without a model (not the paper's method)"
)


@cli.command()
@stage_options
@policy_options(settings=Settings, chooses_actions=False)
@sampling_options(k=False, settings=Settings)
@serializer_options
@field_options(StageSettings, "reflector")
@field_options(Settings, "max_alternatives")
@field_options(StageSettings, "template_path")
@field_options(Settings, "max_words", "min_words", "max_outcome_chars")
@field_options(StageSettings, "rejected", "fallback")
@concurrency_option("states")
def reflect(
    io,
    policy_spec,
    policy_args,
    max_tokens,
    top_p,
    seed,
    temperature,
    serializer,
    reflector,
    max_alternatives,
    template_path,
    max_words,
    min_words,
    max_outcome_chars,
    rejected,
    fallback,
    concurrency,
):
    """Outcome records -> one self-reflection example per state (a thought on the alternatives, then the expert
    action). Each is `Thought: <monologue>` then `Action: <expert action>`, where the monologue compares the
    expert action with the first --max-alternatives executed alternatives, using what each one led to.

    The training input is the state alone (the same serializer as imitation-data); the alternatives and
    the outcomes appear only in the prompt that writes the reflection. Reflections that end on another
    action, leak prompt labels ("expert", "Action 1"), narrate the chosen action's result as already
    seen, name a number or a place that neither the state nor any outcome shows (unsupported_claim),
    copy the prompt's template or paste a page (template_copy, pasted_page), stray off the task
    (off_topic), go round in circles (repetitive), are empty, shorter than --min-words, longer than
    --max-words, hold a control or other unprintable character (unprintable), or are cut off by
    --max-tokens or failed by the model (model_error) are dropped and counted in --stats (and written
    to --rejected FILE); a monologue repeated twice keeps its first copy. The grounded reflector says,
    in each environment's own words, only what the outcomes show: why each alternative falls short
    and, in shop, why turn to the next page of results.

    --resume continues a file only with the settings and the input that began it: an example it holds for an
    outcome it skips must show that outcome's state and expert action.

    \b
    Example:
      eexp branch --policy m.gguf -k 3 expert.jsonl | eexp rollout | eexp reflect --policy m.gguf > sr.jsonl
      eexp reflect --reflector grounded outcomes.jsonl --stats sr.stats.json > sr.jsonl
      eexp reflect --policy http://127.0.0.1:8080/v1 --concurrency 32 outcomes.jsonl > sr.jsonl
    """
    if reflector == "grounded" and policy_spec:
        raise click.UsageError("--reflector grounded uses no model: leave out --policy")
    if reflector is None:
        if not (policy_spec or default_policy()):
            raise click.UsageError(NO_REFLECTOR)
        reflector = "self"
    if reflector == "grounded" and fallback != "none":
        raise click.UsageError("--fallback is for model reflectors: --reflector grounded rejects nothing to replace")
    if reflector != "grounded":
        policy_spec = policy_or_default(
            policy_spec, f"--reflector {reflector} needs the model that writes the reflections"
        )
    if policy_kind(policy_spec) == "baseline":
        raise click.UsageError(
            f"the {policy_spec} policy writes no text; give a model with --policy, or use --reflector grounded"
        )
    settings = Settings(
        max_alternatives=max_alternatives,
        max_words=max_words,
        min_words=min_words,
        max_outcome_chars=max_outcome_chars,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
    )
    template = Template.load(template_path)

    policy = None
    if reflector == "grounded":
        writer = Reflector("grounded")
        concurrency = 1  # no model, nothing to wait for
    else:
        from eexp.policies import load_policy

        policy = load_policy(policy_spec, policy_args, max_tokens=max_tokens, top_p=top_p)
        described = policy.describe()
        writer = Reflector(
            reflector,
            policy_writer(policy, settings),
            described.get("model", policy_spec),
            described.get("model_sha256", ""),
        )
        try:
            concurrency = resolve_concurrency(policy, concurrency)
            check_resumed(io, serializer, template, settings, writer)
        except BaseException:
            policy.close()
            raise
        count_requests(io, policy)
    if policy is None:
        check_resumed(io, serializer, template, settings, None)

    for name in COUNTS:  # every count in --stats, zeros included, so runs compare key by key
        io.count(name, 0)
    rejected_done = resume_rejected(io, rejected, fallback) if rejected else set()
    rejects = io.side_output(rejected)  # appended to under --resume
    stage = Reflect(
        reflector=writer,
        template=template,
        serializer=serializer,
        settings=settings,
        count=io.count,
        reject=rejects.write if rejects is not None else None,
        fallback=fallback,
        skip=rejected_done,
        concurrency=concurrency,
    )
    try:
        io.run(
            stage,
            validate=expect("outcome"),
            unit="state",
            output_kind="example",
            made_from=example_made_from(serializer),
        )
    finally:
        if policy is not None:
            policy.close()
    if reflector != "grounded":
        click.echo(f"reflect: {filter_summary(io.stats.counts)}", err=True)
    check_requests(policy, policy_spec)


def check_resumed(io, serializer, template, settings, model: Reflector | None) -> None:
    """With --resume: this run's settings against the resumed file's, before anything is written or cut (the
    --rejected file is cut back next): the serializer and template, and a model reflector's model and decoding,
    which this run's first record may not name (a grounded fallback's names none)."""
    if not io.resume:
        return
    io.done(kind="example", made_from=example_made_from(serializer))
    ours = {"stage": "reflect", "kind": "sr", "serializer": serializer.json, "template_sha256": template.sha256}
    if model is None:  # grounded: a file that holds a model's reflections is not continued without its model
        ours.update(model="", model_sha256="", reflector="grounded")
    else:
        ours.update(
            reflector=model.kind,
            model=model.model,
            model_sha256=model.model_sha256,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_tokens,
        )
    io.check_resumed_settings(ours)


def resume_rejected(io, path: str, fallback: str) -> set[str]:
    """With --resume: the outcomes --rejected FILE shows were rejected and are not to be asked again, after cutting
    FILE back to the outcomes that are done, so that it ends as an uninterrupted run's would (without --resume:
    nothing).

    A rejection is written as soon as it is made, before its outcome's example reaches -o FILE (with --fallback) or
    while -o's lines are pending, so after a kill FILE may be ahead of -o; and --resume does -o's last outcome again.
    An outcome is done when -o FILE holds its example (the set the run resumes from), or, without a fallback (a
    rejected outcome gives no example), when FILE holds its rejection, less FILE's last outcome, done again like
    -o's (prepare_resume). Any other record is dropped: written again, once, when its outcome is done again."""
    io.check_side_path(path)
    if not io.resume:
        return set()
    done = io.done(kind="example")  # the set io.run resumes from (made once per run)
    if not os.path.isfile(path):  # not written yet (or a device such as /dev/stderr: nothing to cut)
        return set()
    # a torn last line is cut (a killed run); without a fallback the last outcome's records too
    in_file = prepare_resume(path, whole_records=fallback != "none")
    rejected_done = in_file if fallback == "none" else set()
    keep = done | rejected_done
    with open(path, "rb") as f:
        lines = [line for line in f.read().splitlines(keepends=True) if line.strip()]
    kept = [line for line in lines if orjson.loads(line).get("source_id") in keep]
    if len(kept) != len(lines):
        write_atomic(path, b"".join(kept))  # to a temporary name, then renamed: never half a file
    return rejected_done


def filter_summary(counts: dict) -> str:
    """One line of what the filters did, printed after every model-written run (small models fail most of them,
    and that must be seen, not found later in --stats)."""
    rejected = {name: counts.get(name, 0) for name in FILTERS if counts.get(name, 0)}
    asked = counts.get("kept", 0) + sum(rejected.values())
    line = f"{counts.get('kept', 0)} of {asked} model reflections kept"
    if rejected:
        line += "; rejected: " + ", ".join(f"{name} {n}" for name, n in rejected.items())
    if counts.get("fallback_grounded"):
        line += f"; {counts['fallback_grounded']} replaced by grounded rationales (--fallback grounded)"
    return line
