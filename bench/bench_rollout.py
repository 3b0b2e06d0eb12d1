"""What branch and rollout cost: environment steps, worker scaling, and policy proposals per state.

    .venv/bin/python bench/bench_rollout.py [--k 4] [--skip-gguf]

1. Environment steps spent by rollout on one T-step trajectory with K alternatives per state, for T = 10, 30, 100:
   with snapshots (target <= (K+1)T + T), without snapshots (shortest replays), and naive replay (reset + replay of
   the prefix before every execution, ~K T^2/2 and more), each counted by the environment itself. The trajectories
   are of a small simulated line-walking environment defined here (the built-in envs' expert paths are < 15 steps).
2. `rollout -j 2` vs `-j 1` throughput: on ScienceWorld when it is installed and registered, else on a simulated
   environment whose step sleeps (standing in for a slow JVM-backed step); which one is printed.
3. `branch --propose policy` at K=8 vs K=1: seconds per state with a tiny GGUF model (made here with
   `eexp init-model` + `eexp export`) on shop states rendered with a long history (~300 prompt tokens).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

from eexp.envs.base import Env, env_class, make_env
from eexp.envs.reach import reach
from eexp.errors import EnvError
from eexp.stages.branch import Brancher
from eexp.stages.rollout import Rollout


class LineEnv(Env):
    """A walker on a line; counts its steps. `SLOW` seconds of sleep per step stand in for a slow simulator."""

    name = "benchline"
    version = "1"
    SLOW = 0.0
    steps_taken = 0

    def tasks(self, split):
        return [{"id": f"{split}-{n}", "split": split, "goal": f"walk {n} steps"} for n in (10, 30, 100)]

    def reset(self, task):
        self.pos, self.moves = 0, 0
        return f"at {self.pos} after {self.moves} moves"

    def step(self, action):
        LineEnv.steps_taken += 1
        if self.SLOW:
            time.sleep(self.SLOW)
        self.pos += {"left": -1, "right": 1, "stay": 0, "jump": 2, "back": -2, "hop": 3}.get(action, 0)
        self.moves += 1
        return f"at {self.pos} after {self.moves} moves", 0.0, False, {"valid": True}

    def admissible(self):
        return ["left", "right", "stay", "jump", "back", "hop"]

    def expert(self, task):
        return ["right"] * int(task["goal"].split()[1])

    def success(self):
        return False


class SnapLineEnv(LineEnv):
    name = "benchline-snap"
    can_snapshot = True

    def snapshot(self):
        return (self.pos, self.moves)

    def restore(self, snap):
        self.pos, self.moves = snap


class SlowLineEnv(LineEnv):
    name = "benchline-slow"
    SLOW = 0.01


ENVS = {cls.name: cls for cls in (LineEnv, SnapLineEnv, SlowLineEnv)}


def bench_env(name, **kwargs):
    """The env factory handed to rollout (module level, so -j workers can import it)."""
    return ENVS[name](**kwargs) if name in ENVS else make_env(name, **kwargs)


def trajectory(cls, task, tid):
    env = cls()
    observation = env.reset(task)
    steps = []
    for action in env.expert(task):
        steps.append({"observation": observation, "action": action, "admissible": env.admissible()})
        observation = env.step(action)[0]
    return {
        "id": tid,
        "env": env.env_record(),
        "task": task,
        "steps": steps,
        "final_observation": observation,
        "success": False,
    }


def rollout_counts(records, jobs=1):
    counts = collections.Counter()
    runner = Rollout(jobs=jobs, env_factory=bench_env, count=lambda n, c=1: counts.update({n: c}))
    try:
        outs = [o for r in records for o in runner(r)] + list(runner.finish())
    finally:
        runner.close()
    return outs, counts


def naive_steps(records, cls):
    """Reset + replay the prefix before every execution (the original ScienceWorld script), counted by the env."""
    env = cls()
    before = LineEnv.steps_taken
    for r in records:
        for action in [a["action"] for a in r["alternatives"]] + [r["expert"]["action"]]:
            reach(env, r["task"], r["prefix"], r["state"]["observation"])
            env.step(action)
    return LineEnv.steps_taken - before


def section_steps(k):
    print(
        f"1. Environment steps of rollout, one T-step trajectory, K={k} alternatives per state "
        f"(simulated line env, counted by the env)"
    )
    print(
        f"{'T':>4} {'snapshot':>9} {'target (K+1)T+T':>16} {'no snapshot':>12} {'naive replay':>13} "
        f"{'K*T^2/2':>8} {'naive/snapshot':>15}"
    )
    for task in LineEnv().tasks("train"):
        t = len(LineEnv().expert(task))
        row = {}
        for cls in (SnapLineEnv, LineEnv):
            records = list(Brancher("admissible", k, env_factory=bench_env)(trajectory(cls, task, f"t{t}")))
            before = LineEnv.steps_taken
            _, counts = rollout_counts(records)
            assert counts["env_steps"] == LineEnv.steps_taken - before  # the stage counts what the env did
            assert counts["errors"] == 0
            row[cls.can_snapshot] = counts["env_steps"]
        naive = naive_steps(records, LineEnv)
        print(
            f"{t:>4} {row[True]:>9} {(k + 1) * t + t:>16} {row[False]:>12} {naive:>13} {k * t * t // 2:>8} "
            f"{naive / row[True]:>14.1f}x"
        )
    print()


def scienceworld_available():
    try:
        env_class("scienceworld")
        return True
    except EnvError:
        return False


def cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have exited (rollout workers, a JVM started by this
    process is counted when it ends)."""
    import resource

    return sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )


def scienceworld_start_s() -> float:
    """Seconds to start a ScienceWorld environment and reset it on one task (a worker pays this once)."""
    t0 = time.perf_counter()
    env = make_env("scienceworld", variations=1)
    env.reset(env.tasks("dev")[0])
    env.close()
    return time.perf_counter() - t0


def jobs_speedup(records) -> dict:
    """Seconds of rollout over `records` at -j 1 and -j 2, states/s, env steps/s, and whether the outcomes agree."""
    results = {}
    for jobs in (1, 2):
        t0, c0 = time.perf_counter(), cpu_seconds()
        outs, counts = rollout_counts(records, jobs)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        results[jobs] = {
            "seconds": seconds,
            "states_per_s": len(records) / seconds,
            "env_steps_per_s": counts["env_steps"] / seconds,
            "errors": counts["errors"],
            "outs": outs,
            "cpu_percent": 100 * cpu / seconds,
        }
    strip = lambda outs: [{**o, "meta": {}} for o in outs]  # noqa: E731
    same = strip(results[1].pop("outs")) == strip(results[2].pop("outs"))
    return {
        "states": len(records),
        "j1": results[1],
        "j2": results[2],
        "identical": same,
        "speedup": results[1]["seconds"] / results[2]["seconds"],
    }


def worker_start_s(repeat: int = 2) -> float:
    """Seconds that `rollout -j 2` spends on starting its worker processes (spawn, imports; no environment start):
    -j 2 minus -j 1 over one short trajectory of the line environment, whose steps cost nothing; the best of
    `repeat`."""
    task = LineEnv().tasks("train")[0]
    records = list(Brancher("admissible", 1, env_factory=bench_env)(trajectory(SnapLineEnv, task, "w")))
    best = {}
    for _ in range(repeat):
        for jobs in (1, 2):
            t0 = time.perf_counter()
            rollout_counts(records, jobs)
            best[jobs] = min(best.get(jobs, float("inf")), time.perf_counter() - t0)
    return max(best[2] - best[1], 0.0)


def jobs_needed(j1_s: float, j2_s: float, states: int, start_s: float, worker_s: float, target: float = 1.7) -> dict:
    """How many states `rollout -j 2` needs to run `target` times as fast as -j 1, from one measured size: Amdahl's
    law with a start-up paid once per worker.

    -j 1 starts one environment (S = start_s: JVM + first reset), then spends t = (T1 - S) / n per state. -j 2 starts
    its workers (w = worker_s) and each starts its own environment (S), both at once, then the states are shared:
      ideal, a quiet 2-core machine that runs two states at a time: T2(n) = w + S + n t / 2, so the speed-up
        (S + n t) / (w + S + n t / 2) tends to 2 and reaches `target` from n = (target (w + S) - S) / (t (1 - target
        / 2)) states;
      as measured: this run's cost per state at -j 2, t2 = (T2 - w - S) / n, bounds the speed-up at t / t2, and
        `target` is reached from n = (target (w + S) - S) / (t - target t2) states where t / t2 > target, at no size
        where it is not (the machine gave -j 2 no second core's worth of time).
    Whole trajectories go to a worker, so with few trajectories of unequal length the split is uneven, which the
    ideal figure does not count."""
    t = (j1_s - start_s) / states
    t2 = (j2_s - worker_s - start_s) / states
    fixed = target * (worker_s + start_s) - start_s
    ideal = fixed / (t * (1 - target / 2)) if t > 0 else float("inf")
    measured = fixed / (t - target * t2) if t2 > 0 and t > target * t2 else None
    return {
        "per_state_j1_s": t,
        "per_state_j2_s": t2,
        "limit": t / t2 if t2 > 0 else float("inf"),
        "states_ideal": max(ideal, 0.0),
        "states_measured": None if measured is None else max(measured, 0.0),
    }


def time_jobs(records, what, k):
    print(f"   {what}; K={k}; {len(records)} states; {os.cpu_count()} CPUs shared with other work")
    r = jobs_speedup(records)
    for jobs in (1, 2):
        x = r[f"j{jobs}"]
        print(
            f"   -j {jobs}: {x['seconds']:6.2f} s  {x['states_per_s']:7.2f} states/s  "
            f"{x['env_steps_per_s']:8.1f} env steps/s  ({x['errors']} errors)"
        )
    print(
        f"   speed-up -j 2 / -j 1: {r['speedup']:.2f}x (target >= 1.7x); "
        f"outcomes {'identical' if r['identical'] else 'DIFFERENT'}"
    )


def slow_records(k, trajectories=6):
    task = {"id": "train-12", "split": "train", "goal": "walk 12 steps"}
    return [
        r
        for i in range(trajectories)
        for r in Brancher("admissible", k, env_factory=bench_env)(trajectory(SlowLineEnv, task, f"slow{i}"))
    ]


def scienceworld_records(k, sw_trajectories, sw_steps):
    """Branch records of the first sw_steps steps of sw_trajectories ScienceWorld dev expert trajectories."""
    with tempfile.TemporaryDirectory() as d:
        expert = os.path.join(d, "expert.jsonl")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "eexp",
                "expert",
                "--env",
                "scienceworld",
                "--split",
                "dev",
                "-n",
                str(sw_trajectories),
                "-q",
                "-o",
                expert,
            ],
            check=True,
        )
        from eexp.io import read_records

        return [r for t in read_records([expert]) for r in Brancher("admissible", k, steps=set(range(sw_steps)))(t)]


def section_jobs(k, sw_trajectories, sw_steps=6):
    print("2. rollout -j 2 vs -j 1 throughput")
    time_jobs(
        slow_records(k),
        f"simulated env whose step sleeps {SlowLineEnv.SLOW * 1000:.0f} ms (no CPU), "
        f"no snapshots, 6 trajectories of 12 steps",
        k,
    )
    if not scienceworld_available():
        print("   ScienceWorld is not registered here: no ScienceWorld figure")
    elif sw_trajectories:
        time_jobs(
            scienceworld_records(k, sw_trajectories, sw_steps),
            f"ScienceWorld, {sw_trajectories} dev trajectories, their first {sw_steps} steps (JVM start included)",
            k,
        )
    print()


def branch_k(states, rounds=3, threads=2) -> dict:
    """Seconds per state of `branch --propose policy` at K=1 and K=8 with a tiny GGUF on long shop states:
    {"states", "prompt_tokens" (mean), "wall": {1: s, 8: s}, "cpu": {1: s, 8: s}}, the best of `rounds` each."""
    from eexp.io import read_records
    from eexp.policies import load_policy
    from eexp.policies.gguf_loader import open_gguf
    from eexp.prompts import Serializer

    with tempfile.TemporaryDirectory() as d:
        run = lambda *args: subprocess.run(
            [sys.executable, "-m", "eexp", *args],
            check=True,  # noqa: E731
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        expert = os.path.join(d, "expert.jsonl")
        run("expert", "--env", "shop", "-n", "40", "--seed", "3", "-o", expert)
        run("init-model", os.path.join(d, "m"), "--size", "tiny", "--corpus", expert)
        gguf = os.path.join(d, "m.gguf")
        run("export", os.path.join(d, "m"), "-o", gguf)
        trajectories = list(read_records([expert]))
        serializer = Serializer(history=8)
        policy = load_policy(gguf, {"n_threads": str(threads)}, max_tokens=32)
        tok = open_gguf(gguf, vocab_only=True, verbose=False)
        # the longest states first (late steps carry the most history)
        pool = sorted(((t, i) for t in trajectories for i in range(len(t["steps"]))), key=lambda ti: -ti[1])[:states]
        chosen = collections.defaultdict(set)
        for t, i in pool:
            chosen[t["id"]].add(i)
        subset = [t for t in trajectories if t["id"] in chosen]
        prompt_tokens = []
        for t in subset:
            for r in Brancher("admissible", 0, serializer=serializer, steps=chosen[t["id"]])(t):
                text = "\n".join(m["content"] for m in serializer.policy_messages(r["state"]))
                prompt_tokens.append(len(tok.tokenize(text.encode(), add_bos=False)))
        # a warm-up pass (grammars of the admissible replies are built and cached per state), then `rounds` rounds,
        # K=1 and K=8 interleaved so a busy neighbour hurts both alike; the best round of each is kept. CPU time
        # (all of llama.cpp's threads) is kept too: it suffers less from a shared machine than wall time.
        wall, cpu = {}, {}
        for k in (1,) + (1, 8) * rounds:
            brancher = Brancher("policy", k, policy=policy, serializer=serializer, temperature=1.0)
            t0, c0 = time.perf_counter(), time.process_time()
            n = 0
            for t in subset:
                brancher.steps = chosen[t["id"]]
                n += sum(1 for _ in brancher(t))
            wall.setdefault(k, []).append((time.perf_counter() - t0) / n)
            cpu.setdefault(k, []).append((time.process_time() - c0) / n)
        policy.close()
    return {
        "threads": threads,
        "states": len(prompt_tokens),
        "prompt_tokens": sum(prompt_tokens) / len(prompt_tokens),
        "prompt_min": min(prompt_tokens),
        "prompt_max": max(prompt_tokens),
        "wall": {1: min(wall[1][1:]), 8: min(wall[8])},
        "cpu": {1: min(cpu[1][1:]), 8: min(cpu[8])},
    }


def section_gguf(states):
    print("3. branch --propose policy, K=8 vs K=1, tiny GGUF (seconds per state)")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("   skipped: llama-cpp-python is not installed\n")
        return
    r = branch_k(states)
    print(
        f"   {r['states']} shop states, prompt {r['prompt_tokens']:.0f} tokens on average (min {r['prompt_min']}, "
        f"max {r['prompt_max']}), max_tokens 32, T=1.0, {r['threads']} threads"
    )
    for name in ("wall", "cpu"):
        k1, k8 = r[name][1], r[name][8]
        print(
            f"   {name.replace('cpu', 'CPU'):>4}: K=1 {k1:.3f} s/state   K=8 {k8:.3f} s/state   "
            f"ratio {k8 / k1:.2f}x (target <= 2.5x)"
        )
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=4, help="alternatives per state (default 4)")
    ap.add_argument("--states", type=int, default=12, help="states for the GGUF section (default 12)")
    ap.add_argument(
        "--scienceworld",
        type=int,
        default=4,
        metavar="N",
        help="ScienceWorld trajectories for section 2 (0: skip; default 4)",
    )
    ap.add_argument(
        "--sw-steps",
        type=int,
        default=6,
        metavar="N",
        help="branch the first N steps of each ScienceWorld trajectory (default 6)",
    )
    ap.add_argument("--skip-gguf", action="store_true")
    args = ap.parse_args()
    section_steps(args.k)
    section_jobs(3, args.scienceworld, args.sw_steps)
    if not args.skip_gguf:
        section_gguf(args.states)


if __name__ == "__main__":
    main()
