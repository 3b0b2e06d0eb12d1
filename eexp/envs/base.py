"""The environment protocol of DESIGN.md, and the registry filled from the `eexp.envs` entry points.

An environment is a class; one instance runs one episode at a time. Tasks are plain dicts
`{id, split, goal, category?}` with string ids that mean the same task everywhere (the world of a split is fixed).
DESIGN.md ("Environments") is the contract in full; `eexp envs --check NAME` (eexp.envs.check) tests an
environment against it.
"""

from __future__ import annotations

import importlib.util
import random
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version
from typing import Any

from eexp.errors import EnvError, entry_point_source
from eexp.text import normalize_space


class Env:
    """Base class and protocol. Subclasses set the class attributes and implement the methods marked required."""

    name: str = ""
    version: str = "0"  # set on the class, never on an instance: `eexp envs` reads the class
    splits: tuple[str, ...] = ("train", "test", "ood")
    can_snapshot: bool = False
    action_format: str = ""  # one line for `eexp envs NAME`, e.g. "search[QUERY] | click[LABEL]"
    max_steps: int = 30  # eval's default episode length
    closed_actions: bool = True  # True when admissible() lists every valid action
    # The options (--env-arg KEY=VALUE) and their defaults. When declared (a dict), an unknown option is an EnvError
    # and an option given at its default is dropped from `kwargs` (what records and trajectory ids carry), so the
    # default world has one id however it was asked for. None: not declared, every option is recorded as given.
    options: dict[str, Any] | None = None

    def __init__(self, **kwargs: Any):
        if self.options is not None:
            unknown = sorted(set(kwargs) - set(self.options))
            if unknown:
                raise EnvError(
                    f"{self.name}: unknown options {', '.join(unknown)} (known: {', '.join(self.options) or 'none'})"
                )
            kwargs = {k: v for k, v in kwargs.items() if v != self.options[k]}
        self.kwargs = kwargs

    # required ---------------------------------------------------------------------------------------------------
    def tasks(self, split: str) -> list[dict]:
        """Every task of a split, in a fixed order."""
        raise NotImplementedError

    def reset(self, task: dict) -> str:
        """Start the task; returns the first observation."""
        raise NotImplementedError

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        """(observation, reward, done, info). info["valid"] is False for an action the environment rejected;
        a bad action gets the environment's own error observation, never an exception."""
        raise NotImplementedError

    def expert(self, task: dict) -> list[str]:
        """The oracle or gold action sequence for a task: deterministic, ending where the episode is done, and
        computed without touching the episode in progress (the oracle policy calls it mid-episode)."""
        raise NotImplementedError

    def success(self) -> bool:
        raise NotImplementedError

    # optional ---------------------------------------------------------------------------------------------------
    def admissible(self) -> list[str] | None:
        """The valid actions in the current state, or None where the action set is open."""
        return None

    def score(self) -> float:
        """A number in [0, 1] (1 for a solved task by convention), at any point of an episode."""
        return 1.0 if self.success() else 0.0

    def canonicalize(self, action: str) -> str:
        return normalize_space(action)

    def replay(self, task: dict, prefix: list[str]) -> str:
        """Reset and replay an action prefix; returns the observation reached. Environments with a faster way to
        step through known actions (ScienceWorld's raw server step) override this."""
        observation = self.reset(task)
        for action in prefix:
            observation, _, _, _ = self.step(action)
        return observation

    def read_text(self, task: dict, observations: list[str]) -> dict:
        """What this environment reads from the text of an episode's observations alone, where another hand wrote
        them (the dream environment, eexp.envs.dream, asks it of a world model's predictions): any of
        `admissible` (the actions the last observation offers, as admissible() would list them), `valid` (False:
        the last observation is this environment's refusal of the action), `done` (it ends the episode), `score`
        and `success` (this environment's own check, applied to the text). {} (the default): it reads nothing."""
        return {}

    def record_meta(self) -> dict:
        """What this environment adds to the `meta` of the records made in it (expert, rollout, eval): {} for an
        environment that is what its name says; the dream environment says that it was dreamed, and by what."""
        return {}

    def snapshot(self) -> Any:
        raise NotImplementedError(f"{self.name} cannot snapshot; reach states by replay")

    def restore(self, snap: Any) -> None:
        raise NotImplementedError(f"{self.name} cannot snapshot; reach states by replay")

    @classmethod
    def check_options(cls, kwargs: dict[str, Any]) -> None:
        """Refuse, before a run starts anything, options it cannot work with (a server that is not named or does
        not answer, a data folder that is missing): an EnvError of one line that says what to give. Cheap: it starts
        no process and plays no episode. `kwargs` as records carry them (options at their default may be absent).
        make_env calls it before every instance it makes for episodes (expert, eval), and rollout once per world
        before its first record, so a run whose every record would fail the same way stops at once, writing no
        record. An instance that plays no episode (branch's, which only canonicalizes: make_idle_env) is made
        without it, so keep it out of __init__."""

    def close(self) -> None:
        """Release everything the instance started (processes, files). eexp calls it when done with an instance and
        after any failure or timeout inside one of its calls (then the instance is never used again); it must work
        at any point, before any reset() and twice."""
        pass

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "splits": list(self.splits),
            "can_snapshot": self.can_snapshot,
            "action_format": self.action_format,
            "max_steps": self.max_steps,
            "closed_actions": self.closed_actions,
        }

    def task(self, split: str, task_id: str) -> dict:
        """One task by id, with an error that says what exists."""
        if split not in self.splits:
            raise EnvError(f"{self.name} has no split {split!r} (splits: {', '.join(self.splits)})")
        for t in self.tasks(split):
            if t["id"] == task_id:
                return t
        raise EnvError(f"{self.name} has no task {task_id!r} in split {split!r}")

    def env_record(self) -> dict:
        """The `env` field of the records this environment's stages write."""
        return {"name": self.name, "version": self.version, "kwargs": dict(self.kwargs)}


class NumberedTasks(Env):
    """An environment whose tasks are numbered in each split (`<split>-00042`), built from the split and the number
    alone (shop, tools): `tasks`, `task` and `locate` from `split_sizes` and the subclass's `task_fields`."""

    split_sizes: dict[str, int] = {}  # split -> how many tasks

    def task_fields(self, split: str, index: int) -> dict:
        """The fields of task `index` of `split` besides `id` and `split`: `goal`, and `category` if any."""
        raise NotImplementedError

    def numbered_task(self, split: str, index: int) -> dict:
        return {"id": f"{split}-{index:05d}", "split": split, **self.task_fields(split, index)}

    def tasks(self, split: str) -> list[dict]:
        self._check_split(split)
        return [self.numbered_task(split, i) for i in range(self.split_sizes[split])]

    def task(self, split: str, task_id: str) -> dict:
        self._check_split(split)
        found = self._number(task_id)
        if found is None or found[0] != split:
            raise EnvError(
                f"{self.name} has no task {task_id!r} in split {split!r} "
                f"(ids are {split}-00000 to {split}-{self.split_sizes[split] - 1:05d})"
            )
        return self.numbered_task(*found)

    def locate(self, task: dict) -> tuple[str, int]:
        """(split, number) of a task from its id."""
        found = self._number(str(task.get("id", "")))
        if found is None:
            raise EnvError(f"{self.name} has no task {task.get('id')!r}")
        return found

    def _check_split(self, split: str) -> None:
        if split not in self.split_sizes:
            raise EnvError(f"{self.name} has no split {split!r} (splits: {', '.join(self.splits)})")

    def _number(self, task_id: str) -> tuple[str, int] | None:
        split, dash, number = task_id.rpartition("-")
        if (
            not dash
            or split not in self.split_sizes
            or len(number) != 5
            or not number.isdigit()
            or int(number) >= self.split_sizes[split]
        ):
            return None
        return split, int(number)


def pick_tasks(
    env: Env, split: str, n: int | None = None, seed: int = 0, task_ids: list[str] | tuple[str, ...] = ()
) -> list[dict]:
    """The tasks a stage runs (expert, `envs --check`): the ids asked for, else a deterministic sample of n tasks
    of the split.

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


def package_version(dist: str) -> str:
    """`<dist>-<installed version>` (or `<dist>` when it is not installed) for the class attribute `version` of an
    environment that wraps a package: read from the package's metadata, without importing it."""
    try:
        return f"{dist}-{version(dist)}"
    except PackageNotFoundError:
        return dist


def registry() -> dict[str, Any]:
    """name -> entry point, for every installed environment (eexp's own register the same way)."""
    return {ep.name: ep for ep in entry_points(group="eexp.envs")}


# The Python modules eexp's own environments need beyond its core, and the extra of pyproject.toml that brings them
# (None: BFCL's package, installed without its declared dependencies, as install.sh does). Their entry points load
# without them (each module imports its package only when an instance is made), so `eexp envs` asks this table
# which are installed. alfworld and tau2 are extras of their own, outside `all`: a default install lacks them.
NEEDS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "textworld": (("textworld",), "all"),
    "scienceworld": (("scienceworld",), "all"),
    "miniwob": (("miniwob", "selenium"), "miniwob"),
    "bfcl": (("bfcl_eval",), None),
    "alfworld": (("alfworld", "fast_downward"), "alfworld"),
    "tau2": (("tau2",), "tau2"),
}


def missing_modules(name: str) -> list[str]:
    """The modules environment `name` needs (NEEDS) that are not installed: found, not imported (importing alfworld
    makes folders)."""
    return [m for m in NEEDS.get(name, ((), None))[0] if importlib.util.find_spec(m) is None]


# eexp's environments over another environment, named `KIND:ARGUMENT` and read from that form (as a policy's kind is
# read from its spec), not installed entry points: the class's `bind(argument)` is the environment the whole name
# stands for, and its `form` how the name is written. Loaded when named, as an entry point is (the module imports
# this one).
WRAPPERS = {"dream": EntryPoint(name="dream", value="eexp.envs.dream:DreamEnv", group="eexp.envs")}


def wrapper_class(kind: str) -> Any:
    """The class of the wrapper KIND (WRAPPERS)."""
    return WRAPPERS[kind].load()


def env_class(name: str) -> type[Env]:
    kind, sep, argument = name.partition(":")
    if kind in WRAPPERS:
        if not sep:
            raise EnvError(wrapper_class(kind).usage)
        return wrapper_class(kind).bind(argument)
    known = registry()
    if name not in known:
        names = ", ".join(sorted(known) + [wrapper_class(k).form for k in WRAPPERS]) or "none"
        raise EnvError(f"unknown environment {name!r} (known: {names})")
    ep = known[name]
    try:
        return ep.load()
    except EnvError:  # the package's own message (and install hint), as it wrote it
        raise
    except ImportError as e:
        if ep.value.startswith("eexp."):
            raise EnvError(
                f"environment {name!r} is registered but cannot load: {e} "
                f"(its package is missing: ./install.sh or pip install 'eexp[all]' installs it)"
            ) from None
        raise EnvError(
            f"environment {name!r} is registered but cannot load: {e} (it comes from {entry_point_source(ep)})"
        ) from None
    except AttributeError as e:
        raise EnvError(f"environment {name!r} is registered as {ep.value} but that does not exist: {e}") from None
    except Exception as e:  # a plugin's crash at import: one line, not a traceback
        raise EnvError(
            f"environment {name!r} is registered but cannot load: {type(e).__name__}: {e} "
            f"(it comes from {entry_point_source(ep)})"
        ) from None


def make_env(name: str, **kwargs: Any) -> Env:
    """An instance of environment `name` to play episodes with: the options it cannot work with (Env.check_options:
    a user simulator that does not answer, games that are not there) are refused first, an EnvError."""
    cls = env_class(name)
    check_options = getattr(cls, "check_options", None)  # a plugin need not subclass Env
    if check_options is not None:
        check_options(kwargs)
    return cls(**kwargs)


def record_meta(env: Env) -> dict:
    """What `env` adds to the meta of the records made in it (Env.record_meta; a plugin need not subclass Env)."""
    method = getattr(env, "record_meta", None)
    return dict(method()) if method is not None else {}


def make_idle_env(name: str, **kwargs: Any) -> Env:
    """An instance of environment `name` that plays no episode (branch canonicalizes actions with it): what only
    episodes need (Env.check_options) is not asked for."""
    return env_class(name)(**kwargs)
