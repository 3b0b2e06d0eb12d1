"""expert: trajectories from an environment's oracle, with success checked by the environment."""

from __future__ import annotations

from typing import Callable, Iterator

from eexp.envs.base import Env, EnvError, make_env, pick_tasks
from eexp.envs.reach import guarded
from eexp.io import Stage, StageIO
from eexp.records import make_meta, short_hash


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


class Expert(Stage):
    """The expert stage over tasks: called with a task, it yields the oracle's trajectory of it.

    An environment error (an exception, or a call slower than `timeout`) is that trajectory's `error`; the instance
    is then closed and a fresh one made, since after a failure inside one of its calls an instance is never used
    again (DESIGN.md). Counts `unsuccessful` and `errors`; the first five of each are noted with their reason."""

    NOTED = 5

    def __init__(self, env_name: str, env_args: dict | None = None, *, seed: int = 0, timeout: float | None = None,
                 include_admissible: bool = True, count: Callable[..., None] = lambda name, n=1: None,
                 note: Callable[[str], None] = lambda message: None):
        self.env_name, self.env_args = env_name, dict(env_args or {})
        self.seed, self.timeout, self.include_admissible = seed, timeout, include_admissible
        self.count, self.note = count, note
        self.env = make_env(env_name, **self.env_args)
        self.unsuccessful = self.errors = 0
        count("unsuccessful", 0)
        count("errors", 0)

    def trajectory_id(self, task: dict) -> str:
        return trajectory_id(self.env, task)

    def __call__(self, task: dict) -> Iterator[dict]:
        record = expert_trajectory(self.env, task, seed=self.seed, timeout=self.timeout,
                                   include_admissible=self.include_admissible)
        if "error" in record:
            self._replace()
            self.errors += 1
            self.count("errors")
            if self.errors <= self.NOTED:
                self.note(f"eexp: {record['id']}: {record['error']}")
        elif not record["success"]:
            self.unsuccessful += 1
            self.count("unsuccessful")
            if self.unsuccessful <= self.NOTED:
                self.note(f"eexp: {record['id']}: the expert did not succeed (score {record.get('score')})")
        yield record

    def _replace(self) -> None:
        """Close the failed instance (bounded by the step limit; its own failure to close is not reported) and make
        a fresh one."""
        try:
            guarded(self.env.close, "closing after an error", self.timeout)
        except EnvError:
            pass
        self.env = make_env(self.env_name, **self.env_args)

    def close(self) -> None:
        self.env.close()


def run_expert(io: StageIO, env_name: str, env_args: dict | None = None, *, split: str = "train",
               n: int | None = None, seed: int = 0, task_ids: list[str] | tuple[str, ...] = (),
               timeout: float | None = None, include_admissible: bool = True,
               note: Callable[[str], None] = lambda message: None) -> None:
    """Write the expert trajectories of the tasks `pick_tasks` chooses to io's output (--resume skips the tasks
    already there), and say how many did not succeed."""
    stage = Expert(env_name, env_args, seed=seed, timeout=timeout, include_admissible=include_admissible,
                   count=io.count, note=note)
    try:
        tasks = pick_tasks(stage.env, split, n, seed, task_ids)
    except BaseException:
        stage.close()
        raise
    io.run_source(stage, tasks, key=stage.trajectory_id, output_kind="trajectory", unit="task")
    if stage.unsuccessful or stage.errors:
        note(f"eexp: {stage.unsuccessful} of {io.stats.records_out} expert trajectories did not succeed, "
             f"{stage.errors} had environment errors")
