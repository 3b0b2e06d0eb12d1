"""How fast eval --compare's paired bootstrap runs (eexp.stats.paired_bootstrap, numpy), against the plain Python loop
it replaced (random.Random(seed).choices per resample, summed left to right) on the same differences, in the same
run; the two must give the same interval and p-value, and the script stops if they do not.

recipes/pooled.py calls it once per row and split (26 times for the demo's table). Run:
    .venv/bin/python bench/bench_compare.py [--tasks 300] [--resamples 10000]
"""

from __future__ import annotations

import argparse
import functools
import math
import operator
import random
import time

from eexp.stats import Bootstrap, paired_bootstrap


def python_loop(first: list[float], second: list[float], resamples: int, seed: int) -> Bootstrap:
    """The loop as it was before numpy (confidence 0.95, no tie rounding: the differences here have no ties)."""
    diffs = [b - a for a, b in zip(first, second)]
    n, alpha = len(diffs), 1 - 0.95
    rng = random.Random(seed)
    means = sorted(functools.reduce(operator.add, rng.choices(diffs, k=n), 0) / n for _ in range(resamples))
    low, high = means[math.floor(alpha / 2 * resamples)], means[math.ceil((1 - alpha / 2) * resamples) - 1]
    p = min(1.0, 2 * min(sum(m <= 0 for m in means), sum(m >= 0 for m in means)) / resamples)
    return Bootstrap(sum(diffs) / n, low, high, p)


def bootstrap_seconds(tasks: int = 300, resamples: int = 10000, seed: int = 0) -> dict:
    values = random.Random(1)
    first = [values.random() for _ in range(tasks)]
    second = [values.random() for _ in range(tasks)]
    paired_bootstrap([0.0], [1.0], resamples=1)  # numpy imported before the clock starts
    start = time.perf_counter()
    eexp = paired_bootstrap(first, second, resamples=resamples, seed=seed)
    middle = time.perf_counter()
    loop = python_loop(first, second, resamples, seed)
    end = time.perf_counter()
    if eexp != loop:
        raise SystemExit(f"the two bootstraps differ: {eexp} against {loop}")
    return {"tasks": tasks, "resamples": resamples, "numpy_s": middle - start, "python_s": end - middle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--resamples", type=int, default=10000)
    args = parser.parse_args()
    r = bootstrap_seconds(args.tasks, args.resamples)
    print(
        f"paired bootstrap, {r['tasks']} tasks x {r['resamples']} resamples: eexp (numpy) {r['numpy_s']:.3f} s, "
        f"the Python loop {r['python_s']:.3f} s ({r['python_s'] / r['numpy_s']:.1f}x), the same interval and p"
    )


if __name__ == "__main__":
    main()
