"""Speed of the real environments: steps/s, and the cost of reaching step i by snapshot or by replay.

    .venv/bin/python bench/bench_envs_real.py [--only textworld,scienceworld,bfcl,alfworld]

Baselines printed side by side: for ScienceWorld, the package's own `env.step` (it enumerates every valid action
after each step) against our raw-step `step` and prefix `replay` (target >= 200 steps/s); for reaching step i,
reset + replay of i actions against restore() of a snapshot where the environment has one.
For ALFWorld, an episode as eval plays it (reset, then steps each after the admissible list) with eexp's engine calls
(the PDDL translation, grammar parsing and condition parsing memoized, the grammar's contexts copied without
deepcopy) against TextWorld's own code in the same process: the same observations and lists are asserted, and the
CPU time of each is printed. It plays $ALFWORLD_DATA's valid_seen games if set, else games `eexp alfworld-games`
writes to a temporary folder (about 10 CPU-s).
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


def textworld_figures(reps: int = 20) -> dict:
    """Steps/s with admissible commands, and ms to reach the last expert step by replay and by restore(); also
    snapshot() and one TextWorld copy() of the running game (what restore() did twice before it used jericho's
    get_state/set_state)."""
    env = make_env("textworld", games=1)
    try:
        task = env.tasks("train")[3]
        actions = env.expert(task)
        n = reps * len(actions)
        seconds = reps * per_call(reps, lambda: episode(env, task, actions))
        i = len(actions) - 1
        replay = per_call(reps, lambda: env.replay(task, actions[:i]))
        env.replay(task, actions[:i])
        snapshot = per_call(reps, env.snapshot)
        snap = env.snapshot()
        restore = per_call(reps, lambda: env.restore(snap))
        engine = getattr(env, "_env", None)
        copy = per_call(max(1, reps // 4), engine.copy) if hasattr(engine, "copy") else float("nan")
    finally:
        env.close()
    return {
        "steps": n,
        "steps_per_s": n / seconds,
        "i": i,
        "replay_ms": replay * 1000,
        "restore_ms": restore * 1000,
        "snapshot_ms": snapshot * 1000,
        "copy_ms": copy * 1000,
    }


def bench_textworld() -> None:
    f = textworld_figures()
    print(f"textworld  step (with admissible commands)       {f['steps_per_s']:8.1f} steps/s  ({f['steps']} steps)")
    print(
        f"textworld  reach step {f['i']}: replay {f['replay_ms']:7.1f} ms   restore(snapshot) "
        f"{f['restore_ms']:7.1f} ms   (snapshot() {f['snapshot_ms']:.1f} ms; TextWorld's own copy() "
        f"{f['copy_ms']:.1f} ms)"
    )


def scienceworld_figures(reps: int = 5) -> dict:
    """Steps/s of the package's env.step (baseline), of our step, step + admissible() and prefix replay; reset s."""
    from scienceworld import ScienceWorldEnv as Simulator

    env = make_env("scienceworld", variations=1)
    try:
        task = next(t for t in env.tasks("train") if t["category"] == "boil")
        gold = env.expert(task)
        ours = len(gold) / per_call(reps, lambda: episode(env, task, gold))
        replay_rate = len(gold) / per_call(reps, lambda: env.replay(task, gold))
        reset_s = per_call(reps, lambda: env.reset(task))
        t = time.perf_counter()
        env.reset(task)
        k = 0
        for a in gold[:20]:
            env.step(a)
            env.admissible()
            k += 1
        with_adm = k / (time.perf_counter() - t)
        i = len(gold) - 1
        t = time.perf_counter()
        env.replay(task, gold[:i])
        reach_ms = (time.perf_counter() - t) * 1000
    finally:
        env.close()
    # baseline: the package's own step
    sim = Simulator("", envStepLimit=1000)
    try:
        sim.load("boil", int(task["id"].rsplit("-", 1)[1]), "easy")
        sim.reset()
        t = time.perf_counter()
        for a in gold[:20]:
            sim.step(a)
        package = 20 / (time.perf_counter() - t)
    finally:
        sim.close()
    return {
        "package_steps_per_s": package,
        "steps_per_s": ours,
        "with_admissible_steps_per_s": with_adm,
        "replay_steps_per_s": replay_rate,
        "reset_s": reset_s,
        "gold_steps": len(gold),
        "i": i,
        "reach_ms": reach_ms,
    }


def bench_scienceworld() -> None:
    f = scienceworld_figures()
    print(f"scienceworld package env.step (baseline)          {f['package_steps_per_s']:8.1f} steps/s")
    print(f"scienceworld our step (score, no valid list)      {f['steps_per_s']:8.1f} steps/s")
    print(f"scienceworld our step + admissible() each step    {f['with_admissible_steps_per_s']:8.1f} steps/s")
    print(f"scienceworld prefix replay (raw server step)      {f['replay_steps_per_s']:8.1f} steps/s   (target >= 200)")
    print(f"scienceworld reset                                {f['reset_s'] * 1000:8.1f} ms")
    print(f"scienceworld reach step {f['i']}: replay {f['reach_ms']:7.1f} ms (no snapshot API)")


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


def alfworld_figures(games: int = 6, steps: int = 30) -> dict:
    """CPU seconds of `games` episodes of `steps` random admissible actions each (seeded by the task), with eexp's
    engine calls and with TextWorld's originals (eexp.envs.alfworld_env._engine_calls nested, so it patches
    nothing), first resets included; the plays must see the same observations and admissible lists. eexp's play
    twice, from an empty $EEXP_CACHE (each game's PDDL translated, its SAS text kept) and again (read back, as every
    later episode of those games: ours_warm_s)."""
    import os
    import random
    import subprocess
    import sys
    import tempfile

    from eexp.envs import alfworld_env
    from eexp.envs.alfworld_env import _engine_calls

    def play() -> tuple[list, float]:
        alfworld_env._translate_once.cache_clear()  # each play as a new process starts
        env, seen = make_env("alfworld"), []
        t = time.process_time()
        try:
            for task in env.tasks("test")[:games]:
                rng = random.Random(task["id"])
                seen += [env.reset(task)]
                for _ in range(steps):
                    seen += [env.admissible()]
                    seen += [env.step(rng.choice(seen[-1]))[0]]
        finally:
            env.close()
        return seen, time.process_time() - t

    with tempfile.TemporaryDirectory() as tmp:
        if not os.environ.get("ALFWORLD_DATA"):
            root = f"{tmp}/games"
            subprocess.run(
                [sys.executable, "-m", "eexp", "alfworld-games", root, "--train", "1", "--valid-seen", str(games)]
                + ["--valid-unseen", "1", "--seed", "0", "-q"],
                check=True,
            )
            os.environ["ALFWORLD_DATA"] = root
        cache = os.environ.get("EEXP_CACHE")
        os.environ["EEXP_CACHE"] = f"{tmp}/cache"
        try:
            ours, ours_s = play()
            warm, ours_warm_s = play()
            _engine_calls.depth = 1  # as if nested: TextWorld's own functions stay in place
            theirs, theirs_s = play()
        finally:
            _engine_calls.depth = 0
            if cache is None:
                os.environ.pop("EEXP_CACHE")
            else:
                os.environ["EEXP_CACHE"] = cache
    assert ours == theirs == warm, "eexp's engine calls changed what the engine gives"
    return {
        "episodes": games,
        "steps": games * steps,
        "ours_s": ours_s,
        "ours_warm_s": ours_warm_s,
        "textworld_s": theirs_s,
    }


def bench_alfworld() -> None:
    f = alfworld_figures()
    print(
        f"alfworld   {f['episodes']} episodes, {f['steps']} steps with admissible lists: TextWorld's own code "
        f"{f['textworld_s']:6.1f} CPU-s, eexp's engine calls {f['ours_s']:6.1f} CPU-s "
        f"({f['textworld_s'] / f['ours_s']:.1f}x), {f['ours_warm_s']:6.1f} CPU-s with the games' translations kept "
        f"({f['textworld_s'] / f['ours_warm_s']:.1f}x; the same observations and lists)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="textworld,scienceworld,bfcl,alfworld")
    names = parser.parse_args().only.split(",")
    benches = (
        ("textworld", bench_textworld),
        ("scienceworld", bench_scienceworld),
        ("bfcl", bench_bfcl),
        ("alfworld", bench_alfworld),
    )
    for name, fn in benches:
        if name in names:
            fn()


if __name__ == "__main__":
    main()
