"""Speed of the `miniwob` environment in a real headless Chromium: steps/s, resets, and reaching a state again.

    .venv/bin/python bench/bench_miniwob.py [--reps N]

Baseline, measured in the same run on the same episodes: the miniwob package's own gymnasium environment
(`gymnasium.make("miniwob/<task>-v1")`, screenshots off, the same element actions through its `create_action`),
which returns the utterance and the DOM after every step as eexp's does. Figures:

- steps/s over the oracle's episodes of 4 task types (resets not counted), eexp against the package;
- reset: eexp loads a fresh page for every episode (reused pages are not deterministic, see the environment's
  docstring), the package reuses its page;
- reaching the last expert step again: replay (fresh page + the prefix) is the only way; there is no exact restore
  of a live page (`can_snapshot` is False), so the row compares replay with the reset alone, what any restore would
  have to beat;
- browser start: constructing is free, the first reset starts ChromeDriver and Chromium.
"""

from __future__ import annotations

import argparse
import os
import time

TASKS = ("login-user-1", "click-checkboxes-2", "enter-password-3", "choose-list-4")


def per_call(reps: int, call) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - t) / reps


def figures(reps: int = 3) -> dict:
    from eexp.envs.miniwob_env import MiniWobEnv

    types = ",".join(t.rpartition("-")[0] for t in TASKS)
    env = MiniWobEnv(task_types=types, ood_types="", train_seeds=5)
    try:
        tasks = {x["id"]: x for x in env.tasks("train")}  # reads the goals from the pages once (then cached)
        env.reset(tasks[TASKS[0]])
        env.close()  # timed below: a second start, with the browser's files in the page cache
        t = time.perf_counter()
        env.reset(tasks[TASKS[0]])
        start_s = time.perf_counter() - t
        plans = {i: env.expert(tasks[i]) for i in TASKS}
        steps = stepping = 0.0
        for _ in range(reps):
            for i, plan in plans.items():
                env.reset(tasks[i])
                t = time.perf_counter()
                for action in plan:
                    env.step(action)
                stepping += time.perf_counter() - t
                steps += len(plan)
        reset_ms = 1000 * per_call(reps * len(TASKS), lambda: env.reset(tasks[TASKS[0]]))
        longest = max(plans, key=lambda i: len(plans[i]))
        prefix = plans[longest][:-1]
        replay_ms = 1000 * per_call(reps, lambda: env.replay(tasks[longest], prefix))
        replay_reset_ms = 1000 * per_call(reps, lambda: env.reset(tasks[longest]))
    finally:
        env.close()
    out = {
        "steps_per_s": steps / stepping,
        "reset_ms": reset_ms,
        "replay_ms": replay_ms,
        "replay_reset_ms": replay_reset_ms,
        "prefix": len(prefix),
        "replay_task": longest,
        "browser_start_s": start_s,
        "steps": int(steps),
    }
    out.update(package_figures(plans, reps))
    return out


def package_figures(plans: dict[str, list[str]], reps: int) -> dict:
    """The miniwob package's gymnasium environment on the same episodes (its own browser per task type)."""
    import re

    import gymnasium
    import miniwob
    from miniwob.action import ActionTypes

    from eexp.envs.browser import find_executables

    gymnasium.register_envs(miniwob)
    chromium, chromedriver = find_executables()
    os.environ.update(
        MINIWOB_CHROME_BINARY=chromium, MINIWOB_CHROMEDRIVER=chromedriver, SE_OFFLINE="true", SE_AVOID_STATS="true"
    )
    steps = stepping = resetting = resets = 0.0
    for task_id, plan in plans.items():
        task_type, _, seed = task_id.rpartition("-")
        env = gymnasium.make(f"miniwob/{task_type}-v1")
        try:
            for _ in range(reps):
                t = time.perf_counter()
                env.reset(seed=int(seed), options={"record_screenshots": False})
                resetting += time.perf_counter() - t
                resets += 1
                t = time.perf_counter()
                for action in plan:
                    m = re.match(r"(click|type|select)\[(\d+)\](?:\[(.*)\])?$", action)
                    verb, ref, text = m[1], int(m[2]), m[3]
                    if verb == "click":
                        act = env.unwrapped.create_action(ActionTypes.CLICK_ELEMENT, ref=ref)
                    elif verb == "type":
                        act = env.unwrapped.create_action(ActionTypes.FOCUS_ELEMENT_AND_TYPE_TEXT, ref=ref, text=text)
                    else:  # the package has no select action: a click on the list stands in for it
                        act = env.unwrapped.create_action(ActionTypes.CLICK_ELEMENT, ref=ref)
                    env.step(act)
                stepping += time.perf_counter() - t
                steps += len(plan)
        finally:
            env.close()
    return {"package_steps_per_s": steps / stepping, "package_reset_ms": 1000 * resetting / resets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    f = figures(ap.parse_args().reps)
    print(f"miniwob steps/s, eexp (oracle episodes of {len(TASKS)} types) {f['steps_per_s']:8.1f}")
    print(f"miniwob steps/s, the package's gymnasium env (baseline)  {f['package_steps_per_s']:8.1f}")
    print(f"miniwob reset, eexp (fresh page)                         {f['reset_ms']:8.1f} ms")
    print(f"miniwob reset, the package (page reused)                 {f['package_reset_ms']:8.1f} ms")
    print(
        f"miniwob reach step {f['prefix']} of {f['replay_task']} by replay  {f['replay_ms']:8.1f} ms "
        f"(its reset alone {f['replay_reset_ms']:.1f} ms; no exact restore exists)"
    )
    print(f"miniwob first reset (ChromeDriver + Chromium start, page)  {f['browser_start_s']:8.2f} s")


if __name__ == "__main__":
    main()
