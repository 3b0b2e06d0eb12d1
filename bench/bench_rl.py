"""Episode throughput of `eexp rl` against `eexp eval`, same backend (transformers), same model, same episodes.

The baseline is eval's own episode loop over the transformers policy loaded from the checkpoint (what
`eexp eval --policy CKPT --act score --temperature 1` runs). RL's rollouts go through the same loop over the
in-memory weights, recording the tokens of every reply; an RL step then updates on them. Printed: episodes per
minute of eval, of RL's rollouts alone, and of whole RL steps (rollouts + update), each the best of --repeat runs
(one process, model loaded once, so start-up is not counted; other load on a shared machine only slows a run, and
the load average at the start is printed). RL's live policy scores a state once per weights: a group's episodes
share states, so its rollouts of the same episodes beat eval's loop (which has no reason to remember them); its
memory is emptied before each repeat.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_rl.py [--model CKPT] [-G 8] [--tasks-per-step 2] [--steps 10]
Without --model a start is built first in a temporary folder: 60 shop expert trajectories, a tiny model whose
tokenizer saw them, 200 imitation updates (about a minute on one core).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

EEXP = [sys.executable, "-m", "eexp"]


def build_start(folder: str, updates: int = 200, trajectories: int = 60) -> str:
    def eexp(*args):
        subprocess.run(EEXP + [str(a) for a in args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    eexp("expert", "--env", "shop", "-n", trajectories, "-q", "-o", f"{folder}/expert.jsonl")
    eexp("init-model", f"{folder}/base", "--size", "tiny", "--seed", 0, "--corpus", f"{folder}/expert.jsonl")
    eexp(
        "imitation-data", "--history", 0, "--no-admissible", "-q", f"{folder}/expert.jsonl", "-o", f"{folder}/il.jsonl"
    )
    eexp(
        "finetune",
        f"{folder}/il.jsonl",
        "--model",
        f"{folder}/base",
        "-o",
        f"{folder}/IL",
        "--max-steps",
        updates,
        "--lr",
        "3e-3",
        "--batch-size",
        8,
        "-q",
    )
    return f"{folder}/IL"


def measure(
    model: str | None = None,
    group_size: int = 8,
    tasks_per_step: int = 2,
    steps: int = 5,
    episode_steps: int = 10,
    repeat: int = 2,
    start_updates: int = 200,
) -> dict:
    """Seconds and env steps of the same episodes through eval's loop and RL's rollouts, and of whole RL steps;
    {"episodes", "model", "eval": (s, steps), "rl": (s, steps), "train": (s, steps, rollout s)}, best of `repeat`."""
    import torch

    from eexp.envs.base import make_env
    from eexp.rl.config import RLConfig
    from eexp.rl.recipe import RL
    from eexp.rl.rollouts import step_tasks
    from eexp.stages.evaluate.episode import Evaluator
    from eexp.stages.evaluate.settings import EvalSettings

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        model = model or build_start(folder, start_updates)
        n_episodes = steps * tasks_per_step * group_size
        from transformers.utils import logging

        logging.disable_progress_bar()

        tasks = make_env("shop").tasks("train")[:200]
        order = [t for s in range(1, steps + 1) for t in step_tasks(tasks, 0, s, tasks_per_step)]
        settings = EvalSettings(
            env_name="shop", policy_spec=model, act="score", temperature=1.0, max_steps=episode_steps
        )
        evaluator = Evaluator(settings, env=make_env("shop"))  # what `eexp eval` runs

        def new_run():
            out = os.path.join(folder, f"rl-{time.perf_counter_ns()}")
            run = RL(
                RLConfig(
                    model=model,
                    output=out,
                    env="shop",
                    tasks=200,
                    group_size=group_size,
                    tasks_per_step=tasks_per_step,
                    max_steps=steps,
                    act="score",
                    episode_steps=episode_steps,
                    reward="score",
                    allow_zero_start=True,
                    lr=1e-3,
                    save_every=10**9,
                    quiet=True,
                ),
                echo=lambda m: None,
            )
            run.setup()
            return run

        live = new_run()

        def episodes(ev, keep_trace):
            """The same episodes (same tasks, ids and so seeds) through one evaluator; (seconds, env steps)."""
            live.policy.forget()  # nothing remembered from an earlier repeat of the same episodes
            start, n_steps = time.perf_counter(), 0
            for i, task in enumerate(order):
                for k in range(group_size):
                    live.policy.trace = []
                    n_steps += ev.run(task, f"bench-{i}-{k}")[0]["steps"]
            return time.perf_counter() - start, n_steps

        def training_run():
            run = new_run()
            start = time.perf_counter()
            run.train()
            seconds = time.perf_counter() - start
            import orjson

            with open(run.metrics_path, "rb") as f:
                metrics = [orjson.loads(line) for line in f]
            return seconds, sum(r["env_steps"] for r in metrics), sum(r["rollout_s"] for r in metrics)

        timings = {"eval": [], "rl": [], "train": []}
        for _ in range(repeat):  # alternated, so a burst of load elsewhere hits every row alike
            timings["eval"].append(episodes(evaluator, False))
            timings["rl"].append(episodes(live.evaluator, True))
            timings["train"].append(training_run())
    return {
        "episodes": n_episodes,
        "model": model,
        "torch_threads": torch.get_num_threads(),
        "load": load,
        **{k: min(v) for k, v in timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="the start checkpoint (default: a tiny IL model built here)")
    parser.add_argument("-G", "--group-size", type=int, default=8)
    parser.add_argument("--tasks-per-step", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="RL steps measured")
    parser.add_argument("--episode-steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the best is shown")
    args = parser.parse_args()
    r = measure(args.model, args.group_size, args.tasks_per_step, args.steps, args.episode_steps, args.repeat)
    n_episodes = r["episodes"]
    print(
        f"shop train, {n_episodes} episodes (max {args.episode_steps} steps, --act score, temperature 1), "
        f"model {args.model or 'a tiny IL model built here'}, {r['torch_threads']} torch thread(s), "
        f"{os.cpu_count()} CPUs, load average {r['load']:.2f} at the start"
    )
    eval_s, eval_steps = r["eval"]
    roll_s, roll_steps = r["rl"]
    full_s, full_steps, full_roll_s = r["train"]
    base = n_episodes / eval_s * 60
    print(f"{'what':<34} {'seconds':>8} {'env steps':>9} {'episodes/min':>13} {'vs eval':>8} {'steps/s':>8}")
    for label, seconds, n_steps in [
        ("eval (baseline)", eval_s, eval_steps),
        ("rl rollouts, same episodes", roll_s, roll_steps),
        ("rl steps: their rollouts", full_roll_s, full_steps),
        ("rl steps: rollouts + updates", full_s, full_steps),
    ]:
        rate = n_episodes / seconds * 60
        print(f"{label:<34} {seconds:8.2f} {n_steps:9d} {rate:13.1f} {rate / base:7.2f}x {n_steps / seconds:8.1f}")
    print(
        "the first two rows run identical episodes; in a training run the weights change, so its episodes "
        "differ in length: compare steps/s there"
    )


if __name__ == "__main__":
    sys.exit(main())
