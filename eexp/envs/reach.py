"""Reaching a recorded state again, and checking that it is the state that was recorded.

Early experience executes an alternative action from a state of an expert trajectory, so that state has to be
reached again in a live environment. Two ways:

- snapshot()/restore() where `env.can_snapshot`: reaching step i costs one environment step from step i-1;
- otherwise reset + replay of the action prefix (`env.replay`): reaching step i costs i steps.

Either way the observation reached is compared (whitespace-normalized) with the recorded one; a mismatch raises
`StateMismatch`, never silently wrong data. An exception or a timeout inside the environment raises `ReachError`.
Both are `EnvError`s, so a stage can catch one class and record `str(e)` as the `error` of that record.

Use `reach()` for a single state, and `Walker` to visit the states of one trajectory in order (what `rollout`
does):

    walker = Walker(env, task, expert_actions, expected=[s["observation"] for s in steps])
    for i in range(len(expert_actions)):
        observation = walker.reach(i)             # the env is now in state i (checked)
        for alt in alternatives[i]:
            walker.reach(i)                       # back to state i: a restore, or a replay without snapshots
            next_obs, reward, done, info = walker.step(alt)
        walker.reach(i)
        expert_next = walker.step(expert_actions[i])[0]
    walker.env_steps                              # environment steps spent, for --stats
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable

from eexp.envs.base import Env, EnvError
from eexp.prompts import normalize_space

EXCERPT_CHARS = 160


class ReachError(EnvError):
    """The environment raised an exception or timed out: a message a stage records as `error`."""


class StepTimeout(ReachError):
    """One environment call took longer than the per-step limit."""


class StateMismatch(ReachError):
    """The observation reached differs from the recorded one. str() shows a short excerpt of both."""

    def __init__(self, observed: str, expected: str, step: int | None = None):
        self.observed, self.expected, self.step = observed, expected, step
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"state mismatch{where}: reached {excerpt_around(observed, expected)!r}, "
                         f"recorded {excerpt_around(expected, observed)!r}")


def excerpt_around(text: str, other: str, limit: int = EXCERPT_CHARS) -> str:
    """A short, whitespace-normalized excerpt of `text` starting a little before where it departs from `other`."""
    a, b = normalize_space(text), normalize_space(other)
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, start - 40)
    piece = a[start:start + limit]
    return ("…" if start else "") + piece + ("…" if start + limit < len(a) else "")


def check_state(observed: str, expected: str | None, step: int | None = None) -> None:
    """Raise StateMismatch unless the two observations are equal after whitespace normalization."""
    if expected is not None and normalize_space(observed) != normalize_space(expected):
        raise StateMismatch(observed, expected, step)


@contextmanager
def time_limit(seconds: float | None, what: str):
    """Raise StepTimeout if the body runs longer than `seconds`. Uses SIGALRM, so it only applies in the main
    thread of a Unix process (worker processes are main threads too); elsewhere it does nothing."""
    if not seconds or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise StepTimeout(f"environment timed out after {seconds:g} s ({what})")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def guarded(call: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
    """Run one environment call; an exception inside the environment becomes a ReachError naming `what`."""
    try:
        with time_limit(timeout, what):
            return call()
    except EnvError:
        raise
    except Exception as e:  # the environment's own bug or crash: recorded, not fatal to the stage
        raise ReachError(f"environment error ({what}): {type(e).__name__}: {e}") from e


def reach(env: Env, task: dict, prefix: list[str], expected_observation: str | None = None,
          timeout: float | None = None) -> str:
    """Reset, replay `prefix`, check the observation reached against the recorded one, and return it.

    `timeout` is per step, so the replay as a whole gets `timeout * (len(prefix) + 1)`.
    """
    limit = timeout * (len(prefix) + 1) if timeout else None
    observation = guarded(lambda: env.replay(task, list(prefix)), f"replaying {len(prefix)} actions", limit)
    check_state(observation, expected_observation, len(prefix))
    return observation


class Walker:
    """Visits the states of one trajectory, reaching each with as few environment steps as it can.

    `actions` are the expert actions, `expected[i]` the recorded observation before action i (optional; when
    given, every state reached is checked). With snapshots, state i is kept after it is first reached, so going
    back to it is a restore and going on to i+1 costs one step. Without, reaching i after anything else was done
    is a reset + replay of i actions (only a walk straight on from an untouched state i costs one step).
    `env_steps` counts every step taken, replays included (a reset counts as none).
    """

    def __init__(self, env: Env, task: dict, actions: list[str], expected: list[str] | None = None,
                 timeout: float | None = None):
        self.env, self.task, self.actions = env, task, list(actions)
        self.expected = list(expected) if expected is not None else None
        self.timeout = timeout
        self.env_steps = 0
        self.snapshots: dict[int, tuple[Any, str]] = {}   # state index -> (snapshot, observation)
        self._at: int | None = None                        # the state the env is in, while untouched
        self._observation = ""

    def _expected(self, i: int) -> str | None:
        if self.expected is None or i >= len(self.expected):
            return None
        return self.expected[i]

    def _arrive(self, i: int, observation: str) -> str:
        check_state(observation, self._expected(i), i)
        self._at, self._observation = i, observation
        if self.env.can_snapshot and i not in self.snapshots:
            self.snapshots[i] = (guarded(self.env.snapshot, f"snapshot at step {i}", self.timeout), observation)
        return observation

    def reach(self, i: int) -> str:
        """Put the environment in state i (after actions[:i]) and return its observation."""
        if not 0 <= i <= len(self.actions):
            raise IndexError(f"state {i} is not on this trajectory (0 to {len(self.actions)})")
        if self._at == i:
            return self._observation
        start = self._start_for(i)
        if start is None:   # no usable state to walk on from: reset + replay
            observation = reach(self.env, self.task, self.actions[:i], self._expected(i), self.timeout)
            self.env_steps += i
            return self._arrive(i, observation)
        for j in range(start, i):
            observation = self._raw_step(self.actions[j], f"expert action {j} {self.actions[j]!r}")[0]
            self._arrive(j + 1, observation)
        return self._observation

    def _start_for(self, i: int) -> int | None:
        """The state to walk on from towards i, after restoring it if needed; None to replay from the start."""
        if self._at is not None and self._at <= i and (self._at == i - 1 or not self.snapshots):
            return self._at
        best = max((k for k in self.snapshots if k <= i), default=None)
        if best is None:
            return None
        snap, observation = self.snapshots[best]
        guarded(lambda: self.env.restore(snap), f"restoring step {best}", self.timeout)
        self._at, self._observation = best, observation
        return best

    def _raw_step(self, action: str, what: str) -> tuple[str, float, bool, dict]:
        self._at = None   # the env leaves the recorded path until _arrive says otherwise
        result = guarded(lambda: self.env.step(action), what, self.timeout)
        self.env_steps += 1
        return result

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        """Execute one action from wherever the environment is (after reach(i)); counted in env_steps."""
        return self._raw_step(action, f"action {action!r}")
