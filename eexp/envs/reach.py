"""Reaching a recorded state again, and checking that it is the state that was recorded.

Early experience executes an alternative action from a state of an expert trajectory, so that state has to be
reached again in a live environment. Two ways:

- snapshot()/restore() where `env.can_snapshot`: reaching step i costs one environment step from step i-1;
- otherwise reset + replay of the action prefix (`env.replay`): reaching step i costs i steps.

Either way the observation reached is compared (whitespace-normalized) with the recorded one; a mismatch raises
`StateMismatch`, never silently wrong data. An exception or a timeout inside the environment raises `ReachError`.
Both are `EnvError`s, so a stage can catch one class and record `str(e)` as the `error` of that record.

`reach()` reaches one state. Visiting the states of one trajectory with as few steps as the environment allows
(walking on along the expert path, restoring the last snapshot) is `eexp.stages.rollout.Walk`, what `rollout` does.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable

from eexp.envs.base import Env
from eexp.errors import EnvError
from eexp.text import normalize_space

EXCERPT_CHARS = 160


class ReachError(EnvError):
    """The environment raised an exception or timed out: a message a stage records as `error`."""


class StepTimeout(ReachError):
    """One environment call took longer than the per-step limit."""


# A call that hangs past the step limit is made again this many times, each time on a fresh instance, before it is the
# record's `error`: one call can be slow once for a reason of the machine's, not the environment's (an ALFWorld reset
# passed 60 s beside six training runs, and that game's expert trajectory was lost; time_limit no longer counts the
# wait for a CPU, but a stopped process or a slow disk still count), and the environments are deterministic, so the
# retry's record is the one an unloaded run writes. An exception is not retried: it is the environment's own.
TIMEOUT_RETRIES = 1


def retry_timeouts(call: Callable[[], Any], restart: Callable[[], None], on_retry: Callable[[], None]) -> Any:
    """call(); where it raises StepTimeout, restart() (a fresh instance), on_retry() (count it) and call again, up
    to TIMEOUT_RETRIES times; the last StepTimeout is raised."""
    for attempt in range(TIMEOUT_RETRIES + 1):
        try:
            return call()
        except StepTimeout:
            if attempt == TIMEOUT_RETRIES:
                raise
            restart()
            on_retry()


class StateMismatch(ReachError):
    """The observation reached differs from the recorded one. str() shows a short excerpt of both."""

    def __init__(self, observed: str, expected: str, step: int | None = None):
        self.observed, self.expected, self.step = observed, expected, step
        where = f" at step {step}" if step is not None else ""
        super().__init__(
            f"state mismatch{where}: reached {excerpt_around(observed, expected)!r}, "
            f"recorded {excerpt_around(expected, observed)!r}"
        )


def excerpt_around(text: str, other: str, limit: int = EXCERPT_CHARS) -> str:
    """A short, whitespace-normalized excerpt of `text` starting a little before where it departs from `other`."""
    a, b = normalize_space(text), normalize_space(other)
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, start - 40)
    piece = a[start : start + limit]
    return ("…" if start else "") + piece + ("…" if start + limit < len(a) else "")


def check_state(observed: str, expected: str | None, step: int | None = None) -> None:
    """Raise StateMismatch unless the two observations are equal after whitespace normalization."""
    if expected is not None and normalize_space(observed) != normalize_space(expected):
        raise StateMismatch(observed, expected, step)


def waited_for_a_cpu() -> float | None:
    """Seconds this thread has spent ready to run but waiting for a CPU (Linux's schedstat `run_delay`), or None
    where that cannot be read."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def time_limit(seconds: float | None, what: str):
    """Raise StepTimeout if the body runs longer than `seconds`. Uses SIGALRM, so it only applies in the main
    thread of a Unix process (worker processes are main threads too); elsewhere it does nothing.

    The time the thread spent waiting for a CPU does not count (where Linux says it: `waited_for_a_cpu`). A limit is
    there to catch a hung environment, and a call that is slow only because the machine is busy is not hung: ALFWorld
    experts niced beside the test tier waited minutes for a CPU through one-second resets, timed out twice and lost
    their trajectories, so the records depended on the machine's load. Time stopped (SIGSTOP) still counts."""
    if not seconds or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return
    started, waited_before = time.monotonic(), waited_for_a_cpu()

    def on_alarm(signum, frame):
        waited = waited_for_a_cpu()
        if waited_before is not None and waited is not None:
            had = time.monotonic() - started - (waited - waited_before)  # the time it ran, or waited on I/O
            if had < seconds:
                signal.setitimer(signal.ITIMER_REAL, max(seconds - had, 0.001))
                return
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


def reach(
    env: Env, task: dict, prefix: list[str], expected_observation: str | None = None, timeout: float | None = None
) -> str:
    """Reset, replay `prefix`, check the observation reached against the recorded one, and return it.

    `timeout` is per step, so the replay as a whole gets `timeout * (len(prefix) + 1)`.
    """
    limit = timeout * (len(prefix) + 1) if timeout else None
    observation = guarded(lambda: env.replay(task, list(prefix)), f"replaying {len(prefix)} actions", limit)
    check_state(observation, expected_observation, len(prefix))
    return observation
