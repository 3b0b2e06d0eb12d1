"""rollout: execute the expert action and every alternative of a branch record from its recorded state.

The records of one trajectory are walked in one environment, so reaching step i costs as little as the environment
allows:

- with snapshots: the state is snapshotted when reached, each alternative is `restore -> step`, and the expert
  action is stepped last from a restore, which leaves the environment at step i+1 for the next record:
  K + 1 steps a state, (K + 1)·T for a T-step trajectory;
- without: the env stands at step i when the record arrives (the previous record's expert step took it there);
  the first alternative is stepped from there, every later execution is a reset + replay of the i-step prefix,
  and the expert action goes last again: about K·T²/2 steps, against (K + 1)·T²/2 for a replay per execution.

Before every execution the observation reached is compared with the recorded one (eexp.envs.reach.check_state):
a mismatch is an `error` (on the record, or on the alternative when a later replay diverges), never silently wrong
data. An exception or a hang (`--step-timeout`) inside the environment is an `error` on that alternative; the
environment is then restarted and the stage goes on. A hang is first tried again once on a fresh environment
(eexp.envs.reach.TIMEOUT_RETRIES: a loaded machine can make one call slow; meta says `timeouts_retried`).

`-j N` runs whole trajectories in N worker processes (an eexp.workers.Pool), each keeping one environment per
(name, kwargs), and writes the outcomes in input order. The workers ignore Ctrl-C from their first instruction on:
the interrupt is the parent's, which stops them at once and exits 130 with whole lines written (the trajectories
in flight are walked again by --resume). With a cluster (`--ray`, eexp.workers_ray) the workers are Ray actors
across its nodes instead, and the outcomes the same.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterator

import orjson

from eexp.envs.base import Env, env_class, make_env, record_meta
from eexp.envs.reach import StateMismatch, check_state, guarded, reach, retry_timeouts
from eexp.errors import EnvError, environment_failures
from eexp.records import make_meta
from eexp.runner import RecordError, Stage
from eexp.workers import WorkerPool, open_pool

REPLAY_RETRIES = 1  # a state mismatch is tried again this many times from a reset before it is an error

INSTALL_HINT = (
    "eexp's optional environments come with `pip install 'eexp[all]'` (BFCL: `pip install --no-deps "
    "bfcl-eval mpmath`); a third-party one with the package that registers it under the `eexp.envs` "
    "entry points"
)


def env_key(env_record: dict) -> str:
    return orjson.dumps([env_record["name"], env_record.get("kwargs") or {}], option=orjson.OPT_SORT_KEYS).decode()


class EnvPool:
    """One live environment per (name, kwargs) in this process; a crashed or hung one is closed and made again."""

    def __init__(self, factory: Callable[..., Env] = make_env, timeout: float | None = None):
        self.factory, self.timeout = factory, timeout
        self.envs: dict[str, Env] = {}

    def get(self, env_record: dict) -> Env:
        key = env_key(env_record)
        if key not in self.envs:
            self.envs[key] = self.factory(env_record["name"], **(env_record.get("kwargs") or {}))
        return self.envs[key]

    def restart(self, env_record: dict) -> None:
        key = env_key(env_record)
        env = self.envs.pop(key, None)
        if env is not None:
            try:  # a hung environment may hang on close too: bounded, and its failure is not ours to report
                guarded(env.close, "closing after an error", self.timeout)
            except Exception:
                pass

    def close(self) -> None:
        for key in list(self.envs):
            try:
                self.envs.pop(key).close()
            except Exception:
                pass


class Walk:
    """Where one environment stands on one trajectory, and the cheapest way to a recorded state from there."""

    def __init__(self, pool: EnvPool, env_record: dict, task: dict, counts: collections.Counter):
        self.pool, self.env_record, self.task, self.counts = pool, env_record, task, counts
        self.timeout = pool.timeout
        self._reset_position()

    def _reset_position(self) -> None:
        self.at: tuple[str, ...] | None = None  # the expert prefix the env stands at (None: off the path/unknown)
        self.observation = ""
        self.snap: tuple[tuple[str, ...], Any, str] | None = None  # (prefix, snapshot, observation)

    @property
    def env(self) -> Env:
        return self.pool.get(self.env_record)

    def matches(self, record: dict) -> bool:
        return record["env"] == self.env_record and record["task"] == self.task

    def restart(self) -> None:
        self.pool.restart(self.env_record)
        self.counts["env_restarts"] += 1
        self._reset_position()

    def _step(self, action: str, what: str) -> tuple:
        result = guarded(lambda: self.env.step(action), what, self.timeout)
        self.counts["env_steps"] += 1
        return result

    def reach(self, prefix: tuple[str, ...], expected: str, step: int) -> str:
        """Put the env at the state after `prefix` and check its observation against the recorded one.

        A mismatch is tried again from a reset (REPLAY_RETRIES times): some simulators (ScienceWorld) list objects
        in an order that depends on the process's history, so one replay can differ where the next does not. What
        is finally written has always passed the check.
        """
        for attempt in range(REPLAY_RETRIES + 1):
            try:
                return self._reach_once(prefix, expected, step)
            except StateMismatch:
                if attempt == REPLAY_RETRIES:
                    raise
                self.counts["replay_retries"] += 1
                self.at, self.snap = None, None  # start over from a reset

    def _reach_once(self, prefix: tuple[str, ...], expected: str, step: int) -> str:
        env = self.env
        if self.at is not None and prefix[: len(self.at)] == self.at:
            pass  # already there, or further along the same path
        elif self.snap is not None and prefix[: len(self.snap[0])] == self.snap[0]:
            snap_prefix, snap, observation = self.snap
            self.at = None
            guarded(lambda: env.restore(snap), f"restoring step {len(snap_prefix)}", self.timeout)
            self.at, self.observation = snap_prefix, observation
        else:
            self.at = None
            self.observation = reach(env, self.task, list(prefix), None, self.timeout)
            self.counts["env_steps"] += len(prefix)
            self.at = prefix
        while len(self.at) < len(prefix):  # walk on along the expert path
            action = prefix[len(self.at)]
            position, self.at = self.at, None
            self.observation = self._step(action, f"expert action {len(position)} {action!r}")[0]
            self.at = position + (action,)
        check_state(self.observation, expected, step)
        if env.can_snapshot and (self.snap is None or self.snap[0] != prefix):
            self.snap = (prefix, guarded(env.snapshot, f"snapshot at step {step}", self.timeout), self.observation)
        return self.observation

    def execute(self, prefix: tuple[str, ...], action: str, expected: str, step: int, expert: bool = False) -> tuple:
        """Reach the state (checked), then step `action`. The expert action keeps the env on the recorded path."""
        self.reach(prefix, expected, step)
        self.at = None
        result = self._step(action, f"action {action!r}")
        if expert:
            self.at, self.observation = prefix + (action,), result[0]
        return result


def _fill(target: dict, result: tuple) -> None:
    observation, reward, done, info = result
    target.update(
        next_observation=str(observation),
        reward=float(reward or 0.0),
        done=bool(done),
        valid=bool((info or {}).get("valid", True)),
    )


def branched_from(record: dict) -> list:
    """What an outcome keeps of the branch record it was rolled out from, read alike from either: the environment,
    the task, the state, the actions that reached it and those taken from it. rollout --resume compares it for every
    input it skips (eexp.runner.SameInput), so that a part begun from another expert file, behind the same branch
    settings, is not continued with this one's outcomes."""
    env = record.get("env") or {}
    return [
        env.get("name"),
        env.get("kwargs") or {},
        record.get("task"),
        record.get("prefix"),
        record.get("state"),
        (record.get("expert") or {}).get("action"),
        [(a.get("action"), a.get("source")) for a in record.get("alternatives") or []],
    ]


def rollout_record(record: dict, walk: Walk, counts: collections.Counter, meta_extra: dict | None = None) -> dict:
    """The outcome record of one branch record (the walk must match its env and task)."""
    out = {**record, "expert": dict(record["expert"]), "alternatives": [dict(a) for a in record["alternatives"]]}
    prefix = tuple(record["prefix"])
    step = record["step"]
    expected = record["state"]["observation"]
    try:
        env = walk.env
    except Exception as e:  # the environment cannot even be made (bad kwargs, a missing data file)
        out["error"] = f"cannot start the environment: {type(e).__name__}: {e}"
        out["meta"] = make_meta(
            "rollout", env=record["env"]["name"], **(meta_extra or {}), branch=record.get("meta") or {}
        )
        counts["errors"] += 1
        return out
    out["meta"] = make_meta(
        "rollout",
        env=env.name or record["env"]["name"],
        env_version=str(env.version),
        snapshots=bool(env.can_snapshot),
        **(meta_extra or {}),
        **record_meta(env),
        branch=record.get("meta") or {},
    )

    def failed(target: dict, err: EnvError, what: str = "") -> None:
        target["error"] = what + str(err)
        counts["errors"] += 1
        if isinstance(err, StateMismatch):
            counts["state_mismatches"] += 1
        else:
            walk.restart()  # an exception or a hang: the environment may be broken, start a fresh one

    retried = 0

    def retry(call: Callable[[], Any]) -> Any:
        """call(), made again on a fresh environment where it timed out (TIMEOUT_RETRIES)."""

        def count() -> None:
            nonlocal retried
            retried += 1
            counts["timeouts_retried"] += 1

        return retry_timeouts(call, walk.restart, count)

    try:
        retry(lambda: walk.reach(prefix, expected, step))
    except EnvError as e:  # StateMismatch, ReachError, or the environment's own EnvError
        failed(out, e, "cannot reach the recorded state: ")
    else:
        for alt in out["alternatives"]:
            try:
                _fill(alt, retry(lambda a=alt: walk.execute(prefix, a["action"], expected, step)))
            except EnvError as e:
                failed(alt, e)
        try:
            _fill(
                out["expert"],
                retry(lambda: walk.execute(prefix, record["expert"]["action"], expected, step, expert=True)),
            )
        except EnvError as e:
            failed(out["expert"], e)
    if retried:
        out["meta"]["timeouts_retried"] = retried
    return out


def rollout_group(records: list[dict], pool: EnvPool, meta_extra: dict | None = None) -> tuple[list[dict], dict]:
    """The outcomes of consecutive records of one trajectory, walked in one environment; and the counts."""
    counts: collections.Counter = collections.Counter()
    walk: Walk | None = None
    outcomes = []
    for record in records:
        if walk is None or not walk.matches(record):
            walk = Walk(pool, record["env"], record["task"], counts)
        outcomes.append(rollout_record(record, walk, counts, meta_extra))
    return outcomes, dict(counts)


# --- worker processes (-j N): an eexp.workers.Pool whose workers each keep an EnvPool --------------------------


def _worker_setup(factory: Callable[..., Env], timeout: float | None, meta_extra: dict) -> tuple[EnvPool, dict]:
    return EnvPool(factory, timeout), meta_extra


def _worker_cleanup(state: tuple[EnvPool, dict]) -> None:
    state[0].close()  # the environments, and with them their own processes (a JVM)


def _worker_group(state: tuple[EnvPool, dict], records: list[dict]) -> tuple[list[dict], dict]:
    pool, meta_extra = state
    return rollout_group(records, pool, meta_extra)


class Rollout(Stage):
    """The stage: `rollout(record)` yields the outcomes ready so far, in input order; `finish()` yields the rest.

    With one job the records are walked as they come (a trajectory's env carries over from record to record).
    With N jobs a trajectory's records are collected until the next trajectory starts, then sent to a worker;
    at most 2N trajectories are in flight, so memory stays bounded however long the input.

    An outcome with an `error` (on the record, its expert action or an alternative) is counted in `failed`, the
    first NOTED said with their reason; `check_failures()` says how many when the run ends, and refuses the run
    (exit 1) past MAX_FAILED_SHARE.
    """

    NOTED = 5

    def __init__(
        self,
        jobs: int = 1,
        step_timeout: float | None = None,
        env_factory: Callable[..., Env] = make_env,
        count: Callable[[str, int], None] | None = None,
        note: Callable[[str], None] | None = None,
        cluster=None,
    ):
        self.jobs, self.step_timeout, self.env_factory = jobs, step_timeout, env_factory
        self.count = count or (lambda name, n=1: None)
        self.note = note or (lambda msg: None)
        self.meta_extra = {"step_timeout": step_timeout} if step_timeout else {}
        self._envs_checked: dict = {}  # env name -> why it cannot be used (None: it can); ("version", name)
        self.outcomes = self.failed = 0  # outcome records written, and those with an error
        self._group: list[dict] = []
        self._walk: Walk | None = None
        self._workers: WorkerPool | None = open_pool(
            jobs, _worker_setup, (env_factory, step_timeout, self.meta_extra), _worker_cleanup, cluster
        )
        self._pool = EnvPool(env_factory, step_timeout) if self._workers is None else None

    def check_env(self, record: dict) -> None:
        """An environment that is not installed is this record's error (FILE:LINE, --on-error), said plainly. Options
        the environment refuses before starting anything (Env.check_options: a user simulator that does not answer)
        stop the run at its first record of that world, an EnvError (exit 1): every record would fail the same way."""
        name = record["env"]["name"]
        if name not in self._envs_checked:
            problem = None
            if self.env_factory is make_env:
                try:
                    env_class(name)
                except EnvError as e:
                    problem = f"environment {name!r} is not available here ({e}). {INSTALL_HINT}"
            self._envs_checked[name] = problem
        if self._envs_checked[name]:
            raise RecordError(self._envs_checked[name])
        kwargs = record["env"].get("kwargs") or {}
        world = ("options", name, orjson.dumps(kwargs, option=orjson.OPT_SORT_KEYS))
        if self.env_factory is make_env and world not in self._envs_checked:
            check_options = getattr(env_class(name), "check_options", None)  # a plugin need not subclass Env
            if check_options is not None:
                check_options(kwargs)
            self._envs_checked[world] = None

    def _add_counts(self, counts: dict) -> None:
        for name, n in counts.items():
            self.count(name, n)

    def _check_version(self, out: dict) -> dict:
        """Say once per environment when the records were made with another version than the one installed."""
        name, made, used = out["env"]["name"], str(out["env"]["version"]), out["meta"].get("env_version")
        if used is not None and used != made and ("version", name) not in self._envs_checked:
            self._envs_checked[("version", name)] = None
            self.note(
                f"eexp: the records of {name!r} were made with version {made}, this is {used}; every state is "
                f"checked, and one that changed becomes an error"
            )
        return self._account(out)

    def _account(self, out: dict) -> dict:
        """Count the outcome, and one with an error; say the first NOTED errors with their reason."""
        self.outcomes += 1
        if "error" in out:
            why = out["error"]
        else:
            failed = [(f"the alternative {a['action']!r}", a) for a in out["alternatives"] if "error" in a]
            if "error" in out["expert"]:
                failed.append((f"the expert action {out['expert']['action']!r}", out["expert"]))
            if not failed:
                return out
            more = f" (and {len(failed) - 1} more of its actions)" if len(failed) > 1 else ""
            why = f"{failed[0][0]}: {failed[0][1]['error']}{more}"
        self.failed += 1
        if self.failed <= self.NOTED:
            self.note(f"eexp: {out['id']}: {why}")
        return out

    def check_failures(self) -> None:
        """When the run is over: say how many outcomes have an error, and raise EnvError (exit 1) when more than
        MAX_FAILED_SHARE of them do."""
        if self.failed:
            self.note(
                f"eexp: {self.failed} of {self.outcomes} outcome records have an error (on the record, its "
                f"expert action or an alternative: `error` says why)"
            )
        problem = environment_failures(self.failed, self.outcomes, "outcome records")
        if problem:
            raise problem

    def __call__(self, record: dict) -> Iterator[dict]:
        self.check_env(record)
        if self._workers is None:  # walk it now: the env stays where the previous record of the trajectory left it
            counts: collections.Counter = collections.Counter()
            if self._walk is None or not self._walk.matches(record):
                self._walk = Walk(self._pool, record["env"], record["task"], counts)
            self._walk.counts = counts
            out = rollout_record(record, self._walk, counts, self.meta_extra)
            self._add_counts(counts)
            yield self._check_version(out)
            return
        if self._group and self._group[-1]["trajectory_id"] != record["trajectory_id"]:
            self._submit()
        self._group.append(record)
        yield from self._collect(block=False)

    def _submit(self) -> None:
        self._workers.submit(_worker_group, self._group)
        self._group = []

    def _collect(self, block: bool) -> Iterator[dict]:
        for outcomes, counts in self._workers.ready(block):
            self._add_counts(counts)
            yield from map(self._check_version, outcomes)

    def finish(self) -> Iterator[dict]:
        if self._workers is not None:
            if self._group:
                self._submit()
            yield from self._collect(block=True)

    def close(self) -> None:
        if self._workers is not None:
            # work still submitted or collected here is an abort (Ctrl-C, an error): stop the workers at once
            if self._group or self._workers.pending:
                self._workers.terminate()
            else:
                self._workers.close()
            self._workers = None
        if self._pool is not None:
            self._pool.close()
