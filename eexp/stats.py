"""The statistics behind `eexp eval`: a Wilson interval for a success rate, an exact McNemar test for paired success,
and a seeded paired bootstrap for paired scores.

Plain Python (math, random): no scipy or numpy, so an evaluation of the baselines needs nothing beyond eexp's core
dependencies, and the results are the same on every machine for the same seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927), the usual choice for success rates:
    unlike the normal approximation it stays inside [0, 1] and keeps its coverage at 0% and 100%.

        center = (p + z²/2n) / (1 + z²/n),  half = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n, got {successes} of {n}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, center - half)  # exact ends: no -1e-17 from rounding
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes.

    b: pairs where only the first run succeeded, c: pairs where only the second did. Under the null hypothesis the
    discordant pairs split as Binomial(b + c, 1/2); the p-value is twice the smaller tail, capped at 1. Computed with
    integers, so it is exact up to the final division.
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass
class Bootstrap:
    mean_diff: float  # mean of (second - first) over the pairs
    ci_low: float     # percentile interval of the resampled mean differences
    ci_high: float
    p_value: float    # two-sided: twice the share of resampled means on the far side of 0, capped at 1


def paired_bootstrap(first: list[float], second: list[float], *, resamples: int = 10000, seed: int = 0,
                     confidence: float = 0.95) -> Bootstrap:
    """Paired bootstrap of the mean difference `second - first`: resample the pairs (tasks) with replacement.

    Seeded (random.Random(seed)), so the same inputs and seed give the same interval and p-value.
    """
    if len(first) != len(second):
        raise ValueError("paired_bootstrap needs two lists of the same length (one value per task in each)")
    n = len(first)
    if n == 0:
        return Bootstrap(0.0, 0.0, 0.0, 1.0)
    diffs = [b - a for a, b in zip(first, second)]
    observed = sum(diffs) / n
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    alpha = 1 - confidence
    low = means[int(math.floor(alpha / 2 * resamples))]
    high = means[max(0, int(math.ceil((1 - alpha / 2) * resamples)) - 1)]
    at_or_below = sum(1 for m in means if m <= 0)
    at_or_above = sum(1 for m in means if m >= 0)
    p = min(1.0, 2 * min(at_or_below, at_or_above) / resamples)
    return Bootstrap(observed, low, high, p)
