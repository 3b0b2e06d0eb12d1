"""expert: trajectories from an environment's oracle, with success checked by the environment."""

from __future__ import annotations

import random

from eexp.envs.base import Env, EnvError
from eexp.envs.reach import guarded
from eexp.records import make_meta, short_hash


def pick_tasks(env: Env, split: str, n: int | None = None, seed: int = 0,
               task_ids: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """The tasks to run: the ids asked for, else a deterministic sample of n tasks of the split.

    The sample is a seeded shuffle of the whole split cut to n, so `-n 100` is a prefix of `-n 200` with the
    same seed, and different seeds pick different tasks.
    """
    if task_ids:
        return [env.task(split, t) for t in task_ids]
    tasks = env.tasks(split)
    if n is None or n >= len(tasks):
        n = len(tasks)
    order = list(range(len(tasks)))
    random.Random(f"eexp-expert/{seed}").shuffle(order)
    return [tasks[i] for i in order[:n]]


def trajectory_id(env: Env, task: dict) -> str:
    """`<env>:<task id>`, with a hash of the environment's kwargs when it has any (another world)."""
    suffix = f"~{short_hash(env.kwargs, n=8)}" if env.kwargs else ""
    return f"{env.name}:{task['id']}{suffix}"


def expert_trajectory(env: Env, task: dict, seed: int = 0, timeout: float | None = None,
                      include_admissible: bool = True) -> dict:
    """Run the oracle's actions on a fresh episode. An environment failure (exception, timeout) is recorded as
    `error` on the trajectory, with the steps done so far, and success false."""
    record = {"id": trajectory_id(env, task), "env": env.env_record(),
              "task": {k: task[k] for k in ("id", "split", "goal", "category", "game_seed") if k in task},
              "steps": [], "final_observation": "", "success": False}
    error = None
    try:
        actions = guarded(lambda: env.expert(task), "expert", timeout)
        observation = guarded(lambda: env.reset(task), "reset", timeout)
        for i, action in enumerate(actions):
            step = {"observation": observation, "action": action}
            admissible = guarded(env.admissible, f"admissible at step {i}", timeout) if include_admissible else None
            if admissible is not None:
                step["admissible"] = list(admissible)
            record["steps"].append(step)
            observation, _, done, _ = guarded(lambda: env.step(action), f"step {i} {action!r}", timeout)
            if done:
                break
        record["final_observation"] = observation
        record["success"] = bool(guarded(env.success, "success", timeout))
        record["score"] = float(guarded(env.score, "score", timeout))
    except EnvError as e:
        error = str(e)
    if error is not None:
        record["error"] = error
    record["meta"] = make_meta("expert", env=env.name, env_version=env.version, env_kwargs=dict(env.kwargs),
                               split=task["split"], seed=seed, policy="oracle")
    return record
