"""`eexp eval`: success rates with 95% intervals, baselines, and paired comparisons of runs."""

from __future__ import annotations

import sys

import click

from eexp.cli.group import cli
from eexp.cli.options import (
    cluster_options,
    concurrency_option,
    env_arg_option,
    explicit_serializer_settings,
    field_options,
    policy_options,
    policy_or_default,
    sampling_options,
    serializer_options,
    stage_options,
)
from eexp.errors import EexpError
from eexp.io import write_atomic
from eexp.stages.evaluate.compare import compare_runs, format_comparison, plot_comparison, plot_format, read_runs
from eexp.stages.evaluate.runner import check_worker_copies, worker_policy_args
from eexp.stages.evaluate.settings import EvalSettings, RunSettings
from eexp.stages.evaluate.stage import evaluate
from eexp.stages.evaluate.summary import check_environment_errors, check_failed_requests, format_summary, write_summary
from eexp.stages.evaluate.tasks import find_tasks


def warn(message: str) -> None:
    click.echo(f"eexp: {message}", err=True)


@cli.command("eval")
@stage_options
@policy_options(settings=EvalSettings)
@serializer_options(build=False)  # the model's recorded settings, overridden by those given
@field_options(RunSettings, "env_name")
@env_arg_option(
    "An environment option with --env (e.g. games=5 for textworld); repeatable. With INPUT trajectories their "
    "records' own options are used."
)
@field_options(RunSettings, "split", "n", "jobs")
@concurrency_option("episodes")
@cluster_options
@field_options(
    EvalSettings,
    "thought_tokens",
    "max_steps",
    "start",
    "attempts",
    "memory",
    "critic",
    "critic_k",
    "critic_temperature",
)
@sampling_options(k=False, settings=EvalSettings)  # greedy by default, as the paper evaluates
@field_options(RunSettings, "summary_path", "trajectories_path")
@field_options(EvalSettings, "screenshots")
@field_options(RunSettings, "compare", "plot")
def eval_command(
    io,
    policy_spec,
    policy_args,
    act,
    max_tokens,
    top_p,
    env_name,
    env_args,
    split,
    n,
    jobs,
    concurrency,
    thought_tokens,
    max_steps,
    start,
    attempts,
    memory,
    critic,
    critic_k,
    critic_temperature,
    temperature,
    seed,
    summary_path,
    trajectories_path,
    screenshots,
    compare,
    plot,
    cluster,
):
    """Run a policy on an environment's tasks: one episode record per task, and a summary of its success rate.
    The episode records go to stdout, the summary (the success rate with its 95% Wilson interval) to stderr and to
    --summary FILE.

    Tasks are the first N of --split, in the split's fixed order, or the tasks of the trajectory files given as
    INPUT. States are rendered with the serializer settings recorded with the model (overridden by any serializer
    option given here). Greedy by default (--temperature 0); the seed changes sampling (step t of episode e
    samples with derive_seed(seed, e, t)) and, with --start off-path, where each episode leaves the expert's path;
    never the tasks.

    With --compare, INPUT are episode files from earlier runs (one environment): a table of the runs with
    intervals, and each run tested against the first over the tasks both ran. Seeds: NAME=FILE,FILE,... (or a
    quoted glob, NAME='runs/IL-s*.jsonl') names one method's runs, one file per seed; each method is then one row
    with its seeds' min-max and sd, tested against the first over seeds where both have the same number of files
    (file i against file i: each seed's difference, how many are above, a hierarchical bootstrap interval and an
    exact sign-flip test over seeds, which cannot reach p < 0.05 with fewer than 6 seeds, and beside it the smallest
    mean difference detectable at 80% power with these seeds and the seeds the observed difference would need), then
    over tasks x seeds (an exact sign-flip test on the per-task successes summed over seeds; with one seed each it is
    McNemar's exact test). A test over tasks holds the training runs fixed: its better or worse is "for these runs".
    A bootstrap over fewer than 10 pairs (tasks, or seeds) gives the mean and "too few", no interval or p.

    \b
    Examples:
      eexp eval --policy oracle --env shop -n 50
      eexp eval --policy model.gguf --env shop -n 200 -j 2 --summary il.json > il.jsonl
      eexp eval --policy http://127.0.0.1:8080/v1 --env shop -n 200 --concurrency 8 > il.jsonl
      eexp eval --policy model.gguf --env shop -n 2000 --ray=10.0.0.5:6379 --env-workers 32 > il.jsonl
      eexp eval --policy model.gguf --env shop --split ood -o ood.jsonl --resume
      eexp eval --compare random.jsonl il.jsonl iwm.jsonl --plot runs.png
      eexp eval --compare IL=IL-s0.jsonl,IL-s1.jsonl,IL-s2.jsonl IWM='IWM-s*.jsonl' --summary cmp.json
      eexp eval --policy SR/ --env shop --act think -o sr.jsonl
      eexp eval --policy model.gguf --env shop --start off-path -n 200 > recovery.jsonl
      eexp eval --policy model.gguf --env shop --attempts 3 --memory reflexion -n 100 > reflexion.jsonl
      eexp eval --policy IL/ --critic critic/ --critic-k 4 --env shop -n 100 > reranked.jsonl
    """
    ctx = click.get_current_context()
    if compare:
        for name in (
            "policy_spec",
            "env_name",
            "n",
            "max_steps",
            "trajectories_path",
            "concurrency",
            "screenshots",
            "thought_tokens",
        ):
            if ctx.params.get(name) is not None:
                raise click.UsageError(f"--compare reads episode files; it takes no --{_option_name(name)}")
        for name in ("start", "attempts", "memory", "critic", "critic_k", "critic_temperature"):
            if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
                raise click.UsageError(f"--compare reads episode files; it takes no --{name}")
        if io.resume:
            raise click.UsageError("--compare runs no episodes; --resume does not apply")
        if not ctx.params["inputs"]:
            raise click.UsageError(
                "--compare needs the episode files to compare (eexp eval --compare A.jsonl B.jsonl ...)"
            )
        return run_compare(io, seed, summary_path, plot)
    if plot:
        raise click.UsageError("--plot draws a comparison: use it with --compare and episode files")
    for name in ("critic_k", "critic_temperature"):
        if not critic and ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
            raise click.UsageError(
                f"--{name.replace('_', '-')} sets how the critic's candidates are proposed: give --critic MODEL"
            )
    if trajectories_path and start == "off-path":
        raise click.UsageError(
            "--trajectories keeps successful episodes as expert data, and an off-path episode "
            "begins with actions the policy did not choose (the expert's prefix and the injected "
            "one): evaluate from reset for trajectories"
        )
    if thought_tokens is not None and act != "think":
        raise click.UsageError(
            "--thought-tokens is the budget of the thought that --act think writes first: give --act think"
        )
    if memory != "none" and attempts == 1:
        raise click.UsageError(f"--memory {memory} is written between attempts: give --attempts N (N >= 2)")
    policy_spec = policy_or_default(policy_spec, "eval needs the policy to evaluate (or random, oracle)")
    from eexp.policies import policy_kind

    if memory == "reflexion" and policy_kind(policy_spec) == "baseline":
        raise click.UsageError(f"--memory reflexion: the {policy_spec} policy writes no diagnoses (a model does)")
    from_files = bool(ctx.params["inputs"])
    if not env_name and not from_files and sys.stdin.isatty():
        raise click.UsageError("give --env NAME, or trajectory files (or stdin) whose tasks to evaluate")
    split_given = ctx.get_parameter_source("split") != click.core.ParameterSource.DEFAULT
    if env_name and not from_files:
        env_name, env_kwargs, env, tasks = find_tasks(None, env_name, env_args, split, n, warn)
    else:
        env_name, env_kwargs, env, tasks = find_tasks(
            io.reader, env_name, env_args, split if split_given else None, n, warn
        )
    check_worker_copies(policy_spec, policy_args, jobs)  # -j N: no N copies of a transformers model on one GPU
    if screenshots:
        from eexp.envs.screens import can_screenshot

        if not can_screenshot(env):
            raise click.UsageError(
                f"--screenshots: the {env_name} environment draws no pictures of its states (an "
                f"environment with screenshot(): miniwob)"
            )
    if cluster is not None and policy_kind(policy_spec) in ("gguf", "checkpoint"):
        policy_args = {"n_threads": str(max(1, int(cluster.cpus))), **policy_args}  # --ray: a worker's CPUs
    settings = EvalSettings(
        env_name=env_name,
        env_kwargs=env_kwargs,
        policy_spec=policy_spec,
        policy_args=worker_policy_args(policy_spec, policy_args, jobs),
        act=act,
        max_tokens=max_tokens,
        thought_tokens=thought_tokens,
        top_p=top_p,
        serializer_overrides=explicit_serializer_settings(ctx),
        max_steps=max_steps,
        start=start,
        attempts=attempts,
        memory=memory,
        critic=critic,
        critic_k=critic_k,
        critic_temperature=critic_temperature,
        temperature=temperature,
        seed=seed,
        screenshots=screenshots,
    )
    summary = evaluate(
        io,
        settings,
        tasks,
        jobs=jobs,
        concurrency=concurrency,
        env=env,
        trajectories_path=trajectories_path,
        warn=warn,
        cluster=cluster,
    )
    click.echo(format_summary(summary), err=True)
    write_summary(summary_path, summary)
    check_failed_requests(summary, policy_spec)
    check_environment_errors(summary)


def _option_name(param: str) -> str:
    return {"policy_spec": "policy", "env_name": "env", "trajectories_path": "trajectories"}.get(
        param, param.replace("_", "-")
    )


def run_compare(io, seed: int, summary_path: str | None, plot: str | None) -> None:
    if plot:
        try:
            plot_format(plot)  # a format matplotlib cannot write is said before the comparison, not after
        except ImportError:
            raise EexpError("--plot needs matplotlib: pip install 'eexp[all]'") from None
    env, runs = read_runs(io.inputs, on_error=io.on_error)
    result = compare_runs(env, runs, seed=seed)
    table = format_comparison(result)
    if io.output in (None, "-"):
        click.echo(table, nl=False)
    else:
        write_atomic(io.output, table.encode())
    write_summary(summary_path, result)
    if plot:
        try:
            plot_comparison(result, plot)
        except ImportError:
            raise EexpError("--plot needs matplotlib: pip install 'eexp[all]'") from None
        warn(f"wrote {plot}")


eval_command.name = "eval"
