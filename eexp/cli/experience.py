"""Commands that collect the agent's own early experience: branch (propose alternatives at expert states) and
rollout (execute them in the environment)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from eexp.cli.group import cli
from eexp.cli.options import (
    check_requests,
    cluster_options,
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
from eexp.fields import setting
from eexp.policies.base import resolve_concurrency
from eexp.records import expect
from eexp.runner import MadeFrom
from eexp.stages.branch import PROPOSE_MODES, Brancher, parse_steps
from eexp.stages.rollout import Rollout, branched_from


def _note(message: str) -> None:
    click.echo(message, err=True)


def _check_steps(ctx, param, value):
    try:
        return parse_steps(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param)


# branch's and rollout's own options, a default and a help written once (made into click options by field_options);
# the shared ones (the stage's, the policy's, sampling, serializer, cluster) come from eexp.cli.options' bundles.


@dataclass(frozen=True)
class BranchSettings:
    propose: str | None = setting(
        None,
        "Where alternatives come from: the policy's samples, uniform draws from the admissible actions, or both "
        "(WebShop's mix). Default: policy when --policy is given, else admissible.",
        choices=PROPOSE_MODES,
    )
    steps: str | None = setting(
        None,
        "Branch only these steps (from 0), e.g. 0,2,5-7. Default: every step.",
        metavar="LIST",
        callback=_check_steps,
    )
    max_steps_per_trajectory: int | None = setting(
        None,
        "Branch at most N steps of a trajectory, evenly spaced (first and last included).",
        metavar="N",
        min=1,
    )


@dataclass(frozen=True)
class RolloutSettings:
    jobs: int = setting(
        1,
        "Environment worker processes (each takes whole trajectories); output stays in input order.",
        short="-j",
        metavar="N",
        min=1,
    )
    # No limit by default, unlike expert's and `envs --check`'s 60 s: a rollout reaches each state by snapshot or by
    # replay, and a step limit set here is recorded in every outcome's meta.
    step_timeout: float | None = setting(
        None,
        "Seconds one environment call may take (waiting for a CPU not counted); one that passes it is made again "
        "once on a fresh environment, then is an error on that action and the stage goes on (0: no limit)  "
        "[default: no limit].",
        metavar="SECONDS",
        min=0,
    )


@cli.command()
@stage_options
@policy_options
@sampling_options
@serializer_options
@field_options(BranchSettings, "propose", "steps", "max_steps_per_trajectory")
@concurrency_option("states")
def branch(
    io,
    policy_spec,
    policy_args,
    act,
    max_tokens,
    top_p,
    seed,
    temperature,
    k,
    serializer,
    propose,
    steps,
    max_steps_per_trajectory,
    concurrency,
):
    """Trajectories -> one branch record per expert step, with up to K alternative actions.

    Alternatives are distinct and never the expert action (after the environment's canonicalization). With
    --propose policy the model samples K actions at --temperature (one seed per alternative, recorded); repeats,
    the expert action and inadmissible ones are replaced by uniform admissible actions (`topped_up` in --stats).
    The paper proposes differently per method, so run branch once per method: IWM wants many (admissible, K up to
    8), SR a few from the policy (K 2-4).

    \b
    Example:
      eexp expert --env shop -n 100 > expert.jsonl
      eexp branch -k 8 expert.jsonl > iwm_branches.jsonl
      eexp branch --policy m.gguf -k 3 expert.jsonl | eexp rollout > sr_outcomes.jsonl
      eexp branch --policy http://127.0.0.1:8080/v1 --concurrency 16 -k 3 expert.jsonl > branches.jsonl
    """
    propose = propose or ("policy" if policy_spec else "admissible")
    if propose != "admissible":
        policy_spec = policy_or_default(policy_spec, f"--propose {propose} needs a model to sample alternatives from")
    policy = None
    settings = {}
    if propose == "admissible":
        if policy_spec or concurrency:
            _note(
                f"eexp: --propose admissible draws from the admissible lists; "
                f"{'--policy is' if policy_spec else '--concurrency is'} not used"
            )
        concurrency = 1
    else:
        from eexp.policies import load_policy
        from eexp.stages.evaluate.settings import resolve_serializer

        policy = load_policy(policy_spec, policy_args, act=act, max_tokens=max_tokens, top_p=top_p)
        settings = {"act": act or "", "max_tokens": max_tokens, "top_p": top_p}
        # A model trained by eexp carries the serializer it was trained with: prompt it the same way, but for the
        # serializer options the user gave (each on top of the recorded settings, as eval and world-model-eval do).
        recorded = policy.serializer_settings()
        if recorded:
            serializer = resolve_serializer(
                recorded, explicit_serializer_settings(click.get_current_context()), f"{policy_spec}:"
            )
    for name in ("topped_up", "short_of_k", "no_steps"):
        io.count(name, 0)
    try:
        if policy is not None:
            concurrency = resolve_concurrency(policy, concurrency)
            count_requests(io, policy)
        brancher = Brancher(
            propose,
            k,
            policy=policy,
            seed=seed,
            temperature=temperature,
            serializer=serializer,
            steps=steps,
            max_steps=max_steps_per_trajectory,
            count=io.count,
            note=_note,
            policy_settings=settings,
            concurrency=concurrency,
        )
        io.run(brancher, validate=expect("trajectory"), unit="traj", output_kind="branch")
    finally:
        if policy is not None:
            policy.close()
    check_requests(policy, policy_spec)


@cli.command()
@stage_options
@field_options(RolloutSettings, "jobs", "step_timeout")
@cluster_options
def rollout(io, jobs, step_timeout, cluster):
    """Branch records -> outcome records: the expert action and every alternative executed from the recorded state.

    Fills next_observation, reward, done and valid for the expert and each alternative. Before each execution the
    observation reached is checked against the recorded one; a mismatch is an `error` (on the record when the
    state cannot be reached, on the alternative otherwise), counted as state_mismatches in --stats. States are
    reached by snapshot where the environment can, else by the shortest replay. --resume continues a file only
    with the settings (its own and the branch run's) and the input that began it: an outcome it holds for an input
    record it skips must be that record's (the same task, state and actions).

    \b
    Example:
      eexp branch -k 8 expert.jsonl | eexp rollout -j 4 --stats rollout.json > outcomes.jsonl
      eexp rollout branches.jsonl -o outcomes.jsonl --resume
      eexp rollout branches.jsonl --ray=10.0.0.5:6379 --env-workers 32 -o outcomes.jsonl --resume
    """
    for name in ("env_steps", "errors", "state_mismatches", "env_restarts"):
        io.count(name, 0)
    stage = Rollout(jobs=jobs, step_timeout=step_timeout or None, count=io.count, note=_note, cluster=cluster)
    io.run(
        stage,
        validate=expect("branch"),
        input_key=lambda r: r.get("source_id"),
        output_kind="outcome",
        made_from=MadeFrom.alike(branched_from),
    )
    stage.check_failures()
