"""expert: trajectories from an environment's oracle, with success checked by the environment."""

from __future__ import annotations

from typing import Callable, Iterator

from eexp.envs.base import Env, make_env, pick_tasks, record_meta
from eexp.envs.reach import TIMEOUT_RETRIES, StepTimeout, guarded
from eexp.errors import EnvError, environment_failures
from eexp.records import make_meta, short_hash
from eexp.runner import Stage, StageIO
from eexp.workers import WorkerPool, open_pool

# `eexp expert --step-timeout`'s default: records made with it do not say it (those of other limits do: meta_settings)
STEP_TIMEOUT = 60.0


def trajectory_id(env: Env, task: dict) -> str:
    """`<env>:<task id>`, with a hash of the environment's kwargs when it has any (another world)."""
    suffix = f"~{short_hash(env.kwargs, n=8)}" if env.kwargs else ""
    return f"{env.name}:{task['id']}{suffix}"


def meta_settings(timeout: float | None, include_admissible: bool) -> dict:
    """What meta adds of the run's settings that change its records: step_timeout (0: no limit) where it is not
    STEP_TIMEOUT, and admissible: false where the admissible actions are left out. Nothing for the defaults, so
    their records stay what they were; --resume compares both (eexp.records.run_settings)."""
    limit = timeout or 0
    return {
        **({"step_timeout": limit} if limit != STEP_TIMEOUT else {}),
        **({} if include_admissible else {"admissible": False}),
    }


def expert_trajectory(
    env: Env,
    task: dict,
    seed: int = 0,
    timeout: float | None = None,
    include_admissible: bool = True,
    meta_extra: dict | None = None,
) -> dict:
    """Run the oracle's actions on a fresh episode. An environment failure (exception, timeout) is recorded as
    `error` on the trajectory, with the steps done so far, and success false. `meta_extra`: the run's settings
    for meta (meta_settings)."""
    return play_expert(env, task, seed, timeout, include_admissible, meta_extra)[0]


def play_expert(
    env: Env,
    task: dict,
    seed: int = 0,
    timeout: float | None = None,
    include_admissible: bool = True,
    meta_extra: dict | None = None,
) -> tuple[dict, EnvError | None]:
    """expert_trajectory's record, and the environment's failure it records as `error` (None: none)."""
    record = {
        "id": trajectory_id(env, task),
        "env": env.env_record(),
        "task": {k: task[k] for k in ("id", "split", "goal", "category", "game_seed") if k in task},
        "steps": [],
        "final_observation": "",
        "success": False,
    }
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
        error = e
    if error is not None:
        record["error"] = str(error)
    record["meta"] = make_meta(
        "expert",
        env=env.name,
        env_version=env.version,
        env_kwargs=dict(env.kwargs),
        split=task["split"],
        seed=seed,
        policy="oracle",
        **(meta_extra or {}),
        **record_meta(env),
    )
    return record, error


class Oracle:
    """One environment that plays the oracle task after task: `oracle(task)` is the task's expert trajectory. An
    environment error (an exception, or a call slower than `timeout`) is the trajectory's `error`; the instance is
    then closed and a fresh one made, since after a failure inside one of its calls an instance is never used again
    (DESIGN.md). A task whose call timed out is played again from the start on the fresh one (TIMEOUT_RETRIES
    times; meta says `timeouts_retried`). The expert stage's own one, and the state of each of its workers (-j N,
    --ray)."""

    def __init__(
        self,
        env_name: str,
        env_args: dict | None = None,
        seed: int = 0,
        timeout: float | None = None,
        include_admissible: bool = True,
        meta_extra: dict | None = None,
    ):
        self.env_name, self.env_args = env_name, dict(env_args or {})
        self.seed, self.timeout, self.include_admissible = seed, timeout, include_admissible
        self.meta_extra = dict(meta_extra or {})
        self.env = make_env(env_name, **self.env_args)

    def __call__(self, task: dict) -> dict:
        retried = 0
        while True:
            record, error = play_expert(
                self.env, task, self.seed, self.timeout, self.include_admissible, self.meta_extra
            )
            if error is not None:
                self._replace()
            if not isinstance(error, StepTimeout) or retried == TIMEOUT_RETRIES:
                break
            retried += 1
        if retried:
            record["meta"]["timeouts_retried"] = retried
        return record

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


def _worker_trajectory(oracle: Oracle, task: dict) -> dict:
    return oracle(task)


def _worker_cleanup(oracle: Oracle) -> None:
    oracle.close()  # the environment, and with it its own processes (a JVM, a planner)


class Expert(Stage):
    """The expert stage over tasks: called with a task, it yields the oracle's trajectory of it.

    With `jobs` above 1 (or a `cluster`: --ray) the tasks go to worker processes (an eexp.workers pool, each with
    an `Oracle` of its own) and the trajectories come back in task order, the records of a serial run; at most
    2 x jobs tasks are in flight. Its own environment then only lists the tasks and names their trajectories.
    Counts `unsuccessful` and `errors` in task order; the first five of each are noted with their reason."""

    NOTED = 5

    def __init__(
        self,
        env_name: str,
        env_args: dict | None = None,
        *,
        seed: int = 0,
        timeout: float | None = None,
        include_admissible: bool = True,
        count: Callable[..., None] = lambda name, n=1: None,
        note: Callable[[str], None] = lambda message: None,
        jobs: int = 1,
        cluster=None,
    ):
        self.count, self.note = count, note
        meta_extra = meta_settings(timeout, include_admissible)
        oracle_args = (env_name, env_args, seed, timeout, include_admissible, meta_extra)
        self.oracle = Oracle(*oracle_args)
        self.unsuccessful = self.errors = self.retried = 0
        count("unsuccessful", 0)
        count("errors", 0)
        count("timeouts_retried", 0)
        # the workers start with `start_workers` (run_expert: once the tasks are known), else with the first task
        self._pool_spec = (
            (jobs, Oracle, oracle_args, _worker_cleanup, cluster) if jobs > 1 or cluster is not None else None
        )
        self._workers: WorkerPool | None = None

    @property
    def env(self) -> Env:
        return self.oracle.env

    def trajectory_id(self, task: dict) -> str:
        return trajectory_id(self.env, task)

    def start_workers(self) -> None:
        if self._pool_spec is not None and self._workers is None:
            self._workers = open_pool(*self._pool_spec)

    def __call__(self, task: dict) -> Iterator[dict]:
        if self._pool_spec is None:
            yield self._account(self.oracle(task))
            return
        self.start_workers()
        self._workers.submit(_worker_trajectory, task)
        yield from map(self._account, self._workers.ready())

    def finish(self) -> Iterator[dict]:
        if self._workers is not None:
            yield from map(self._account, self._workers.ready(block=True))

    def _account(self, record: dict) -> dict:
        if record["meta"].get("timeouts_retried"):
            self.retried += 1
            self.count("timeouts_retried", record["meta"]["timeouts_retried"])
            if self.retried <= self.NOTED:
                self.note(f"eexp: {record['id']}: the environment timed out; played again on a fresh instance")
        if "error" in record:
            self.errors += 1
            self.count("errors")
            if self.errors <= self.NOTED:
                self.note(f"eexp: {record['id']}: {record['error']}")
        elif not record["success"]:
            self.unsuccessful += 1
            self.count("unsuccessful")
            if self.unsuccessful <= self.NOTED:
                self.note(f"eexp: {record['id']}: the expert did not succeed (score {record.get('score')})")
        return record

    def close(self) -> None:
        try:
            if self._workers is not None:
                # tasks still in flight are an abort (Ctrl-C, an error): stop the workers at once
                if self._workers.pending:
                    self._workers.terminate()
                else:
                    self._workers.close()
                self._workers = None
        finally:
            self.oracle.close()


def run_expert(
    io: StageIO,
    env_name: str,
    env_args: dict | None = None,
    *,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    task_ids: list[str] | tuple[str, ...] = (),
    timeout: float | None = None,
    include_admissible: bool = True,
    note: Callable[[str], None] = lambda message: None,
    jobs: int = 1,
    cluster=None,
) -> None:
    """Write the expert trajectories of the tasks `pick_tasks` chooses (those of io's --shard, by trajectory id) to
    io's output (--resume skips the tasks already there), and say how many did not succeed. `jobs` worker processes,
    or the workers of `cluster` (--ray), run the tasks; the records are those of a serial run, in the same order. More
    than MAX_FAILED_SHARE of the trajectories with an environment error is an EnvError (exit 1) once they are all
    written. meta records `timeout` and `include_admissible` where they are not the CLI's defaults (meta_settings)."""
    stage = Expert(
        env_name,
        env_args,
        seed=seed,
        timeout=timeout,
        include_admissible=include_admissible,
        count=io.count,
        note=note,
        jobs=jobs,
        cluster=cluster,
    )
    try:
        tasks = pick_tasks(stage.env, split, n, seed, task_ids)
        if n is not None and not task_ids and n > len(tasks):  # not an error: the split is all there is
            note(f"eexp: the {split} split has {len(tasks)} tasks: writing all of them (asked for {n})")
        stage.start_workers()  # a cluster that cannot be reached is said before the output is opened
    except BaseException:
        stage.close()
        raise
    # sliced by trajectory id, as every stage after it slices its records (eexp.runner.shard_key), so `expert --shard
    # I/N | imitation-data --shard I/N` keeps every trajectory of slice I
    io.run_source(
        stage, tasks, key=stage.trajectory_id, shard_key=stage.trajectory_id, output_kind="trajectory", unit="task"
    )
    if stage.unsuccessful or stage.errors:
        # an environment error is a trajectory that did not succeed too (success: false): counted once, and said
        note(
            f"eexp: {stage.unsuccessful + stage.errors} of {io.stats.records_out} expert trajectories did not "
            f"succeed" + (f" ({stage.errors} had an environment error)" if stage.errors else "")
        )
    problem = environment_failures(stage.errors, io.stats.records_out, "expert trajectories")
    if problem:
        raise problem
