"""`eexp envs --check NAME`: the environment contract of DESIGN.md, checked on a live environment.

A plugin author runs it before anyone builds data on the environment. Every check gives one `Check`: `ok`, `FAIL`
with the first problem found (one line: the task, the step, what differs), or `skip` where the check does not apply
(no snapshots, no declared options). The checks, in the order they run:

- lazy construction: constructing an instance and canonicalizing an action starts no process and no thread, and
  canonicalize() returns a string (branch builds an environment only to canonicalize);
- close(): safe before any reset() and twice after an episode (eexp's hook after a timeout or a crash);
- version: a non-empty string set on the class, which the instance does not change;
- tasks: tasks(split) lists every task up front, well formed (`id`, `split`, `goal`, `category?`), unique ids,
  each found again by task(split, id); an unknown split is an EnvError;
- determinism: two fresh instances give the same tasks, the same expert actions, and along the expert's episode the
  same observations and the same admissible lists in the same order; a second episode on the same instance too;
- the expert replays to success in a fresh instance: every action valid (and admissible, for a closed action set),
  done at the last action and not before, success() at the end;
- snapshot/restore equals replay (where the environment can snapshot): after restore() the admissible list, and
  the observation of an alternative and of the expert action, equal those after replaying the prefix;
- canonicalize round-trips: canonicalize() is idempotent and step(canonicalize(a)) gives what step(a) gives, for
  the expert's and some admissible actions;
- expert() leaves a live episode alone: calling it mid-episode (for this task and another) changes nothing that
  follows;
- score range: every score() seen along the way is a number in [0, 1];
- options: an option given at its declared default is dropped from the recorded kwargs, an unknown one is an
  EnvError (where the class declares `options`).

Every environment call runs under the step time limit (eexp.envs.reach.guarded), so a hang is a FAIL too.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from eexp.envs.base import Env, env_class, pick_tasks
from eexp.envs.reach import guarded
from eexp.errors import EnvError
from eexp.text import normalize_space

SCORE_RANGE = (0.0, 1.0)
PROBE_ACTION = "  Look   AROUND  "  # canonicalized on a fresh instance: any text must be accepted
ALTERNATIVES_PER_STATE = 2  # admissible actions besides the expert's tried by the canonicalize check


@dataclass
class Check:
    status: str  # "ok", "FAIL" or "skip"
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"

    def to_dict(self) -> dict:
        return {"check": self.name, "status": self.status, "detail": self.detail}


class Failed(Exception):
    """The first problem a check found: one line."""


def short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, str) else repr(normalize_space(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Guarded:
    """An environment whose every method call runs under the time limit and whose crashes become EnvErrors
    naming the call. Every score() return is checked against SCORE_RANGE and the first bad one kept."""

    def __init__(self, env: Env, timeout: float | None, where: Callable[[], str]):
        self.env, self.timeout, self.where = env, timeout, where
        self.scores = 0
        self.bad_score: str | None = None

    def call(self, method: str, *args: Any) -> Any:
        what = f"{method}({', '.join(short(a, 40) for a in args)})"
        value = guarded(lambda: getattr(self.env, method)(*args), what, self.timeout)
        if method == "score":
            self.scores += 1
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and SCORE_RANGE[0] <= value <= SCORE_RANGE[1]
            )
            if not ok and self.bad_score is None:
                self.bad_score = f"{self.where()}: score() is {value!r}, outside [0, 1]"
        return value

    def close(self) -> None:
        try:
            guarded(self.env.close, "close()", self.timeout)
        except EnvError:
            pass


class Checker:
    """Runs the checks on fresh instances from `factory`, on the tasks `pick(env)` returns."""

    def __init__(
        self,
        factory: Callable[..., Env],
        split: str | None = None,
        pick: Callable[[Env, str], list[dict]] | None = None,
        timeout: float | None = 60.0,
    ):
        self.factory_with = lambda extra: factory(**extra)  # the options check adds options of its own
        self.factory, self.timeout = (lambda: factory()), timeout
        self.split = split
        self.pick = pick or (lambda env, split: env.tasks(split)[:3])
        self.where = "construction"
        self.envs: list[Guarded] = []
        self.tasks: list[dict] | None = None
        self.all_tasks: list[dict] = []
        self.reference: dict[str, dict] = {}  # task id -> the expert episode of a fresh instance
        self.scores = 0
        self.bad_score: str | None = None

    # --- plumbing ---------------------------------------------------------------------------------------------------
    def fresh(self) -> Guarded:
        env = Guarded(
            guarded(self.factory, "constructing the environment", self.timeout), self.timeout, lambda: self.where
        )
        self.envs.append(env)
        return env

    def release(self) -> None:
        for env in self.envs:
            self.scores += env.scores
            self.bad_score = self.bad_score or env.bad_score
            env.close()
        self.envs.clear()

    def episode(
        self, env: Guarded, task: dict, actions: list[str], during: Callable[[int], None] | None = None
    ) -> dict:
        """Reset and take `actions`: the observation, admissible list and score of every state, the reward, done and
        valid flag of every step. `during(i)` runs in state i before its admissible list is read."""
        states, steps = [], []
        self.where = f"task {task['id']} after reset"
        observation = env.call("reset", task)
        for i in range(len(actions) + 1):
            if during is not None:
                during(i)
            admissible = env.call("admissible")
            states.append({"observation": observation, "admissible": admissible, "score": env.call("score")})
            if i == len(actions):
                break
            self.where = f"task {task['id']} step {i} ({actions[i]!r})"
            observation, reward, done, info = env.call("step", actions[i])
            self.where = f"task {task['id']} after step {i} ({actions[i]!r})"
            steps.append({"reward": reward, "done": done, "valid": (info or {}).get("valid", True)})
        return {"states": states, "steps": steps, "success": env.call("success")}

    def reference_of(self, task: dict) -> dict:
        """The expert's plan and episode in a fresh instance (the deterministic check's, when it got that far)."""
        if task["id"] not in self.reference:
            env = self.fresh()
            self.where = f"task {task['id']}: expert()"
            plan = env.call("expert", task)
            self.reference[task["id"]] = {"plan": plan, **self.episode(env, task, plan)}
        return self.reference[task["id"]]

    def run(self) -> Iterator[Check]:
        checks = [
            ("construction is lazy", self.check_lazy),
            ("tasks", self.check_tasks),
            ("version", self.check_version),
            ("close() is safe", self.check_close),
            ("deterministic", self.check_deterministic),
            ("expert replays to success", self.check_replay),
            ("snapshot/restore equals replay", self.check_snapshot),
            ("canonicalize round-trips through step()", self.check_canonicalize),
            ("expert() leaves the live episode undisturbed", self.check_undisturbed),
            ("score range", self.check_score),
            ("options", self.check_options),
        ]
        needs_tasks = {
            "deterministic",
            "expert replays to success",
            "snapshot/restore equals replay",
            "canonicalize round-trips through step()",
            "expert() leaves the live episode undisturbed",
            "score range",
        }
        for name, check in checks:
            if name in needs_tasks and self.tasks is None:
                yield Check("skip", name, "no tasks to run (see the tasks check)")
                continue
            self.where = ""  # each check says where it is; a failure before it does is named by its call alone
            try:
                status, detail = check()
            except Failed as e:
                status, detail = "FAIL", str(e)
            except EnvError as e:
                status, detail = "FAIL", self._at(str(e))
            except Exception as e:  # a check must report, never crash the command
                status, detail = "FAIL", self._at(f"{type(e).__name__}: {e}")
            finally:
                self.release()
            yield Check(status, name, normalize_space(str(detail)))

    def _at(self, problem: str) -> str:
        return f"{self.where}: {problem}" if self.where else problem

    # --- the checks -------------------------------------------------------------------------------------------------
    def check_lazy(self) -> tuple[str, str]:
        self.where = "construction"
        children, threads = _children(), set(threading.enumerate())
        started = time.perf_counter()
        env = self.fresh()
        self.where = "canonicalize() on a fresh instance"
        canonical = env.call("canonicalize", PROBE_ACTION)
        seconds = time.perf_counter() - started
        new_children = _children() - children
        new_threads = [t.name for t in threading.enumerate() if t not in threads and t.is_alive()]
        if not isinstance(canonical, str):
            raise Failed(f"canonicalize({PROBE_ACTION!r}) returned {short(canonical)}, not a string")
        if new_children:
            raise Failed(
                f"constructing and canonicalizing started {len(new_children)} process(es) "
                f"({_command(min(new_children))}); start heavy resources on first use (reset), not in "
                "__init__"
            )
        if new_threads:
            raise Failed(
                f"constructing and canonicalizing started {len(new_threads)} thread(s) "
                f"({', '.join(new_threads)}); start heavy resources on first use (reset), not in __init__"
            )
        return "ok", f"no process or thread started by constructing and canonicalizing ({seconds:.2f} s)"

    def check_close(self) -> tuple[str, str]:
        env = self.fresh()
        self.where = "close() before any reset()"
        guarded(env.env.close, "close()", self.timeout)
        self.where = "a second close()"
        guarded(env.env.close, "close()", self.timeout)
        if self.tasks:
            env = self.fresh()
            task = self.tasks[0]
            self.where = f"task {task['id']}"
            actions = env.call("expert", task)
            env.call("reset", task)
            if actions:
                env.call("step", actions[0])
            self.where = f"task {task['id']}: close() after a step"
            guarded(env.env.close, "close()", self.timeout)
            self.where = f"task {task['id']}: a second close()"
            guarded(env.env.close, "close()", self.timeout)
            return "ok", "before any reset(), and twice after a step"
        return "ok", "before any reset(), and twice"

    def check_version(self) -> tuple[str, str]:
        env = self.fresh()
        cls = type(env.env)
        declared = cls.version
        if not isinstance(declared, str) or not declared:
            raise Failed(f"the class's version is {short(declared)}; set a non-empty string on the class")
        if env.env.version != declared:
            raise Failed(
                f"the instance's version is {short(env.env.version)}, the class's {short(declared)}: "
                "set it on the class (eexp envs reads the class, records the instance)"
            )
        if "version" not in vars(cls) and not any("version" in vars(b) for b in cls.__mro__[1:] if b is not Env):
            raise Failed(f"the class does not set version (Env's default {declared!r}); set it on the class")
        if self.tasks:
            self.where = f"task {self.tasks[0]['id']}"
            env.call("reset", self.tasks[0])
            if env.env.version != declared:
                raise Failed(
                    f"after reset() the instance's version is {short(env.env.version)}, the class's "
                    f"{short(declared)}: set it on the class, never on the instance"
                )
        return "ok", repr(declared)

    def check_tasks(self) -> tuple[str, str]:
        env = self.fresh()
        split = self.split or env.env.splits[0]
        self.split = split
        if split not in env.env.splits:
            raise Failed(f"{split!r} is not one of the splits ({', '.join(env.env.splits)})")
        self.where = f"tasks({split!r})"
        tasks = env.call("tasks", split)
        if not isinstance(tasks, list) or not tasks:
            raise Failed(f"tasks({split!r}) returned {short(tasks)}; it must list every task of the split")
        seen = set()
        for i, task in enumerate(tasks):
            problem = _task_problem(task, split)
            if problem:
                raise Failed(f"tasks({split!r})[{i}]: {problem}")
            if task["id"] in seen:
                raise Failed(f"tasks({split!r}): the id {task['id']!r} is listed twice")
            seen.add(task["id"])
        again = env.call("tasks", split)
        if again != tasks:
            raise Failed(f"tasks({split!r}) called twice on one instance gives different lists")
        self.all_tasks = tasks
        picked = self.pick(env.env, split)
        for task in picked:
            self.where = f"task({split!r}, {task['id']!r})"
            found = env.call("task", split, task["id"])
            if found != next((t for t in tasks if t["id"] == task["id"]), None):
                raise Failed(f"task({split!r}, {task['id']!r}) gives {short(found)}, not the task tasks() lists")
        self.where = "tasks('no-such-split')"
        try:
            env.env.tasks("no-such-split")
        except EnvError:
            pass
        except Exception as e:
            raise Failed(f"tasks('no-such-split') raised {type(e).__name__}: {e}; an unknown split must raise EnvError")
        else:
            raise Failed("tasks('no-such-split') raised nothing; an unknown split must raise EnvError")
        self.tasks = picked
        return "ok", f"{len(tasks)} tasks in {split}, every goal listed, unique ids; checking {len(picked)}"

    def check_deterministic(self) -> tuple[str, str]:
        a, b = self.fresh(), self.fresh()
        self.where = f"tasks({self.split!r})"
        tasks_a, tasks_b = a.call("tasks", self.split), b.call("tasks", self.split)
        if tasks_a != tasks_b:
            i = next((i for i, (x, y) in enumerate(zip(tasks_a, tasks_b)) if x != y), min(len(tasks_a), len(tasks_b)))
            raise Failed(
                f"tasks({self.split!r}) differs between two fresh instances at index {i}: "
                f"{short(tasks_a[i] if i < len(tasks_a) else None)} vs "
                f"{short(tasks_b[i] if i < len(tasks_b) else None)}"
            )
        steps = 0
        for task in self.tasks:
            self.where = f"task {task['id']}: expert()"
            plan_a, plan_b = a.call("expert", task), b.call("expert", task)
            if not isinstance(plan_a, list) or not all(isinstance(x, str) for x in plan_a):
                raise Failed(f"task {task['id']}: expert() returned {short(plan_a)}, not a list of strings")
            if plan_a != plan_b:
                raise Failed(
                    f"task {task['id']}: expert() differs between two fresh instances: {_difference(plan_a, plan_b)}"
                )
            first, second = self.episode(a, task, plan_a), self.episode(b, task, plan_a)
            _compare(first, second, task, plan_a, "differs between two fresh instances")
            again = self.episode(a, task, plan_a)
            _compare(first, again, task, plan_a, "differs between two episodes of one instance")
            self.where = f"task {task['id']}: expert() after an episode"
            plan_again = a.call("expert", task)
            if plan_again != plan_a:
                raise Failed(
                    f"task {task['id']}: expert() differs when called again on one instance: "
                    f"{_difference(plan_a, plan_again)}"
                )
            self.reference[task["id"]] = {"plan": plan_a, **first}
            steps += len(plan_a)
        return "ok", (
            f"tasks, expert actions, observations and admissible lists (in order) are the same in two fresh "
            f"instances and in a second episode ({len(self.tasks)} tasks, {steps} steps)"
        )

    def check_replay(self) -> tuple[str, str]:
        env = self.fresh()
        steps = 0
        for task in self.tasks:
            self.where = f"task {task['id']}: expert()"
            plan = env.call("expert", task)
            self.where = f"task {task['id']} after reset"
            env.call("reset", task)
            closed = env.env.closed_actions
            for i, action in enumerate(plan):
                self.where = f"task {task['id']} step {i} ({action!r})"
                admissible = env.call("admissible")
                if admissible is not None and (
                    not isinstance(admissible, list) or not all(isinstance(x, str) for x in admissible)
                ):
                    raise Failed(
                        f"{self.where}: admissible() returned {short(admissible)}, not a list of strings or None"
                    )
                if closed:
                    if admissible is None:
                        raise Failed(f"{self.where}: admissible() is None but closed_actions is True")
                    canon = env.call("canonicalize", action)
                    if canon not in {env.call("canonicalize", x) for x in admissible}:
                        raise Failed(
                            f"task {task['id']} step {i}: the expert action {action!r} is not in "
                            f"admissible() {short(admissible)}"
                        )
                result = env.call("step", action)
                problem = _step_problem(result)
                if problem:
                    raise Failed(f"{self.where}: {problem}")
                observation, _, done, info = result
                if info.get("valid", True) is False:
                    raise Failed(
                        f"task {task['id']} step {i}: the expert action {action!r} is invalid: {short(observation)}"
                    )
                if done and i < len(plan) - 1:
                    raise Failed(
                        f"task {task['id']}: done after step {i} of {len(plan)}; expert() must end where "
                        f"the episode ends (eexp drops the actions after done)"
                    )
                steps += 1
            self.where = f"task {task['id']} after the expert's {len(plan)} actions"
            score = env.call("score")
            if env.call("success") is not True:
                raise Failed(
                    f"task {task['id']}: success() is not True after the expert's {len(plan)} actions (score {score!r})"
                )
        return "ok", f"{len(self.tasks)} of {len(self.tasks)} tasks succeed in a fresh instance ({steps} steps)"

    def check_snapshot(self) -> tuple[str, str]:
        probe = self.fresh()
        if not probe.env.can_snapshot:
            return "skip", "can_snapshot is False: states are reached by replaying the expert's prefix"
        states = 0
        for task in self.tasks:
            ref = self.reference_of(task)
            plan = ref["plan"]
            env, replay = self.fresh(), self.fresh()
            snaps = []
            self.where = f"task {task['id']} after reset"
            env.call("reset", task)
            for i in range(len(plan) + 1):
                self.where = f"task {task['id']} state {i}: snapshot()"
                snaps.append(env.call("snapshot"))
                if i < len(plan):
                    self.where = f"task {task['id']} step {i} ({plan[i]!r})"
                    observation = env.call("step", plan[i])[0]
                    if normalize_space(observation) != normalize_space(ref["states"][i + 1]["observation"]):
                        raise Failed(
                            f"task {task['id']} step {i}: taking snapshots changed the episode: the "
                            f"observation is {short(observation)}, without snapshots "
                            f"{short(ref['states'][i + 1]['observation'])}"
                        )
            for i, snap in enumerate(snaps):
                here = f"task {task['id']} state {i}"
                self.where = f"{here}: restore()"
                env.call("restore", snap)
                admissible = env.call("admissible")
                if admissible != ref["states"][i]["admissible"]:
                    raise Failed(
                        f"{here}: admissible() after restore() is {short(admissible)}, after replaying the "
                        f"prefix {short(ref['states'][i]['admissible'])}"
                    )
                alternative = _alternative(admissible, plan[i] if i < len(plan) else None)
                self.where = f"{here}: step({alternative!r}) after restore()"
                restored = env.call("step", alternative)
                self.where = f"{here}: replay()"
                replay.call("replay", task, plan[:i])
                self.where = f"{here}: step({alternative!r}) after replay()"
                replayed = replay.call("step", alternative)
                if normalize_space(restored[0]) != normalize_space(replayed[0]) or restored[2] != replayed[2]:
                    raise Failed(
                        f"{here}: step({alternative!r}) after restore() gives {short(restored[0])}, after "
                        f"replaying the prefix {short(replayed[0])}"
                    )
                if i < len(plan):
                    self.where = f"{here}: a second restore()"
                    env.call("restore", snap)
                    observation = env.call("step", plan[i])[0]
                    expected = ref["states"][i + 1]["observation"]
                    if normalize_space(observation) != normalize_space(expected):
                        raise Failed(
                            f"{here}: step({plan[i]!r}) after a second restore() gives "
                            f"{short(observation)}, after replaying the prefix {short(expected)} (a snapshot "
                            "must stay reusable)"
                        )
                states += 1
        return "ok", f"admissible lists and next observations after restore() equal replay ({states} states)"

    def check_canonicalize(self) -> tuple[str, str]:
        env = self.fresh()
        tried = stepped = 0
        for task in self.tasks:
            ref = self.reference_of(task)
            plan = ref["plan"]
            for i, state in enumerate(ref["states"][: len(plan)]):
                others = [a for a in (state["admissible"] or []) if a != plan[i]][:ALTERNATIVES_PER_STATE]
                spaced = "  " + plan[i].replace(" ", "  ") + " "  # the expert's action as a person might type it
                for action in [plan[i], spaced, *others]:
                    here = f"task {task['id']} state {i}"
                    self.where = f"{here}: canonicalize({action!r})"
                    canon = env.call("canonicalize", action)
                    tried += 1
                    if not isinstance(canon, str):
                        raise Failed(f"{here}: canonicalize({action!r}) returned {short(canon)}, not a string")
                    twice = env.call("canonicalize", canon)
                    if twice != canon:
                        raise Failed(f"{here}: canonicalize() is not idempotent: {action!r} -> {canon!r} -> {twice!r}")
                    if canon == action:
                        continue
                    self.where = f"{here}: replay()"
                    env.call("replay", task, plan[:i])
                    self.where = f"{here}: step({action!r})"
                    original = env.call("step", action)
                    env.call("replay", task, plan[:i])
                    self.where = f"{here}: step({canon!r})"
                    canonical = env.call("step", canon)
                    stepped += 1
                    valid_a = (original[3] or {}).get("valid", True)
                    valid_c = (canonical[3] or {}).get("valid", True)
                    if valid_a and not valid_c:
                        raise Failed(
                            f"{here}: step() rejects the canonical form {canon!r} of the valid action "
                            f"{action!r}: {short(canonical[0])}"
                        )
                    if normalize_space(original[0]) != normalize_space(canonical[0]):
                        raise Failed(
                            f"{here}: step({canon!r}) gives {short(canonical[0])}, step({action!r}) "
                            f"{short(original[0])}"
                        )
        return "ok", (
            f"{tried} actions: canonicalize() is idempotent and step() gives the same for an action and "
            f"its canonical form ({stepped} differed in form and were stepped)"
        )

    def check_undisturbed(self) -> tuple[str, str]:
        env = self.fresh()
        states = 0
        for n, task in enumerate(self.tasks):
            ref = self.reference_of(task)
            others = [t for t in self.all_tasks if t["id"] != task["id"]]
            other = others[n % len(others)] if others else None

            def call_expert(i: int) -> None:
                self.where = f"task {task['id']} state {i}: expert()"
                env.call("expert", task)
                if other is not None:
                    self.where = f"task {task['id']} state {i}: expert() of task {other['id']}"
                    env.call("expert", other)

            live = self.episode(env, task, ref["plan"], during=call_expert)
            _compare(ref, live, task, ref["plan"], "differs when expert() is called in every state (without vs with)")
            states += len(live["states"])
        return "ok", f"expert() called in every state (for the task and another) changed nothing ({states} states)"

    def check_score(self) -> tuple[str, str]:
        env = self.fresh()
        for task in self.tasks:
            self.where = f"task {task['id']} after reset"
            env.call("reset", task)
            env.call("score")
            self.where = f"task {task['id']} after step('eexp-check: not an action')"
            env.call("step", "eexp-check: not an action")
            env.call("score")
        self.release()
        if self.bad_score:
            raise Failed(self.bad_score)
        return "ok", f"every score() seen is in [0, 1] ({self.scores} calls)"

    def check_options(self) -> tuple[str, str]:
        env = self.fresh()
        cls = type(env.env)
        declared = getattr(cls, "options", None)
        if declared is None:
            return "skip", "the class declares no options (Env.options): recorded kwargs are as given"
        base = env.env.env_record()["kwargs"]
        if declared:
            self.where = f"constructing with every option at its default ({', '.join(declared)})"
            explicit = Guarded(
                guarded(lambda: self.factory_with({**declared, **env.env.kwargs}), "constructing", self.timeout),
                self.timeout,
                lambda: self.where,
            )
            self.envs.append(explicit)
            at_default = {k: v for k, v in base.items() if k in declared and v == declared[k]}
            if at_default:
                raise Failed(
                    f"options at their defaults are recorded: {short(at_default)} (they would change every "
                    "trajectory id; Env.__init__ drops them)"
                )
            recorded = explicit.env.env_record()["kwargs"]
            if recorded != base:
                raise Failed(
                    f"options given at their defaults are recorded: {short(recorded)} instead of "
                    f"{short(base)} (they would change every trajectory id)"
                )
        self.where = "constructing with an unknown option"
        try:
            extra = self.factory_with({"eexp_check_no_such_option": 1, **env.env.kwargs})
        except EnvError:
            pass
        except Exception as e:
            raise Failed(f"an unknown option raised {type(e).__name__}: {e}; it must raise EnvError")
        else:
            self.envs.append(Guarded(extra, self.timeout, lambda: self.where))
            raise Failed("an unknown option was accepted; it must raise EnvError naming the known ones")
        return "ok", (
            f"declared: {', '.join(declared) or 'none'}; defaults are dropped from the record, an unknown "
            "option is an EnvError"
        )


# --- helpers -----------------------------------------------------------------------------------------------------


def _task_problem(task: Any, split: str) -> str | None:
    if not isinstance(task, dict):
        return f"{short(task)} is not a dict"
    for key in ("id", "goal"):
        if not isinstance(task.get(key), str) or not task[key].strip():
            return f"{key!r} is {short(task.get(key))}, not a non-empty string (every goal is listed up front)"
    if task.get("split") != split:
        return f"'split' is {short(task.get('split'))}, not {split!r}"
    if "category" in task and (not isinstance(task["category"], str) or not task["category"]):
        return f"'category' is {short(task['category'])}, not a non-empty string"
    return None


def _step_problem(result: Any) -> str | None:
    if not isinstance(result, tuple) or len(result) != 4:
        return f"step() returned {short(result)}, not (observation, reward, done, info)"
    observation, reward, done, info = result
    if not isinstance(observation, str):
        return f"the observation is {short(observation)}, not a string"
    if isinstance(reward, bool) or not isinstance(reward, (int, float)):
        return f"the reward is {short(reward)}, not a number"
    if not isinstance(done, bool):
        return f"done is {short(done)}, not a bool"
    if not isinstance(info, dict):
        return f"info is {short(info)}, not a dict"
    return None


def _alternative(admissible: list[str] | None, expert_action: str | None) -> str:
    """An action other than the expert's to step from a restored state: the first admissible one, or a bad one."""
    for action in admissible or []:
        if action != expert_action:
            return action
    return "eexp-check: not an action"


def _compare(first: dict, second: dict, task: dict, plan: list[str], how: str) -> None:
    """Raise Failed at the first state or step where two episodes of one plan differ."""
    for i, (x, y) in enumerate(zip(first["states"], second["states"])):
        at = "after reset" if i == 0 else f"after step {i - 1} ({plan[i - 1]!r})"
        if normalize_space(x["observation"]) != normalize_space(y["observation"]):
            raise Failed(
                f"task {task['id']} {at}: the observation {how}: {short(x['observation'])} vs {short(y['observation'])}"
            )
        if x["admissible"] != y["admissible"]:
            same = sorted(x["admissible"] or []) == sorted(y["admissible"] or [])
            detail = (
                "the same actions in another order" if same else f"{short(x['admissible'])} vs {short(y['admissible'])}"
            )
            raise Failed(f"task {task['id']} {at}: admissible() {how}: {detail}")
        if x["score"] != y["score"]:
            raise Failed(f"task {task['id']} {at}: score() {how}: {x['score']!r} vs {y['score']!r}")
    for i, (x, y) in enumerate(zip(first["steps"], second["steps"])):
        if (x["done"], x["valid"]) != (y["done"], y["valid"]):
            raise Failed(
                f"task {task['id']} step {i} ({plan[i]!r}): done/valid {how}: "
                f"{(x['done'], x['valid'])} vs {(y['done'], y['valid'])}"
            )
    if first["success"] != second["success"]:
        raise Failed(f"task {task['id']}: success() {how}: {first['success']!r} vs {second['success']!r}")


def _difference(a: list, b: list) -> str:
    """Two lists shown whole when short, else from where they part."""
    whole = f"{short(a)} vs {short(b)}"
    if len(whole) <= 120:
        return whole
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    at = lambda xs: short(xs[i]) if i < len(xs) else "(the end)"
    return f"action {i} is {at(a)} vs {at(b)} ({len(a)} vs {len(b)} actions)"


def _children() -> set[int]:
    """Ids of this process's live child processes (Linux /proc; empty elsewhere)."""
    me, found = os.getpid(), set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and fields[0] != "Z" and int(fields[1]) == me:
            found.add(int(name))
    return found


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            text = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        text = ""
    return short(text or f"pid {pid}", 60).strip("'")


def check_env(
    factory: Callable[..., Env],
    split: str | None = None,
    pick=None,
    timeout: float | None = 60.0,
) -> Iterator[Check]:
    """Run every check on fresh instances from `factory(**options)` (the options check passes options of its own;
    the others none)."""
    yield from Checker(factory, split, pick, timeout).run()


def check_installed(
    name: str,
    env_args: dict | None = None,
    split: str | None = None,
    n: int = 3,
    seed: int = 0,
    task_ids: tuple[str, ...] | list[str] = (),
    timeout: float | None = 60.0,
) -> Iterator[Check]:
    """`eexp envs --check NAME`: the checks on the installed environment NAME built with `env_args`, on the tasks
    `eexp expert` would pick with the same split, -n, --seed and --task. An environment that cannot load or be
    built at all, or refuses its options (Env.check_options, as for a run), is an EnvError before any check."""
    cls = env_class(name)
    env_args = dict(env_args or {})
    if split is not None and split not in cls.splits:
        raise EnvError(f"{name} has no split {split!r} (splits: {', '.join(cls.splits)})")
    check_options = getattr(cls, "check_options", None)  # a plugin need not subclass Env
    if check_options is not None:
        guarded(lambda: check_options(env_args), "check_options()", timeout)
    first = guarded(lambda: cls(**env_args), "constructing the environment", timeout)
    try:
        for task_id in task_ids:  # a mistyped id is the user's error, not a failed check
            guarded(lambda: first.task(split or cls.splits[0], task_id), f"task({task_id!r})", timeout)
    finally:
        try:
            guarded(first.close, "close()", timeout)
        except EnvError:
            pass
    yield from check_env(
        lambda **extra: cls(**{**env_args, **extra}),
        split,
        lambda env, split: pick_tasks(env, split, n, seed, list(task_ids)),
        timeout,
    )
