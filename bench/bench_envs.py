"""Speed of the built-in environments, and the cost of reaching step i of a trajectory by snapshot vs by replay.

    .venv/bin/python bench/bench_envs.py [--episodes 300]

Prints, per environment: steps/s of plain step() calls (random admissible actions after reset), steps/s when
admissible() is also listed at every step (what expert, branch and eval do), and reset/s; the target is 5,000
steps/s. Then, for each step i of the longest expert trajectories, the time to reach state i again after a detour
(an alternative was executed from i, as rollout does): restore a snapshot vs reset + replay of i actions.
"""

from __future__ import annotations

import argparse
import collections
import random
import time

from eexp.envs import make_env
from eexp.envs.base import pick_tasks
from eexp.stages.rollout import EnvPool, Walk

TARGET = 5000


def steps_per_second(name: str, episodes: int, with_admissible: bool) -> tuple[float, float]:
    env = make_env(name)
    tasks = pick_tasks(env, "train", episodes, seed=0)
    rng = random.Random(0)
    steps, resets, spent_reset, spent = 0, 0, 0.0, 0.0
    for task in tasks:
        t0 = time.perf_counter()
        env.reset(task)
        spent_reset += time.perf_counter() - t0
        resets += 1
        # half expert actions, half random admissible ones, so every page kind is visited
        actions = env.expert(task)
        t0 = time.perf_counter()
        for i in range(env.max_steps):
            admissible = env.admissible()
            if with_admissible or i % 2 or i >= len(actions):
                action = rng.choice(admissible) if admissible else "ls()"
            else:
                action = actions[i]
            _, _, done, _ = env.step(action)
            steps += 1
            if done:
                break
        spent += time.perf_counter() - t0
    if not with_admissible:  # take admissible() out: time the same number of bare steps on expert paths
        spent, steps = 0.0, 0
        for task in tasks:
            actions = env.expert(task)
            env.reset(task)
            t0 = time.perf_counter()
            for action in actions:
                env.step(action)
            spent += time.perf_counter() - t0
            steps += len(actions)
    return steps / spent, resets / spent_reset


def reach_costs(name: str, episodes: int) -> dict[int, tuple[float, float, int, int]]:
    """i -> (ms by snapshot, ms by replay, env steps by snapshot, env steps by replay), summed over alternatives."""
    out: dict[int, list] = {}
    snapshot_env, replay_env = make_env(name), make_env(name)
    replay_env.can_snapshot = False  # the same environment, reached the way a non-snapshot one is
    for task in pick_tasks(snapshot_env, "train", episodes, seed=1):
        actions = snapshot_env.expert(task)
        walks = {
            label: Walk(EnvPool(lambda name, e=env, **kw: e), env.env_record(), task, collections.Counter())
            for label, env in (("snap", snapshot_env), ("replay", replay_env))
        }
        for i in range(len(actions)):
            row = out.setdefault(i, [0.0, 0.0, 0, 0, 0])
            prefix = tuple(actions[:i])
            for k, (label, walk) in enumerate(walks.items()):
                walk.reach(prefix, None, i)
                alternative = (walk.env.admissible() or [actions[i]])[0]
                walk.execute(prefix, alternative, None, i)  # a detour, as rollout does for each alternative
                before = walk.counts["env_steps"]
                t0 = time.perf_counter()
                walk.reach(prefix, None, i)
                row[k] += time.perf_counter() - t0
                row[2 + k] += walk.counts["env_steps"] - before
            row[4] += 1
    return {i: (1000 * a / n, 1000 * b / n, c / n, d / n) for i, (a, b, c, d, n) in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=300)
    args = parser.parse_args()
    print(f"{'env':<7} {'steps/s (step only)':>20} {'steps/s (+admissible)':>22} {'resets/s':>10} {'target':>8}")
    for name in ("shop", "tools"):
        bare, resets = steps_per_second(name, args.episodes, with_admissible=False)
        listed, _ = steps_per_second(name, args.episodes, with_admissible=True)
        print(f"{name:<7} {bare:>20,.0f} {listed:>22,.0f} {resets:>10,.0f} {TARGET:>8,}")
    print()
    print("reaching state i again after an alternative was executed from it (mean per alternative)")
    print(f"{'env':<7} {'i':>3} {'snapshot ms':>12} {'replay ms':>10} {'snap steps':>11} {'replay steps':>13}")
    for name in ("shop", "tools"):
        for i, (snap_ms, replay_ms, snap_steps, replay_steps) in sorted(reach_costs(name, args.episodes).items()):
            print(f"{name:<7} {i:>3} {snap_ms:>12.4f} {replay_ms:>10.4f} {snap_steps:>11.1f} {replay_steps:>13.1f}")


if __name__ == "__main__":
    main()
