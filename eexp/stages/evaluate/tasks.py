"""eval's tasks: the first N of an environment's split, or the tasks of the trajectories read."""

from __future__ import annotations

from typing import Callable

from eexp.envs.base import Env, make_env
from eexp.errors import EnvError, InputError
from eexp.io import Reader
from eexp.records import expect


def split_tasks(env: Env, split: str, n: int | None, warn: Callable[[str], None]) -> list[dict]:
    """The first n tasks of a split, in the split's fixed order (so the same -n means the same tasks)."""
    if split not in env.splits:
        raise EnvError(f"{env.name} has no split {split!r} (splits: {', '.join(env.splits)})")
    tasks = list(env.tasks(split))
    if not tasks:
        raise EnvError(f"{env.name} split {split!r} has no tasks")
    if n is not None and n > len(tasks):
        warn(f"{env.name} {split} has {len(tasks)} tasks, fewer than -n {n}: evaluating all {len(tasks)}")
    return tasks[:n] if n is not None else tasks


def tasks_from_trajectories(
    reader: Reader, env_name: str | None, split: str | None, n: int | None, warn: Callable[[str], None]
) -> tuple[str, dict, Env, list[dict]]:
    """(env name, env kwargs, env, tasks): the distinct tasks of the input trajectories, in input order, looked up
    in the environment (so categories and the environment's own task fields are those of the split)."""
    check = expect("trajectory")
    env = None
    env_kwargs: dict = {}
    env_from = None
    index: dict[str, dict[str, dict]] = {}
    tasks: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for item in reader:
        record = item.record
        problem = check(record)
        if problem:
            reader.reject(item.error(problem))
            continue
        name, kwargs = record["env"]["name"], record["env"].get("kwargs") or {}
        if env is None:
            if env_name and name != env_name:
                raise item.error(f"a trajectory of environment {name!r}, but --env is {env_name!r}")
            env_name, env_kwargs, env_from = name, kwargs, f"{item.path}:{item.line}"
            env = make_env(name, **kwargs)
        elif (name, kwargs) != (env_name, env_kwargs):
            reader.reject(
                item.error(
                    f"environment {name!r} {kwargs or ''} differs from {env_name!r} "
                    f"{env_kwargs or ''} of the first trajectory ({env_from}): evaluate one "
                    f"environment at a time"
                )
            )
            continue
        task_split, task_id = record["task"]["split"], record["task"]["id"]
        if split is not None and task_split != split:
            continue
        if (task_split, task_id) in seen:
            continue
        if task_split not in env.splits:
            reader.reject(item.error(f"{env_name} has no split {task_split!r} (splits: {', '.join(env.splits)})"))
            continue
        if task_split not in index:
            index[task_split] = {t["id"]: t for t in env.tasks(task_split)}
        if task_id not in index[task_split]:
            reader.reject(item.error(f"{env_name} has no task {task_id!r} in split {task_split!r}"))
            continue
        seen.add((task_split, task_id))
        tasks.append(index[task_split][task_id])
    if env is None or not tasks:
        raise InputError("no tasks to evaluate in the input trajectories" + (f" (split {split})" if split else ""))
    if n is not None and n > len(tasks):
        warn(f"the input holds {len(tasks)} tasks, fewer than -n {n}: evaluating all {len(tasks)}")
    return env_name, env_kwargs, env, tasks[:n] if n is not None else tasks


def find_tasks(
    reader: Reader | None,
    env_name: str | None,
    env_args: dict,
    split: str | None,
    n: int | None,
    warn: Callable[[str], None],
) -> tuple[str, dict, Env, list[dict]]:
    """(env name, env kwargs, env, tasks) of a run: the first n tasks of `split` of the environment `env_name`
    when no trajectories are read (`reader` None), else the tasks of the trajectories (of `split`, when given)."""
    if reader is None:
        env = make_env(env_name, **env_args)
        return env_name, dict(env_args), env, split_tasks(env, split, n, warn)
    return tasks_from_trajectories(reader, env_name, split, n, warn)
