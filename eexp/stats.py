"""The statistics behind `eexp eval` and `eexp world-model-eval`: a Wilson interval for a success rate, a seeded
bootstrap interval for a mean score, an exact McNemar test for paired success, an exact sign-flip test for paired
success over tasks x seeds (and over seeds), Holm's adjustment of a family of p-values, a seeded paired bootstrap for
paired scores, a seeded hierarchical bootstrap (seeds, then tasks) for a difference between two methods' seeds, the
spread of a rate across seeds, and the power of a test over seeds: the smallest mean difference it detects, and the
seeds a difference needs (detectable_difference, seeds_for_power, on Student's t quantiles: t_quantile), and the
fewest pairs a bootstrap claim rests on (bootstrap_min_pairs).

Plain Python (math, random, statistics), except the bootstrap of a mean and the hierarchical bootstrap, which draw their
resamples with numpy (a core dependency). Every resampling is seeded, so the same inputs and seed give the same
figures.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import NormalDist

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


def sign_flip_exact(diffs: list[int]) -> float:
    """Two-sided exact paired permutation (sign-flip) test of integer per-task differences: the test `eval
    --compare` uses when a method has runs of several seeds.

    `diffs[t]` is, for task t, the successes of the second method summed over its seeds minus those of the first,
    both with the same number of seeds (with unequal numbers a difference is not symmetric about 0 under the null:
    `within_task_permutation_exact`). Under the null hypothesis the two methods' runs are exchangeable on every task,
    so each nonzero difference is as likely negative as positive; the p-value is the share of the 2^m sign patterns
    of the m nonzero differences whose sum is at least as far from 0 as the observed sum, counted exactly with
    integers (a convolution over the sums).

    Why this test: the task is the unit that is sampled, and a task's S episodes (one per seed) share its
    difficulty, so they are not independent pairs. McNemar on the pooled (task, seed) discordant pairs counts a
    task that one method always solves and the other never does S times, as if it were S independent pieces of
    evidence (too small p-values); a Cochran-Mantel-Haenszel test stratified by seed has the same flaw within each
    stratum and needs seed i of one method paired with seed i of the other. Summing over seeds within the task keeps
    the task as the unit, needs no pairing of seeds, and is exact at any size. With one seed on each side the
    differences are -1, 0, +1 and the test is exactly the exact McNemar test (the sign test on the discordant
    tasks), so single runs compare as before. What it does not do is treat the seeds' training runs as sampled: it
    asks whether these runs differ on tasks like these. Whether the method beats the other on another training run
    is the test over seeds (this test on each seed pair's difference, eexp.stages.evaluate.compare.seed_level,
    and `hierarchical_bootstrap`).
    """
    if any(d != int(d) for d in diffs):
        raise ValueError("sign_flip_exact takes whole differences (successes)")
    nonzero = [abs(int(d)) for d in diffs if d]
    if not nonzero:
        return 1.0
    observed = abs(sum(int(d) for d in diffs))
    total = sum(nonzero)
    counts = [0] * (2 * total + 1)  # counts[total + s]: sign patterns so far whose sum is s
    counts[total] = 1
    for d in nonzero:
        new = [0] * len(counts)
        for i, c in enumerate(counts):
            if c:
                new[i - d] += c
                new[i + d] += c
        counts = new
    extreme = sum(c for i, c in enumerate(counts) if abs(i - total) >= observed)
    return min(1.0, extreme / 2 ** len(nonzero))


def within_task_permutation_exact(successes: list[tuple[int, int]], s_first: int, s_other: int) -> float:
    """Two-sided exact permutation test over tasks of two methods with unequal numbers of seeds (runs): `successes[t]`
    is (the first method's successes on task t over its s_first runs, the other's over its s_other runs).

    Under the null hypothesis a task's s_first + s_other runs are exchangeable, so given its K successes in all,
    the other method's share k is hypergeometric (K successes among the runs, s_other of them drawn). The statistic
    is the sum over tasks of s_first * k_other - s_other * k_first, whose null mean is 0 on every task; its null
    distribution is the convolution of the tasks' (exact, in integers), and the p-value the probability of a sum at
    least as far from 0 as the observed one. With equal numbers of seeds `sign_flip_exact` is used instead (it
    swaps a task's runs between the methods as a block, as the same seeds' runs of one method share a training)."""
    n_runs = s_first + s_other
    observed, total_weight = 0, 1
    dist = {0: 1}  # statistic so far -> its weight (a product of the tasks' hypergeometric numerators)
    for k_first, k_other in successes:
        if not (0 <= k_first <= s_first and 0 <= k_other <= s_other):
            raise ValueError("successes must lie between 0 and the runs of each method")
        k = k_first + k_other
        observed += s_first * k_other - s_other * k_first
        if k in (0, n_runs):  # every run failed, or every run succeeded: no other split exists
            continue
        task = {
            n_runs * j - s_other * k: math.comb(k, j) * math.comb(n_runs - k, s_other - j)
            for j in range(max(0, k - s_first), min(k, s_other) + 1)
        }
        new: dict[int, int] = {}
        for total, weight in dist.items():
            for step, w in task.items():
                new[total + step] = new.get(total + step, 0) + weight * w
        dist = new
        total_weight *= math.comb(n_runs, s_other)
    extreme = sum(w for total, w in dist.items() if abs(total) >= abs(observed))
    return min(1.0, extreme / total_weight)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values for testing them as a family (the familywise error rate held at
    alpha whatever the tests' dependence), in their input order: the i-th smallest p (i = 1..m) is multiplied by
    m - i + 1, each adjusted value is at least the one before it in that order, and none exceeds 1. A planned family of
    primary tests (a method against its control, for each method) is judged on these, not on the raw p."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Spread:
    n: int  # how many seeds
    mean: float
    sd: float  # the sample standard deviation (n - 1 in the denominator); 0 for one seed
    low: float  # min
    high: float  # max


def seed_spread(values: list[float]) -> Spread:
    """Mean, sample standard deviation, min and max of one method's per-seed values (success rates or scores)."""
    n = len(values)
    if n == 0:
        return Spread(0, 0.0, 0.0, 0.0, 0.0)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Spread(n, mean, sd, min(values), max(values))


@dataclass
class Bootstrap:
    mean_diff: float  # mean of (second - first) over the pairs
    ci_low: float  # percentile interval of the resampled mean differences
    ci_high: float
    p_value: float  # two-sided: twice the share of resampled means on the far side of 0, capped at 1


def paired_bootstrap(
    first: list[float],
    second: list[float],
    *,
    resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk: int = 1000,
) -> Bootstrap:
    """Paired bootstrap of the mean difference `second - first`: resample the pairs (tasks) with replacement.

    Seeded, so the same inputs and seed give the same interval and p-value: resample r draws the pairs that
    `random.Random(seed).choices(diffs, k=n)` would draw as its r-th call, and sums them left to right, as the plain
    Python loop this replaced did (every published interval was computed so). Vectorised with numpy, `chunk`
    resamples at a time: the Mersenne Twister's state is handed to numpy's MT19937, whose 32-bit words make
    random()'s 53-bit floats as CPython does (`((a >> 5) * 2**26 + (b >> 6)) / 2**53`), and a draw is floor(u * n),
    as choices' is; a cumulative sum is sequential where numpy's sum is pairwise (tests/test_eval.py checks the
    means against random.choices').
    """
    import numpy as np  # here, as in hierarchical_bootstrap: every command's start-up imports this module

    if len(first) != len(second):
        raise ValueError("paired_bootstrap needs two lists of the same length (one value per task in each)")
    n = len(first)
    if n == 0:
        return Bootstrap(0.0, 0.0, 0.0, 1.0)
    # equal values are a zero difference: a mean of equal scores over seeds, (x + x + x) / 3, can differ from x in
    # its last bit, and a constant difference of 1e-17 would otherwise be "significant" at any p
    diffs = [0.0 if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else b - a for a, b in zip(first, second)]
    observed = sum(diffs) / n
    key = random.Random(seed).getstate()[1]  # 624 words and the position
    twister = np.random.MT19937()
    twister.state = {
        "bit_generator": "MT19937",
        "state": {"key": np.array(key[:624], dtype=np.uint32), "pos": key[624]},
    }
    values = np.asarray(diffs, dtype=float)
    drawn = []
    for at in range(0, resamples, chunk):
        size = min(chunk, resamples - at)
        words = twister.random_raw(2 * size * n).reshape(-1, 2)
        u = ((words[:, 0] >> 5).astype(float) * 67108864.0 + (words[:, 1] >> 6).astype(float)) / 9007199254740992.0
        picks = np.floor(u * float(n)).astype(np.intp).reshape(size, n)
        drawn.append(np.cumsum(values[picks], axis=1)[:, -1] / n)
    means = sorted(np.concatenate(drawn).tolist())
    alpha = 1 - confidence
    low = means[int(math.floor(alpha / 2 * resamples))]
    high = means[max(0, int(math.ceil((1 - alpha / 2) * resamples)) - 1)]
    at_or_below = sum(1 for m in means if m <= 0)
    at_or_above = sum(1 for m in means if m >= 0)
    p = min(1.0, 2 * min(at_or_below, at_or_above) / resamples)
    return Bootstrap(observed, low, high, p)


def hierarchical_bootstrap(
    diffs: list[list[float]], *, resamples: int = 10000, seed: int = 0, confidence: float = 0.95, chunk: int = 1000
) -> Bootstrap:
    """Two-level bootstrap of a mean paired difference over seeds and tasks: `diffs[s][t]` is the difference (second
    - first) on task t in seed s, seed s of one method paired with seed s of the other, the same tasks t in every
    seed; the statistic is the mean over seeds of each seed's mean over the tasks.

    Each resample draws S seeds with replacement, then n tasks with replacement, and takes the drawn tasks in every
    drawn seed: a task's difference is one pair (both methods' outcomes on it move together), and one task draw
    serves all seeds because every seed ran the same tasks (tasks are crossed with seeds, not nested in them). Drawn
    afresh for each seed, a task that one method wins in every seed would average away over the seeds, and S copies
    of one run would give an interval sqrt(S) times narrower than the run alone. Resampling seeds is what lets the
    interval see training variance, which a bootstrap over tasks cannot; with few seeds it sees only the spread of
    the seeds it has (3 seeds give 10 distinct draws). Drawing seeds and tasks apart counts their interaction twice,
    so where seeds differ little the interval is wider than its level says (simulated: 99.7% coverage for 95% with a
    seed sd of 5 points over 50 tasks), and near its level where they differ much (94-96% at 3-10 seeds, sd 15
    points): read it beside the exact sign-flip test over seeds.

    Vectorised (numpy), `chunk` resamples at a time: how often each seed is drawn, c ~ Multinomial(S, 1/S), gives
    per task the drawn seeds' differences summed (c . D), and the resample's mean is the sum of that over n task
    indices drawn with replacement, divided by S n. The p-value is two-sided: twice the share of resampled means on
    the far side of 0, at least 1 / resamples (no resample crossing 0 means p is below that, not 0), at most 1.
    Seeded: numpy.random.default_rng(seed).
    """
    import numpy as np  # here, not at the top: every command's start-up imports this module (eval's CLI)

    if resamples < 1:
        raise ValueError("hierarchical_bootstrap needs at least one resample")
    if len({len(d) for d in diffs}) > 1:
        raise ValueError("hierarchical_bootstrap needs the same tasks in every seed (one difference per task)")
    table = np.asarray(diffs, dtype=float)
    if table.size == 0:
        return Bootstrap(0.0, 0.0, 0.0, 1.0)
    n_seeds, n_tasks = table.shape
    rng = np.random.default_rng(seed)
    seeds_drawn = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=resamples)
    means = np.empty(resamples)
    for at in range(0, resamples, chunk):
        summed = seeds_drawn[at : at + chunk] @ table  # resample x task: the drawn seeds' sum
        tasks = rng.integers(0, n_tasks, size=summed.shape)  # resample x draw: a task index
        means[at : at + len(summed)] = summed[np.arange(len(summed))[:, None], tasks].sum(axis=1) / (n_seeds * n_tasks)
    means.sort()
    # whole differences (success) give exact sums; others can leave a mean that cancels a rounding error off 0
    means[np.abs(means) < 1e-12] = 0.0
    alpha = 1 - confidence
    low = float(means[int(math.floor(alpha / 2 * resamples))])
    high = float(means[max(0, int(math.ceil((1 - alpha / 2) * resamples)) - 1)])
    far = min(int(np.count_nonzero(means <= 0)), int(np.count_nonzero(means >= 0)))
    return Bootstrap(float(table.mean()), low, high, min(1.0, max(1, 2 * far) / resamples))


@dataclass
class MeanInterval:
    mean: float
    ci_low: float  # percentile interval of the resampled means
    ci_high: float


def bootstrap_mean(
    values: list[float],
    *,
    resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk_cells: int = 2_000_000,
) -> MeanInterval:
    """The mean of `values` with a seeded percentile bootstrap interval: `resamples` draws of len(values) values with
    replacement, the interval between the alpha/2 and 1 - alpha/2 quantiles of their means (no normal or t
    approximation, so a mean near 0 or 1 of a bounded score keeps its interval inside the values' range). One value,
    or all equal: the interval is that value. Vectorised (numpy), about `chunk_cells` draws at a time; seeded
    (numpy.random.default_rng(seed)), so the same values and seed give the same interval."""
    import numpy as np  # here, as in hierarchical_bootstrap: every command's start-up imports this module

    if resamples < 1:
        raise ValueError("bootstrap_mean needs at least one resample")
    data = np.asarray(values, dtype=float)
    n = len(data)
    if n == 0:
        return MeanInterval(0.0, 0.0, 0.0)
    mean = float(data.mean())
    if n == 1 or float(data.min()) == float(data.max()):
        return MeanInterval(mean, float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    step = max(1, chunk_cells // n)
    means = np.empty(resamples)
    for at in range(0, resamples, step):
        rows = min(step, resamples - at)
        means[at : at + rows] = data[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    means.sort()
    alpha = 1 - confidence
    low = float(means[int(math.floor(alpha / 2 * resamples))])
    high = float(means[max(0, int(math.ceil((1 - alpha / 2) * resamples)) - 1)])
    return MeanInterval(mean, low, high)


# --- power over seeds -------------------------------------------------------------------------------------------------
# Student's t quantiles without scipy (not a dependency of eexp's core): exact for integer degrees of freedom up to
# T_EXACT_DF, from the closed form of the t distribution (Abramowitz & Stegun 26.7.3-4) inverted by bisection; above
# it the Cornish-Fisher expansion to its 1/df^2 term (A&S 26.7.5), within 1e-9 of the quantile there.
T_EXACT_DF = 4000


def t_within(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with `df` (a positive integer) degrees of freedom: with theta = atan(t / sqrt(df)),
    for odd df (2/pi) (theta + sin theta (cos theta + 2/3 cos^3 theta + ... + (2.4...(df-3))/(1.3...(df-2))
    cos^(df-2) theta)), for even df sin theta (1 + 1/2 cos^2 theta + ... + (1.3...(df-3))/(2.4...(df-2))
    cos^(df-2) theta) (A&S 26.7.3-4): a finite sum, exact up to rounding."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t_within needs a positive integer number of degrees of freedom, got {df}")
    t = abs(t)
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:
        if df == 1:
            return 2 * theta / math.pi
        term = total = math.cos(theta)
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * cos2
            total += term
        return min(1.0, 2 / math.pi * (theta + sin * total))
    term = total = 1.0
    for k in range(1, df // 2):
        term *= (2 * k - 1) / (2 * k) * cos2
        total += term
    return min(1.0, sin * total)


def t_quantile(p: float, df: int) -> float:
    """The p quantile of Student's t with `df` degrees of freedom (0 < p < 1): t_within inverted by bisection to the
    last bit, or above T_EXACT_DF degrees of freedom z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2)
    (A&S 26.7.5)."""
    if not 0 < p < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if p == 0.5:
        return 0.0
    if df > T_EXACT_DF:
        z = NormalDist().inv_cdf(p)
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    within = 2 * p - 1
    low, high = 0.0, 1.0
    while t_within(high, df) < within:
        low, high = high, 2 * high
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        low, high = (mid, high) if t_within(mid, df) < within else (low, mid)
    return high


def detectable_difference(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest mean of n paired differences with standard deviation `sd` that a two-sided paired t-test at
    `alpha` detects with probability `power`: (t(1 - alpha/2, n - 1) + t(power, n - 1)) sd / sqrt(n), the textbook
    approximation of its noncentral-t power (it leaves out the far tail and the noncentral t's skew: the exact power
    at that difference is 0.795 at n = 6, 0.798 at n = 8, 0.800 from n = 20, for 0.8 asked). n >= 2."""
    if n < 2:
        raise ValueError("a paired t-test needs at least two differences")
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def seeds_for_power(
    diff: float, sd: float, *, alpha: float = 0.05, power: float = 0.8, at_least: int = 2
) -> int | None:
    """The fewest n >= at_least whose detectable_difference(sd, n) is at most |diff|: how many paired differences a
    true mean difference of `diff` needs, if their standard deviation is `sd`. None for a diff of 0 (no number does).
    The normal formula ((z(1 - alpha/2) + z(power)) sd / diff)^2 is a lower bound (t quantiles exceed z's), so the
    search starts there."""
    if diff == 0:
        return None
    normal = NormalDist()
    z = normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)
    n = max(at_least, 2, math.ceil((z * sd / abs(diff)) ** 2))
    while detectable_difference(sd, n, alpha=alpha, power=power) > abs(diff):
        n += 1
    return n


def bootstrap_min_pairs(alpha: float = 0.05) -> int:
    """The fewest pairs a paired bootstrap's p-value is read at level `alpha` on: below it `eval --compare` says "too
    few" instead. The percentile bootstrap of a mean over n pairs resamples a mean whose variance is (n - 1) / n of
    s^2 / n and reads it with normal quantiles, so for normal differences its test of level alpha rejects a true null
    with probability P(|T(n - 1)| > z(1 - alpha/2) sqrt((n - 1) / n)): 0.40 at 2 pairs, 0.15 at 5, 0.096 at 10 for
    alpha 0.05 (one pair: every resample is that pair, an interval of width 0 and p below any alpha). The minimum is
    the fewest pairs where that error is at most twice alpha: 10 at alpha 0.05."""
    z = NormalDist().inv_cdf(1 - alpha / 2)
    n = 2
    while 1 - t_within(z * math.sqrt((n - 1) / n), n - 1) > 2 * alpha:
        n += 1
    return n
