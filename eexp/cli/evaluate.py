"""`eexp eval`: success rates with 95% intervals, baselines, and paired comparisons of runs."""

from __future__ import annotations

import glob
import os
import sys

import click
import orjson

from eexp.cli import cli
from eexp.cli.options import UserError, parse_env_args, policy_options, progress_bar, sampling_options, \
    serializer_options, stage_options
from eexp.envs.base import make_env
from eexp.io import InputError, Reader, Writer, in_shard, prepare_resume, read_records, write_atomic
from eexp.policies import policy_kind
from eexp.records import expect, utc_now
from eexp.stages.evaluate import (EvalSettings, Runner, compare_runs, episode_id, format_comparison,
                                  format_summary, load_runs, plot_comparison, split_tasks, summarize)

# serializer option -> (Serializer field, how the option's value maps to it)
SERIALIZER_PARAMS = {"history": ("history", lambda v: v),
                     "max_observation_chars": ("max_observation_chars", lambda v: v),
                     "max_history_chars": ("max_history_chars", lambda v: v),
                     "max_admissible": ("max_admissible", lambda v: v),
                     "no_admissible": ("show_admissible", lambda v: not v)}


def warn(message: str) -> None:
    click.echo(f"eexp: {message}", err=True)


def explicit_serializer_settings(ctx: click.Context) -> dict:
    """The serializer settings the user gave (command line, environment, --config), not click's defaults: only
    these override the settings recorded with the model."""
    given = {}
    for param, (name, convert) in SERIALIZER_PARAMS.items():
        source = ctx.get_parameter_source(param)
        if source is not None and source != click.core.ParameterSource.DEFAULT:
            given[name] = convert(ctx.params[param])
    return given


@cli.command("eval")
@stage_options
@policy_options
@serializer_options
@click.option("--env", "env_name", metavar="NAME", help="Environment to evaluate on (default: the environment of "
              "the input trajectories).")
@click.option("--env-arg", "env_args", multiple=True, callback=parse_env_args, metavar="KEY=VALUE",
              help="An environment option with --env (e.g. games=5 for textworld); repeatable.")
@click.option("--split", default="test", show_default=True, help="Split of the environment's tasks.")
@click.option("-n", "n", type=click.IntRange(min=1), help="Evaluate the first N tasks of the split (default: all).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel workers: processes (one model each), or concurrent requests for an http(s) policy.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Most steps per episode (default: the environment's).")
@sampling_options(k=False, temperature=0.0)  # greedy by default, as the paper evaluates
@click.option("--summary", "summary_path", metavar="FILE", help="Write the summary JSON here (with --compare: the "
              "comparison).")
@click.option("--trajectories", "trajectories_path", metavar="FILE",
              help="Also write each successful episode here as a trajectory record (expert data).")
@click.option("--compare", is_flag=True, help="Compare episode files (INPUT...) instead of running episodes; "
              "NAME=FILE,FILE,... groups the runs (seeds) of one method.")
@click.option("--plot", metavar="PNG", help="With --compare: draw success rates and intervals per run and split.")
def eval_command(io, serializer, policy_spec, policy_args, act, max_tokens, top_p, env_name, env_args, split, n, jobs,
                 max_steps, temperature, seed, summary_path, trajectories_path, compare, plot):
    """Run a policy on an environment's tasks: one episode record per task on stdout, a summary (success rate with
    its 95% Wilson interval) on stderr and in --summary FILE.

    Tasks are the first N of --split, in the split's fixed order, or the tasks of the trajectory files given as
    INPUT. States are rendered with the serializer settings recorded with the model (overridden by any serializer
    option given here). Greedy by default (--temperature 0); the seed changes sampling only (step t of episode e
    samples with derive_seed(seed, e, t)), never the tasks.

    With --compare, INPUT are episode files from earlier runs (one environment): a table of the runs with
    intervals, and each run tested against the first over the tasks both ran. Seeds: NAME=FILE,FILE,... (or a
    quoted glob, NAME='runs/IL-s*.jsonl') names one method's runs, one file per seed; each method is then one row
    with its seeds' min-max and sd, tested against the first over tasks x seeds (an exact sign-flip test on the
    per-task successes summed over seeds; with one seed each it is McNemar's exact test).

    \b
    Examples:
      eexp eval --policy oracle --env shop -n 50
      eexp eval --policy model.gguf --env shop -n 200 -j 2 --summary il.json > il.jsonl
      eexp eval --policy model.gguf --env shop --split ood -o ood.jsonl --resume
      eexp eval --compare random.jsonl il.jsonl iwm.jsonl --plot runs.png
      eexp eval --compare IL=IL-s0.jsonl,IL-s1.jsonl,IL-s2.jsonl IWM='IWM-s*.jsonl' --summary cmp.json
      eexp eval --policy SR/ --env shop --act think -o sr.jsonl
    """
    ctx = click.get_current_context()
    if compare:
        for name in ("policy_spec", "env_name", "n", "max_steps", "trajectories_path"):
            if ctx.params.get(name) is not None:
                raise click.UsageError(f"--compare reads episode files; it takes no --{_option_name(name)}")
        if io.resume:
            raise click.UsageError("--compare runs no episodes; --resume does not apply")
        if not ctx.params["inputs"]:
            raise click.UsageError("--compare needs the episode files to compare (eexp eval --compare A.jsonl "
                                   "B.jsonl ...)")
        return run_compare(io, seed, summary_path, plot)
    if plot:
        raise click.UsageError("--plot draws a comparison: use it with --compare and episode files")
    if not policy_spec:
        raise click.UsageError("eval needs --policy (model.gguf, a checkpoint dir, http(s)://HOST/v1, random or "
                               "oracle)")
    from_files = bool(ctx.params["inputs"])
    if not env_name and not from_files and sys.stdin.isatty():
        raise click.UsageError("give --env NAME, or trajectory files (or stdin) whose tasks to evaluate")
    split_given = ctx.get_parameter_source("split") != click.core.ParameterSource.DEFAULT

    if env_name and not from_files:
        env_kwargs: dict = dict(env_args)
        env = make_env(env_name, **env_kwargs)
        tasks = split_tasks(env, split, n, warn)
    else:
        env_name, env_kwargs, env, tasks = tasks_from_trajectories(io, env_name, split if split_given else None, n)
    tasks = [t for t in tasks if in_shard(t["id"], io.shard)]

    policy_args = dict(policy_args)
    local_model = policy_kind(policy_spec) in ("gguf", "checkpoint")
    if jobs > 1 and local_model and "n_threads" not in policy_args:
        # N llama.cpp or torch processes each using every core fight over them (torch's spinning threads made a step
        # ~10x slower here): split the cores between the workers
        policy_args["n_threads"] = str(max(1, (os.cpu_count() or 1) // jobs))
    settings = EvalSettings(env_name=env_name, env_kwargs=env_kwargs, policy_spec=policy_spec,
                            policy_args=policy_args, act=act, max_tokens=max_tokens, top_p=top_p,
                            serializer_overrides=explicit_serializer_settings(ctx), max_steps=max_steps,
                            temperature=temperature, seed=seed)
    with Runner(settings, jobs, env=env) as runner:
        description = runner.description
        ids = [episode_id(settings, t, description) for t in tasks]
        previous = resume_state(io, ids, trajectories_path)
        todo = [(t, i) for t, i in zip(tasks, ids) if i not in previous]
        episodes = dict(previous)
        io.stats.records_in = len(tasks)
        if previous:
            io.count("resumed", len(previous))
            warn(f"resuming: {len(previous)} of {len(tasks)} episodes already in {io.output}")
        writer = Writer(io.output, append=bool(io.resume))
        trajectories = Writer(trajectories_path, append=bool(io.resume)) if trajectories_path else None
        with io.closing(writer, trajectories):
            with progress_bar(io.quiet, total=len(todo), unit="ep") as bar:
                for episode, trajectory in runner.map(todo):
                    # The trajectory first: a resume keeps only trajectories whose episode was written.
                    if trajectories is not None and trajectory is not None:
                        trajectories.write(trajectory)
                    writer.write(episode)
                    episodes[episode["id"]] = episode
                    io.stats.records_out += 1
                    io.count("env_steps", episode["steps"])
                    io.count("invalid_actions", episode["invalid_actions"])
                    if episode["stop_reason"] == "error":
                        io.count("errors")
                        warn(f"task {episode['task']['id']}: environment error: {episode['meta'].get('error')}")
                    bar.update(1)

    ordered = [episodes[i] for i in ids if i in episodes]
    summary = summarize(ordered, env=env_name, policy=ordered[0]["policy"] if ordered else description["policy"])
    # The run's settings, as its episodes record them (less what is per episode).
    first_meta = ordered[0]["meta"] if ordered else {}
    per_episode = ("seeds", "unparsed", "error", "thoughts_cut")
    summary["meta"] = {**{k: v for k, v in first_meta.items() if k not in per_episode}, "created_utc": utc_now()}
    click.echo(format_summary(summary), err=True)
    if summary_path:
        write_atomic(summary_path, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")


def _option_name(param: str) -> str:
    return {"policy_spec": "policy", "env_name": "env", "trajectories_path": "trajectories"}.get(
        param, param.replace("_", "-"))


def tasks_from_trajectories(io, env_name: str | None, split: str | None, n: int | None):
    """(env name, env kwargs, env, tasks): the distinct tasks of the input trajectories, in input order, looked up
    in the environment (so categories and the environment's own task fields are those of the split)."""
    check = expect("trajectory")
    env = None
    env_kwargs: dict = {}
    env_from = None
    index: dict[str, dict[str, dict]] = {}
    tasks: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for item in io.reader:
        record = item.record
        problem = check(record)
        if problem:
            io.reader.reject(item.error(problem))
            continue
        name, kwargs = record["env"]["name"], record["env"].get("kwargs") or {}
        if env is None:
            if env_name and name != env_name:
                raise item.error(f"a trajectory of environment {name!r}, but --env is {env_name!r}")
            env_name, env_kwargs, env_from = name, kwargs, f"{item.path}:{item.line}"
            env = make_env(name, **kwargs)
        elif (name, kwargs) != (env_name, env_kwargs):
            io.reader.reject(item.error(f"environment {name!r} {kwargs or ''} differs from {env_name!r} "
                                        f"{env_kwargs or ''} of the first trajectory ({env_from}): evaluate one "
                                        f"environment at a time"))
            continue
        task_split, task_id = record["task"]["split"], record["task"]["id"]
        if split is not None and task_split != split:
            continue
        if (task_split, task_id) in seen:
            continue
        if task_split not in env.splits:
            io.reader.reject(item.error(f"{env_name} has no split {task_split!r} (splits: {', '.join(env.splits)})"))
            continue
        if task_split not in index:
            index[task_split] = {t["id"]: t for t in env.tasks(task_split)}
        if task_id not in index[task_split]:
            io.reader.reject(item.error(f"{env_name} has no task {task_id!r} in split {task_split!r}"))
            continue
        seen.add((task_split, task_id))
        tasks.append(index[task_split][task_id])
    if env is None or not tasks:
        raise InputError("no tasks to evaluate in the input trajectories" + (f" (split {split})" if split else ""))
    if n is not None and n > len(tasks):
        warn(f"the input holds {len(tasks)} tasks, fewer than -n {n}: evaluating all {len(tasks)}")
    return env_name, env_kwargs, env, tasks[:n] if n is not None else tasks


def resume_state(io, ids: list[str], trajectories_path: str | None) -> dict[str, dict]:
    """With --resume: the episodes already complete in -o FILE (id -> record), after making the file safe to append
    to; the trajectories file is cut back to the episodes kept. Without it: nothing (and a fresh trajectories file)."""
    if not io.resume:
        return {}
    done = prepare_resume(io.output, key=lambda r: r.get("id"), kind="episode")
    planned = set(ids)
    foreign = done - planned
    if foreign:
        raise UserError(f"cannot resume {io.output}: it holds {len(foreign)} episode(s) of another evaluation (a "
                        f"different environment, split, policy or setting); write to a new file")
    previous = {}
    if done:
        for record in read_records([io.output]):
            if record.get("id") in done:
                previous[record["id"]] = record
    if trajectories_path:
        try:
            kept = [r for r in read_records([trajectories_path]) if r.get("id") in done]
        except InputError as e:
            if "no such file" not in str(e) and "empty file" not in str(e):
                raise
            kept = []
        write_atomic(trajectories_path, b"".join(orjson.dumps(r) + b"\n" for r in kept))
    return previous


def compare_inputs(inputs: list[str]) -> list[tuple[str, str | None]]:
    """(path, label) for every file of `eval --compare`. An INPUT is a file (labelled by its name), or NAME=FILES:
    the runs of one method, one file per seed, FILES separated by commas; a FILE there may be a glob pattern
    (quoted, so eexp expands it, in sorted order); NAME=... given again adds seeds to NAME. An existing file whose
    name holds `=` is a file."""
    out: list[tuple[str, str | None]] = []
    for item in inputs:
        label, sep, rest = item.partition("=")
        if item == "-" or os.path.exists(item) or not sep:
            out.append((item, None))
            continue
        label = label.strip()
        if not label or not rest:
            raise InputError(f"{item!r}: expected a file or NAME=FILE[,FILE...] (the runs of one method, one per "
                             f"seed)")
        for part in rest.split(","):
            if not part:
                continue
            if not os.path.exists(part) and glob.has_magic(part):
                matches = sorted(glob.glob(part))
                if not matches:
                    raise InputError(f"no file matches {part!r} (given for {label})")
                out += [(m, label) for m in matches]
            else:
                out.append((part, label))
    return out


def run_compare(io, seed: int, summary_path: str | None, plot: str | None) -> None:
    check = expect("episode")
    files = []
    for path, label in compare_inputs(io.inputs):
        reader = Reader([path], on_error=io.reader.on_error)
        records = []
        for item in reader:
            problem = check(item.record)
            if problem:
                reader.reject(item.error(problem))
                continue
            records.append((item.record, item.line))
        if not records:
            raise InputError("no episodes to compare", path)
        files.append((path, records, label))
    env, runs = load_runs(files)
    result = compare_runs(env, runs, seed=seed)
    table = format_comparison(result)
    if io.output in (None, "-"):
        click.echo(table, nl=False)
    else:
        write_atomic(io.output, table.encode())
    if summary_path:
        write_atomic(summary_path, orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    if plot:
        try:
            plot_comparison(result, plot)
        except ImportError:
            raise UserError("--plot needs matplotlib: pip install 'eexp[all]'") from None
        warn(f"wrote {plot}")


eval_command.name = "eval"
