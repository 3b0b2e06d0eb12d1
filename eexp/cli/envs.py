"""Commands about environments: `envs` (list / describe / --check) and `expert` (oracle trajectories)."""

from __future__ import annotations

import json
import shlex
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution

import click
import orjson

from eexp.cli.group import cli
from eexp.cli.options import (
    cluster_options,
    config_option,
    env_arg_option,
    field_options,
    output_option,
    quiet_option,
    resume_option,
    shard_option,
    stats_option,
)
from eexp.envs.base import NEEDS, WRAPPERS, make_env, missing_modules, registry, wrapper_class
from eexp.envs.check import check_installed
from eexp.errors import EnvError
from eexp.fields import setting
from eexp.runner import StageIO
from eexp.stages.expert import run_expert


def eexp_requirement(extra: str) -> str:
    """eexp with EXTRA, as pip installs it from where this eexp came from: the folder of an editable install (a
    clone: `-e DIR[extra]`), the wheel file it was installed from, else the package index."""
    try:
        direct = json.loads(distribution("eexp").read_text("direct_url.json") or "null") or {}
    except (PackageNotFoundError, ValueError):
        direct = {}
    url = direct.get("url", "")
    if url.startswith("file:"):
        path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
        editable = (direct.get("dir_info") or {}).get("editable")
        return ("-e " if editable else "") + shlex.quote(f"{path}[{extra}]")
    return shlex.quote(f"eexp[{extra}]")


def install_command(name: str) -> str:
    """The command that installs what environment `name` needs (NEEDS) into the Python that runs eexp."""
    pip = f"{shlex.quote(sys.executable)} -m pip install"
    extra = NEEDS[name][1]
    if extra is None:  # BFCL's multi-turn checker, without the multi-GB dependencies it declares (install.sh)
        return f"{pip} --no-deps 'bfcl-eval>=2025' mpmath"
    return f"{pip} {eexp_requirement(extra)}"


def not_installed(name: str) -> str | None:
    """Why environment `name` cannot run here, with the command that installs what it needs; None: it can."""
    missing = missing_modules(name)
    if not missing:
        return None
    return f"not installed (no module {', '.join(missing)}): {install_command(name)}"


def _listing() -> list[dict]:
    """One row per registered environment; one whose packages are missing is listed as not installed, with the
    command that installs them, and one that cannot load with the reason. Then eexp's environments over another one
    (WRAPPERS: dream), by the form of their name, with WORLD's splits."""
    rows = []
    for name, ep in sorted(registry().items()):
        if missing_modules(name):
            rows.append(
                {
                    "name": name,
                    "available": False,
                    "installed": False,
                    "reason": not_installed(name),
                    "missing": missing_modules(name),
                    "install": install_command(name),
                    "entry_point": ep.value,
                }
            )
            continue
        try:
            cls = ep.load()
            rows.append(
                {
                    "name": name,
                    "available": True,
                    "version": cls.version,
                    "splits": list(cls.splits),
                    "can_snapshot": cls.can_snapshot,
                    "closed_actions": cls.closed_actions,
                    "entry_point": ep.value,
                }
            )
        except Exception as e:  # a broken third-party package must not hide the others
            rows.append(
                {"name": name, "available": False, "reason": f"{type(e).__name__}: {e}", "entry_point": ep.value}
            )
    for kind in WRAPPERS:
        cls = wrapper_class(kind)
        rows.append(
            {
                "name": cls.form,
                "available": True,
                "version": cls.version,
                "splits": ["WORLD's"],
                "can_snapshot": cls.can_snapshot,
                "closed_actions": None,
                "entry_point": WRAPPERS[kind].value,
            }
        )
    return rows


CHECK_ONLY = ("n", "seed", "task_ids", "step_timeout")


# The commands' own options, a default and a help written once (made into click options by field_options); --env-arg,
# -o, --resume, --shard, --stats and -q are eexp.cli.options' shared declarations.


@dataclass(frozen=True, kw_only=True)
class EnvsSettings:
    split: str | None = setting(
        None, "With NAME: the split of the example task, or of the tasks --check runs (default: the first)."
    )
    as_json: bool = setting(False, "Print JSON instead of text (with --check: one object a check).", flag="--json")
    check: bool = setting(
        False, "Check NAME against the environment contract (DESIGN.md): one line a check, exit 1 on a failure."
    )
    # --check's own defaults are said in the help and applied by run_check: None tells "not given" (CHECK_ONLY)
    n: int | None = setting(
        None, "With --check: how many tasks to run episodes on  [default: 3].", flag="--tasks", short="-n", min=1
    )
    seed: int | None = setting(None, "With --check: which tasks, as `eexp expert --seed` picks them  [default: 0].")
    task_ids: list[str] = setting(
        help="With --check: these task ids; repeatable.", factory=list, flag="--task", metavar="ID", multiple=True
    )
    step_timeout: float | None = setting(
        None,
        "With --check: seconds one environment call may take (waiting for a CPU not counted) before it fails its "
        "check (0: no limit)  [default: 60].",
        metavar="SECONDS",
        min=0,
    )


@dataclass(frozen=True, kw_only=True)
class ExpertSettings:
    env_name: str = setting(help="Environment (see `eexp envs`).", flag="--env", metavar="NAME", required=True)
    split: str = setting("train", "Split to draw tasks from.")
    n: int | None = setting(None, "Number of tasks (default: every task of the split).", flag="-n", min=1)
    seed: int = setting(0, "Which tasks: a seeded sample of the split (the same seed and -n give the same tasks).")
    task_ids: list[str] = setting(
        help="Run these task ids instead; repeatable.", factory=list, flag="--task", metavar="ID", multiple=True
    )
    step_timeout: float = setting(
        60.0,
        "Seconds one environment call may take (waiting for a CPU not counted); a task that passes it is played "
        "again once on a fresh instance, then recorded as an error (0: no limit).",
        metavar="SECONDS",
        min=0,
    )
    no_admissible: bool = setting(False, "Do not record the admissible actions of each step.")
    jobs: int = setting(
        1,
        "Environment worker processes (each runs whole tasks); output stays in task order.",
        short="-j",
        metavar="N",
        min=1,
    )


@cli.command()
@click.argument("name", required=False)
@field_options(EnvsSettings, "split", "as_json")
@env_arg_option("With NAME: an environment option; repeatable.")
@field_options(EnvsSettings, "check", "n", "seed", "task_ids", "step_timeout")
def envs(name, split, as_json, env_args, check, n, seed, task_ids, step_timeout):
    """List the installed environments, describe one, or check one against the environment contract.

    Without NAME: each environment's version, splits and whether it can snapshot a state (otherwise states are
    reached again by replaying actions). An environment whose packages are not installed (alfworld and tau2 are
    extras of their own) is listed as not installed, with the command that installs them; one that is registered
    but cannot load is listed as unavailable, with the reason. With NAME: its action format, its splits with their task
    counts, and the
    first observation and admissible actions of an example task.

    `dream:MODEL@WORLD` is the environment WORLD as a world model dreams it: WORLD's tasks and first observations,
    every later observation the prediction of MODEL (a checkpoint, a GGUF or a server, as --policy names one)
    asked IWM's prompt; usable wherever an environment is (expert, branch | rollout, eval, rl), its records'
    meta.dream saying so. `eexp envs dream` says where its end, success and admissible actions come from.

    With --check NAME: the conformance check a plugin author runs (lazy construction, well-formed tasks, version,
    close(), determinism, the expert replaying to success, snapshot/restore against replay, canonicalize through
    step(), expert() leaving a live episode alone, scores in [0, 1], options). One line a check: `ok`, `FAIL`
    with the reason, or `skip` where it does not apply; exit 1 if any failed.

    \b
    Example:
      eexp envs
      eexp envs shop
      eexp envs dream
      eexp envs dream:out/iwm@shop
      eexp envs --check counter -n 5 --split test
      eexp envs --check textworld -n 1 --env-arg games=1 --env-arg eval_games=1
    """
    given = [opt for opt, value in zip(CHECK_ONLY, (n, seed, task_ids, step_timeout)) if value not in (None, ())]
    if given and not check:
        flags = {"n": "-n/--tasks", "seed": "--seed", "task_ids": "--task", "step_timeout": "--step-timeout"}
        raise click.UsageError(f"{', '.join(flags[g] for g in given)}: only with --check")
    if check:
        if name is None:
            raise click.UsageError("--check needs NAME (see `eexp envs` for the installed environments)")
        run_check(
            name,
            env_args,
            split,
            3 if n is None else n,
            seed or 0,
            task_ids,
            60.0 if step_timeout is None else step_timeout,
            as_json,
        )
        return
    if name is None:
        rows = _listing()
        if as_json:
            for row in rows:
                click.echo(orjson.dumps(row).decode())
            return
        if not rows:
            click.echo("no environments installed")
            return
        width = max([len("version")] + [len(str(row.get("version", ""))) for row in rows if row["available"]])
        names = max([14] + [len(row["name"]) for row in rows])
        click.echo(f"{'name':<{names}} {'version':<{width}} {'snapshot':<9} splits")
        for row in rows:
            if row["available"]:
                click.echo(
                    f"{row['name']:<{names}} {row['version']:<{width}} "
                    f"{'yes' if row['can_snapshot'] else 'no':<9} {', '.join(row['splits'])}"
                )
            elif row.get("installed") is False:
                click.echo(f"{row['name']:<{names}} {row['reason']}")
            else:
                click.echo(f"{row['name']:<{names}} unavailable: {row['reason']}")
        return
    if name in WRAPPERS:  # `eexp envs dream`: what the form means (an instance needs its MODEL@WORLD)
        click.echo(wrapper_class(name).help_text)
        return
    if name in NEEDS and missing_modules(name):
        raise EnvError(f"{name}: {not_installed(name)}")
    env = make_env(name, **env_args)
    try:
        info = describe(env, split)
    finally:
        env.close()
    if as_json:
        click.echo(orjson.dumps(info).decode())
        return
    click.echo(f"{info['name']} (version {info['version']})")
    click.echo(f"actions: {info['action_format']}")
    click.echo(f"admissible actions: {'listed (closed set)' if info['closed_actions'] else 'a sample (open set)'}")
    click.echo(f"snapshot: {'yes' if info['can_snapshot'] else 'no (states are reached by replay)'}")
    click.echo(f"max steps: {info['max_steps']}")
    for key, text in (info.get("rules") or {}).items():  # a dream's: where its observations, end, success come from
        click.echo(f"{key}: {text}")
    counts, unavailable = info["task_counts"], info.get("unavailable_splits", {})
    click.echo(
        "splits: "
        + ", ".join(
            f"{s} ({counts[s]} tasks)" if s in counts else f"{s} (unavailable: {unavailable[s]})"
            for s in info["splits"]
        )
    )
    example = info["example"]
    click.echo(f"\nexample task {example['task']['id']}: {example['task']['goal']}")
    click.echo("first observation:")
    click.echo("  " + example["observation"].replace("\n", "\n  "))
    if example["admissible"] is not None:
        click.echo("admissible actions:")
        for action in example["admissible"]:
            click.echo(f"  {action}")


def run_check(name, env_args, split, n, seed, task_ids, step_timeout, as_json) -> None:
    """Print one line per check as it finishes, then a count; exit 1 if any check failed."""
    failed = skipped = total = 0
    for result in check_installed(name, env_args, split, n, seed, task_ids, step_timeout or None):
        total += 1
        failed += result.status == "FAIL"
        skipped += result.status == "skip"
        click.echo(orjson.dumps(result.to_dict()).decode() if as_json else result.line())
    if not as_json:
        click.echo(f"{name}: {total - failed - skipped} ok, {failed} failed, {skipped} skipped")
    if failed:
        raise SystemExit(1)


def describe(env, split: str | None = None) -> dict:
    """What `eexp envs NAME` shows: the environment's own describe() plus task counts and an example. A split whose
    tasks cannot be listed (ALFWorld with one split's games not downloaded) is shown with the reason, under
    `unavailable_splits`, as long as the example's split (the one asked for, else the first that lists tasks) can."""
    info = env.describe()
    counts, unavailable = {}, {}
    for s in env.splits:
        try:
            counts[s] = len(env.tasks(s))
        except EnvError as e:
            unavailable[s] = str(e)
    if split is not None and split not in env.splits:
        raise EnvError(f"{env.name} has no split {split!r} (splits: {', '.join(env.splits)})")
    split = split or next((s for s in env.splits if s in counts), env.splits[0])
    if split in unavailable:
        raise EnvError(unavailable[split])
    if not counts[split]:
        raise EnvError(f"{env.name} has no tasks in split {split!r}")
    task = env.tasks(split)[0]
    observation = env.reset(task)
    return {
        **info,
        "task_counts": counts,
        **({"unavailable_splits": unavailable} if unavailable else {}),
        "example": {"task": task, "observation": observation, "admissible": env.admissible()},
    }


@cli.command()
@field_options(ExpertSettings, "env_name", "split", "n", "seed", "task_ids")
@env_arg_option()
@field_options(ExpertSettings, "step_timeout", "no_admissible", "jobs")
@output_option
@resume_option("tasks already written there")
@shard_option("by trajectory id, of the tasks -n and --seed choose")
@stats_option
@quiet_option()
@cluster_options
@config_option
def expert(
    env_name,
    split,
    n,
    seed,
    task_ids,
    env_args,
    step_timeout,
    no_admissible,
    jobs,
    output,
    resume,
    shard,
    stats,
    quiet,
    cluster,
):
    """Write expert trajectories from an environment's oracle, one JSON line per task.

    Success is checked by the environment; trajectories that fail are still written (success: false) and counted
    on stderr. An environment error (exception, or a call slower than --step-timeout twice: a task that times out
    is played again once on a fresh instance) becomes `error` on that trajectory and the run goes on. The same
    --seed and -n give the same tasks and the same records.

    \b
    Example:
      eexp expert --env shop -n 200 --seed 1 > expert.jsonl
      eexp expert --env tools --split test --task test-00003
      eexp expert --env alfworld -n 3500 --ray=10.0.0.5:6379 --env-workers 64 -o expert.jsonl --resume
      eexp expert --env alfworld -n 3500 --shard 2/4 -j 8 -o expert-2.jsonl    # machine 2 of 4; cat the four
    """
    io = StageIO(output=output, resume=resume, shard=shard, stats=stats, quiet=quiet)
    try:
        run_expert(
            io,
            env_name,
            env_args,
            split=split,
            n=n,
            seed=seed,
            task_ids=task_ids,
            timeout=step_timeout or None,
            include_admissible=not no_admissible,
            note=lambda message: click.echo(message, err=True),
            jobs=jobs,
            cluster=cluster,
        )
    finally:
        io.release()
