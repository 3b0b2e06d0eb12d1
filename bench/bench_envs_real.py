"""Speed of the real environments: steps/s, and the cost of reaching step i by snapshot or by replay.

    .venv/bin/python bench/bench_envs_real.py [--only textworld,scienceworld,bfcl]

Baselines printed side by side: for ScienceWorld, the package's own `env.step` (it enumerates every valid action
after each step) against our raw-step `step` and prefix `replay` (target >= 200 steps/s); for reaching step i,
reset + replay of i actions against restore() of a snapshot where the environment has one.
Uses $EEXP_CACHE (TextWorld generates 4 games there on first use).
"""

from __future__ import annotations

import argparse
import time

from eexp.envs import make_env


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.1f} steps/s"


def per_call(reps: int, call) -> float:
    """Mean seconds of one call, over reps calls."""
    t = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - t) / reps


def episode(env, task, actions) -> None:
    env.reset(task)
    for a in actions:
        env.step(a)


def bench_textworld() -> None:
    env = make_env("textworld", games=1)
    task = env.tasks("train")[3]
    actions = env.expert(task)
    reps = 20
    n = reps * len(actions)
    seconds = reps * per_call(reps, lambda: episode(env, task, actions))
    print(f"textworld  step (with admissible commands)       {rate(n, seconds)}  ({n} steps)")
    i = len(actions) - 1
    replay = per_call(reps, lambda: env.replay(task, actions[:i]))
    env.replay(task, actions[:i])
    snap = env.snapshot()
    restore = per_call(reps, lambda: env.restore(snap))
    print(f"textworld  reach step {i}: replay {replay * 1000:7.1f} ms   restore(snapshot) {restore * 1000:7.1f} ms")
    env.close()


def bench_scienceworld() -> None:
    from scienceworld import ScienceWorldEnv as Simulator
    env = make_env("scienceworld", variations=1)
    task = next(t for t in env.tasks("train") if t["category"] == "boil")
    gold = env.expert(task)
    reps = 5
    ours = len(gold) / per_call(reps, lambda: episode(env, task, gold))
    replay_rate = len(gold) / per_call(reps, lambda: env.replay(task, gold))
    t = time.perf_counter()
    env.reset(task)
    k = 0
    for a in gold[:20]:
        env.step(a)
        env.admissible()
        k += 1
    with_adm = k / (time.perf_counter() - t)
    # baseline: the package's own step
    sim = Simulator("", envStepLimit=1000)
    sim.load("boil", int(task["id"].rsplit("-", 1)[1]), "easy")
    sim.reset()
    t = time.perf_counter()
    for a in gold[:20]:
        sim.step(a)
    package = 20 / (time.perf_counter() - t)
    sim.close()
    print(f"scienceworld package env.step (baseline)          {package:8.1f} steps/s")
    print(f"scienceworld our step (score, no valid list)      {ours:8.1f} steps/s")
    print(f"scienceworld our step + admissible() each step    {with_adm:8.1f} steps/s")
    print(f"scienceworld prefix replay (raw server step)      {replay_rate:8.1f} steps/s   (target >= 200)")
    i = len(gold) - 1
    t = time.perf_counter()
    env.replay(task, gold[:i])
    print(f"scienceworld reach step {i}: replay {(time.perf_counter() - t) * 1000:7.1f} ms (no snapshot API)")
    env.close()


def bench_bfcl() -> None:
    env = make_env("bfcl")
    tasks = env.tasks("train")
    t = time.perf_counter()
    n = 0
    for task in tasks:
        env.reset(task)
        for a in env.expert(task):
            env.step(a)
            n += 1
    print(f"bfcl       step (expert, all train tasks, checker at the end) {rate(n, time.perf_counter() - t)}")
    task = max(tasks, key=lambda tk: len(env.expert(tk)))
    actions = env.expert(task)
    i = len(actions) - 1
    reps = 50
    replay = per_call(reps, lambda: env.replay(task, actions[:i]))
    snap = env.snapshot()
    restore = per_call(reps, lambda: env.restore(snap))
    print(f"bfcl       reach step {i}: replay {replay * 1000:7.2f} ms   restore(snapshot) {restore * 1000:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="textworld,scienceworld,bfcl")
    names = parser.parse_args().only.split(",")
    for name, fn in (("textworld", bench_textworld), ("scienceworld", bench_scienceworld), ("bfcl", bench_bfcl)):
        if name in names:
            fn()


if __name__ == "__main__":
    main()
