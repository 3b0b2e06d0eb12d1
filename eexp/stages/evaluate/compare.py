"""`eval --compare`: runs of a policy side by side, each with its 95% interval, and every run tested against the
first over the tasks both ran (exact McNemar on success, seeded paired bootstrap on score); runs named NAME=FILES
are the seeds of one method, pooled into one row and tested over seeds first (file i of a method against file i of
the first: per-seed differences, a hierarchical bootstrap, an exact sign-flip test over seeds, and its power: the
smallest mean difference it detects at these seeds and the seeds the observed one would need), then over tasks x
seeds (exact sign-flip test). A bootstrap over fewer pairs than eexp.stats.bootstrap_min_pairs makes no claim ("too
few"), and a test over tasks, which holds the training runs fixed, says better or worse only "for these runs".

`read_runs` reads the episode files (`NAME=FILE,FILE,...` and quoted globs included), `compare_runs` computes the
comparison, `format_comparison` prints it and `plot_comparison` draws it. `world-model-eval --compare`
(eexp.stages.world_model_compare) reads its files with compare_inputs and labelled and tests them with paired_test,
seeded_test and seed_level, which read a run as its `label`, `path` and `episodes` (id -> `success`, `score`).
"""

from __future__ import annotations

import glob
import io
import os
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from eexp.errors import InputError, UsageProblem
from eexp.io import Reader, write_atomic
from eexp.records import expect
from eexp.stages.evaluate.summary import pct, rate_fields
from eexp.stats import (
    bootstrap_min_pairs,
    detectable_difference,
    hierarchical_bootstrap,
    mcnemar_exact,
    paired_bootstrap,
    seed_spread,
    seeds_for_power,
    sign_flip_exact,
    within_task_permutation_exact,
)


def compare_inputs(inputs: list[str]) -> list[tuple[str, str | None]]:
    """(path, label) for every file of `eval --compare`. An INPUT is a file (labelled by its name), or NAME=FILES:
    the runs of one method, one file per seed, FILES separated by commas; a FILE there may be a glob pattern
    (quoted, so eexp expands it, in sorted order); NAME=... given again adds seeds to NAME. An existing file whose
    name holds `=` is a file."""
    out: list[tuple[str, str | None]] = []
    for item in inputs:
        label, sep, rest = item.partition("=")
        if item == "-" or os.path.exists(item) or not sep:
            out.append((item, None))
            continue
        label = label.strip()
        if not label or not rest:
            raise UsageProblem(
                f"{item!r}: expected a file or NAME=FILE[,FILE...] (the runs of one method, one per seed)"
            )
        for part in rest.split(","):
            if not part:
                continue
            if not os.path.exists(part) and glob.has_magic(part):
                matches = sorted(glob.glob(part))
                if not matches:
                    raise InputError(f"no file matches {part!r} (given for {label})")
                out += [(m, label) for m in matches]
            else:
                out.append((part, label))
    return out


def read_runs(inputs: list[str], on_error: str = "fail", cache: dict | None = None) -> tuple[str, list["Run"]]:
    """(environment name, runs) from the INPUTs of `eval --compare` (see compare_inputs); a record that is not an
    episode is FILE:LINE, fatal or skipped as `on_error` says. `cache`: as read_inputs'."""
    return load_runs(read_inputs(inputs, expect("episode"), "episodes", on_error, cache))


def read_inputs(
    inputs: list[str], problem_of, what: str, on_error: str = "fail", cache: dict | None = None
) -> list[tuple]:
    """(path, [(record, line)], label) for each file of the INPUTs (compare_inputs), keeping the records that
    `problem_of` finds nothing wrong with; the others are FILE:LINE, fatal or skipped as `on_error` says. A file with
    none left is an error ("no WHAT to compare"). eval --compare and world-model-eval --compare read their files so.

    `cache`, a dict kept by the caller across calls with the same `problem_of` and `on_error`, holds each file's
    kept records by path, so that a file is read once however many comparisons it is in (recipes/pooled.py's tables
    read each file about ten times). The records are shared: a caller must not change them."""
    files = []
    for path, label in compare_inputs(inputs):
        if cache is not None and path in cache:
            files.append((path, cache[path], label))
            continue
        reader = Reader([path], on_error=on_error)
        records = []
        for item in reader:
            problem = problem_of(item.record)
            if problem:
                reader.reject(item.error(problem))
                continue
            records.append((item.record, item.line))
        if not records:
            raise InputError(f"no {what} to compare", path)
        if cache is not None:
            cache[path] = records
        files.append((path, records, label))
    return files


@dataclass
class Run:
    """The episodes of one file for one split."""

    label: str
    path: str
    split: str
    policy: str
    episodes: dict[str, dict]  # task id -> episode, in file order


def load_runs(files: list[tuple]) -> tuple[str, list[Run]]:
    """(environment name, runs) from episode files given as (path, [(record, line)]) or (path, [(record, line)],
    label). A label names the method a file belongs to (`eval --compare IL=a.jsonl,b.jsonl`: one run per seed);
    files without one are labelled by their name. Files of different environments are refused: their tasks and
    success tests are not comparable."""
    env_name, env_from = None, None
    runs: list[Run] = []
    starts: dict[str, tuple[str, str]] = {}  # split -> (start mode, the file it was first seen in)
    for f, label in labelled(files):
        path, records = f[0], f[1]
        by_split: dict[str, Run] = {}
        for record, line in records:
            meta = record.get("meta") or {}
            env = meta.get("env")
            if not isinstance(env, str) or not env:
                raise InputError("meta.env missing: cannot tell which environment this episode is from", path, line)
            if env_name is None:
                env_name, env_from = env, path
            elif env != env_name:
                raise InputError(
                    f"episodes of environment {env!r}, but {env_from} holds episodes of {env_name!r}: "
                    f"--compare needs runs of one environment (compare each environment separately)",
                    path,
                    line,
                )
            split = record["task"].get("split") or meta.get("split") or ""
            # an off-path episode (eval --start off-path) starts elsewhere than the reset one of the same task:
            # pairing them would compare two different tests
            start = (meta.get("start") or {}).get("mode", "reset")
            first_start, start_from = starts.setdefault(split, (start, path))
            if start != first_start:
                raise InputError(
                    f"an episode that starts {start}, but {start_from} holds {split or 'its'} episodes "
                    f"that start {first_start}: --compare pairs episodes of the same task from the same "
                    f"start (compare --start off-path runs on their own)",
                    path,
                    line,
                )
            run = by_split.setdefault(split, Run(label, path, split, record["policy"], {}))
            task_id = record["task"]["id"]
            if task_id in run.episodes:
                raise InputError(
                    f"task {task_id!r} ({split}) appears twice: --compare pairs one episode per task "
                    f"and file (put repeated runs, e.g. seeds, in separate files: NAME=A.jsonl,"
                    f"B.jsonl)",
                    path,
                    line,
                )
            run.episodes[task_id] = record
        runs.extend(by_split.values())
    return env_name or "", runs


def labelled(files: list[tuple]) -> Iterator[tuple[tuple, str]]:
    """(file, its run name) for files given as (path, ...) or (path, ..., label), in order: a file without a label is
    named by its file name (_labels). Refused, as each file comes: a file whose name is also a label given with
    NAME=FILES, and a file given twice for one name (one file is one run: one seed)."""
    unlabelled = [f[0] for f in files if len(f) < 3 or not f[2]]
    named = iter(_labels(unlabelled))
    labels = [f[2] if len(f) > 2 and f[2] else next(named) for f in files]
    explicit = {f[2] for f in files if len(f) > 2 and f[2]}
    seen: dict[str, set] = {}
    for f, label in zip(files, labels):
        path = f[0]
        if (len(f) < 3 or not f[2]) and label in explicit:
            raise InputError(
                f"the run name {label!r} is both a label given with {label}=FILES and this file's name: "
                f"give this file a label of its own (NAME={path})",
                path,
            )
        if path in seen.setdefault(label, set()) and path != "-":
            raise InputError(f"given twice for {label!r}: one file is one run (one seed)", path)
        seen[label].add(path)
        yield f, label


def _labels(paths: list[str]) -> list[str]:
    """Short names for the runs: the file name without .jsonl, the full path where two would clash."""
    short = [os.path.basename(p)[: -len(".jsonl")] if p.endswith(".jsonl") else os.path.basename(p) for p in paths]
    counts = Counter(short)
    return [s if counts[s] == 1 else p for s, p in zip(short, paths)]


def compare_runs(env: str, runs: list[Run], *, seed: int = 0, alpha: float = 0.05, resamples: int = 10000) -> dict:
    """Per split: every run with its interval, and every run after the first tested against the first over the
    tasks both ran (exact McNemar on success, seeded paired bootstrap on score).

    Runs that share a label are the seeds of one method (compare_seeded): then every method is one row with the
    spread of its seeds, tested against the first over tasks x seeds."""
    if len({(r.split, r.label) for r in runs}) < len(runs):
        return compare_seeded(env, runs, seed=seed, alpha=alpha, resamples=resamples)
    splits: dict[str, list[dict]] = {}
    firsts: dict[str, Run] = {}
    for run in runs:
        eps = list(run.episodes.values())
        successes = sum(1 for e in eps if e["success"])
        row = {
            "run": run.label,
            "file": run.path,
            "policy": run.policy,
            "split": run.split,
            "n": len(eps),
            "successes": successes,
            **rate_fields(successes, len(eps)),
            "mean_score": sum(e["score"] for e in eps) / len(eps),
        }
        first = firsts.setdefault(run.split, run)
        if first is not run:
            row["vs_first"] = paired_test(first, run, seed=seed, alpha=alpha, resamples=resamples)
        splits.setdefault(run.split, []).append(row)
    return {"env": env, "alpha": alpha, "resamples": resamples, "seed": seed, "splits": splits}


SEEDED_TEST = "sign-flip"  # eexp.stats.sign_flip_exact over tasks, successes summed over seeds
# with unequal numbers of seeds: eexp.stats.within_task_permutation_exact (the sign-flip's null is not symmetric then)
UNEQUAL_SEEDS_TEST = "within-task permutation"
TOO_FEW_SEEDS = "too few seeds for a seed-level claim"
# a bootstrap over fewer pairs (tasks; seeds for the hierarchical bootstrap) than eexp.stats.bootstrap_min_pairs (10
# at alpha 0.05) is no claim: its verdict is this, and the table gives the mean without an interval or p
TOO_FEW_PAIRS = "too few pairs for a bootstrap claim"
POWER = 0.8  # the power of the smallest detectable difference over seeds (seed_level)
MAX_LISTED_SEEDS = 12  # the table lists each seed's difference up to this many seeds, then their mean, sd and signs


def compare_seeded(env: str, runs: list[Run], *, seed: int = 0, alpha: float = 0.05, resamples: int = 10000) -> dict:
    """Per split, one row per method (label) pooling its seeds' runs: episodes and successes over all seeds, the
    per-seed success rates and scores with their mean, sd, min and max, and every method after the first tested
    against the first over the tasks every run of both holds: the exact sign-flip test on the per-task successes
    summed over seeds (eexp.stats.sign_flip_exact, which says why this test) and a seeded paired bootstrap over
    tasks of the per-task mean score; where both have the same number of files, several, also over seeds, file i
    against file i (seed_level)."""
    groups: dict[str, dict[str, list[Run]]] = {}
    files_of: dict[str, list[str]] = {}  # label -> its files in the order given: a file's position is its seed
    for run in runs:
        groups.setdefault(run.split, {}).setdefault(run.label, []).append(run)
        if run.path not in files_of.setdefault(run.label, []):
            files_of[run.label].append(run.path)
    splits: dict[str, list[dict]] = {}
    for split, methods in groups.items():
        rows = []
        first = None
        for label, seeds in methods.items():
            eps = [e for r in seeds for e in r.episodes.values()]
            successes = sum(1 for e in eps if e["success"])
            per_seed = [seed_row(r) for r in seeds]
            rates = seed_spread([p["success_rate"] for p in per_seed])
            scores = seed_spread([p["mean_score"] for p in per_seed])
            policies = list(dict.fromkeys(r.policy for r in seeds))
            row = {
                "run": label,
                "files": [r.path for r in seeds],
                "policy": policies[0] if len(policies) == 1 else f"{len(policies)} models",
                "split": split,
                "seeds": len(seeds),
                "n": len(eps),
                "successes": successes,
                "success_rate": successes / len(eps) if eps else 0.0,
                "mean_score": sum(e["score"] for e in eps) / len(eps) if eps else 0.0,
                "seed_success": {"mean": rates.mean, "sd": rates.sd, "min": rates.low, "max": rates.high},
                "seed_score": {"mean": scores.mean, "sd": scores.sd, "min": scores.low, "max": scores.high},
                "per_seed": per_seed,
            }
            if len(seeds) == 1:  # one run: its Wilson interval, as in a comparison of single runs
                row.update(rate_fields(successes, len(eps)))
            if first is None:
                first = seeds
            else:
                row["vs_first"] = seeded_test(
                    first, seeds, seed=seed, alpha=alpha, resamples=resamples, files_of=files_of
                )
            rows.append(row)
        splits[split] = rows
    return {
        "env": env,
        "alpha": alpha,
        "resamples": resamples,
        "seed": seed,
        "seeded": True,
        "success_test": SEEDED_TEST,
        "splits": splits,
    }


def seed_row(run: Run) -> dict:
    """One seed's run inside a method's row: its file, model, eval seed, rate with its own Wilson interval."""
    eps = list(run.episodes.values())
    successes = sum(1 for e in eps if e["success"])
    meta = (eps[0].get("meta") or {}) if eps else {}
    return {
        "file": run.path,
        "policy": run.policy,
        "eval_seed": meta.get("seed"),
        "n": len(eps),
        "successes": successes,
        **rate_fields(successes, len(eps)),
        "mean_score": sum(e["score"] for e in eps) / len(eps) if eps else 0.0,
    }


def seeded_test(
    first: list[Run],
    other: list[Run],
    *,
    seed: int,
    alpha: float,
    resamples: int,
    files_of: dict[str, list[str]] | None = None,
) -> dict:
    runs = first + other
    common = [t for t in first[0].episodes if all(t in r.episodes for r in runs)]
    s_first, s_other = len(first), len(other)
    diffs, successes, rate_diffs, scores_a, scores_b = [], [], [], [], []
    for t in common:
        k_first = sum(1 for r in first if r.episodes[t]["success"])
        k_other = sum(1 for r in other if r.episodes[t]["success"])
        successes.append((k_first, k_other))
        diffs.append(s_first * k_other - s_other * k_first)
        rate_diffs.append(k_other / s_other - k_first / s_first)
        scores_a.append(sum(r.episodes[t]["score"] for r in first) / s_first)
        scores_b.append(sum(r.episodes[t]["score"] for r in other) / s_other)
    n = len(common)
    equal = s_first == s_other
    p = sign_flip_exact(diffs) if equal else within_task_permutation_exact(successes, s_first, s_other)
    boot = paired_bootstrap(scores_a, scores_b, resamples=resamples, seed=seed)
    out = {
        "first": first[0].label,
        "paired_n": n,
        "seeds_first": s_first,
        "seeds_this": s_other,
        "tasks_better": sum(1 for d in diffs if d > 0),
        "tasks_worse": sum(1 for d in diffs if d < 0),
        "success_diff": sum(rate_diffs) / n if n else 0.0,
        "success_test": SEEDED_TEST if equal else UNEQUAL_SEEDS_TEST,
        "success_p": p,
        "success_verdict": verdict(sum(diffs), p, alpha, n),
        "score_diff": boot.mean_diff,
        "score_ci_low": boot.ci_low,
        "score_ci_high": boot.ci_high,
        "bootstrap_p": boot.p_value,
        "score_verdict": bootstrap_verdict(boot.mean_diff, boot.p_value, alpha, n),
        "bootstrap_min_pairs": bootstrap_min_pairs(alpha),
    }
    by_seed = seed_level(first, other, common, files_of or {}, seed=seed, alpha=alpha, resamples=resamples)
    if by_seed:
        out["seed_level"] = by_seed
    return out


def seed_level(
    first: list[Run],
    other: list[Run],
    common: list[str],
    files_of: dict[str, list[str]],
    *,
    seed: int,
    alpha: float,
    resamples: int,
) -> dict | None:
    """The test over seeds: file i of `other`'s method against file i of `first`'s (the position in NAME=FILES is the
    seed: the recipes' seed s trains both methods from seed s's expert data), over the tasks `common` to all runs.
    Per pair the difference in success rate; how many are above 0 and below; a hierarchical bootstrap of their mean
    (seeds, then tasks, each task's two outcomes together: eexp.stats.hierarchical_bootstrap), with its 95% interval
    and p; and the exact sign-flip test over the pairs, whose smallest p over S seeds that differ is 2 / 2^S: with
    log2(2 / alpha) or fewer of them (5 or fewer at alpha 0.05) no seed-level claim can be made, and the verdict
    says so. With fewer pairs than eexp.stats.bootstrap_min_pairs (10 at alpha 0.05) the bootstrap's interval and p
    are kept but marked as no claim (bootstrap_enough false).

    And the power over these seeds (seed_power): the standard deviation of the per-seed differences, the smallest
    mean difference detectable at `alpha` (two-sided) with POWER at these seeds, and the seeds a mean difference of
    the observed size would need, from that standard deviation and the paired t-test's textbook approximation
    (eexp.stats.detectable_difference, on exact t quantiles). The exact sign-flip test the verdict comes from has
    about the t-test's power from 8 seeds on, and less with fewer (at 6 seeds, where p < 0.05 needs all six to agree,
    it reaches 80% power only at about 1.25 times the t-test's difference, for normal differences): so with fewer
    seeds than it needs to reach p < alpha at all, nothing is detectable (detectable_diff null), and no number of
    seeds below that count is given.

    None where there is no seed level: fewer than two files on a side, or the two methods have different numbers of
    files (file i of one is then not the seed of file i of the other)."""
    mine, reference = files_of.get(other[0].label, []), files_of.get(first[0].label, [])
    if len(mine) != len(reference) or len(mine) < 2 or not common:
        return None
    at = {reference.index(r.path): r for r in first}
    pairs = [(at[mine.index(r.path)], r) for r in other if mine.index(r.path) in at]
    if len(pairs) < 2:  # a split only one seed of both holds
        return None
    diffs = [
        [int(bool(b.episodes[t]["success"])) - int(bool(a.episodes[t]["success"])) for t in common] for a, b in pairs
    ]
    counts = [sum(d) for d in diffs]  # per seed, successes of this method minus the first's on the same tasks
    n = len(common)
    boot = hierarchical_bootstrap(diffs, resamples=resamples, seed=seed)
    p = sign_flip_exact(counts)
    smallest = min(1.0, 2 / 2 ** sum(1 for c in counts if c))
    return {
        "pairing": "position",
        "seeds": len(pairs),
        "files": [[a.path, b.path] for a, b in pairs],
        "paired_n": n,
        "diffs": [c / n for c in counts],
        "above": sum(1 for c in counts if c > 0),
        "below": sum(1 for c in counts if c < 0),
        "mean_diff": boot.mean_diff,
        "ci_low": boot.ci_low,
        "ci_high": boot.ci_high,
        "bootstrap_p": boot.p_value,
        "resamples": resamples,
        "bootstrap_enough": len(pairs) >= bootstrap_min_pairs(alpha),
        "sign_flip_p": p,
        "smallest_p": smallest,
        "enough_seeds": smallest < alpha,
        "verdict": verdict(sum(counts), p, alpha, n) if smallest < alpha else TOO_FEW_SEEDS,
        **seed_power(counts, n, alpha),
    }


def seed_power(counts: list[int], n: int, alpha: float) -> dict:
    """The power of the test over seeds, from the per-seed differences in successes over `n` tasks (seed_level says
    how): `sd` the sample standard deviation of the success-rate differences, `detectable_diff` the smallest mean
    difference detected with POWER at these seeds (null where the sign-flip test's floor 2 / 2^S is not below alpha:
    no difference is; or where the sd is 0), `seeds_for_observed` the seeds a mean difference of the observed size
    would need (at least the sign-flip test's own minimum; null for a mean of 0)."""
    s = len(counts)
    spread = seed_spread([c / n for c in counts])
    # the mean from the whole counts: seeds that cancel out (-11, +7, +6, -2 ...) are a mean of exactly 0, where the
    # mean of their rounded rates is 1e-18 or so, which "would need" read as 10^35 seeds
    mean = sum(counts) / (n * s)
    floor = seeds_needed(alpha)
    # the design's: what these many seeds detect (a tied seed lowers this data's own floor, which the text gives);
    # none where every seed's difference is the same (sd 0: the approximation says nothing then)
    detectable = s >= floor and spread.sd > 0
    return {
        "alpha": alpha,
        "power": POWER,
        "power_method": "paired t approximation",
        "sd": spread.sd,
        "detectable_diff": detectable_difference(spread.sd, s, alpha=alpha, power=POWER) if detectable else None,
        "seeds_for_observed": seeds_for_power(mean, spread.sd, alpha=alpha, power=POWER, at_least=floor),
    }


def paired_test(first: Run, run: Run, *, seed: int, alpha: float, resamples: int) -> dict:
    common = [t for t in first.episodes if t in run.episodes]
    a = [first.episodes[t] for t in common]
    b = [run.episodes[t] for t in common]
    only_first = sum(1 for x, y in zip(a, b) if x["success"] and not y["success"])
    only_this = sum(1 for x, y in zip(a, b) if y["success"] and not x["success"])
    p = mcnemar_exact(only_first, only_this)
    n = len(common)
    boot = paired_bootstrap([x["score"] for x in a], [y["score"] for y in b], resamples=resamples, seed=seed)
    return {
        "first": first.label,
        "paired_n": n,
        "only_first": only_first,
        "only_this": only_this,
        "success_diff": (sum(y["success"] for y in b) - sum(x["success"] for x in a)) / n if n else 0.0,
        "mcnemar_p": p,
        "success_verdict": verdict(only_this - only_first, p, alpha, n),
        "score_diff": boot.mean_diff,
        "score_ci_low": boot.ci_low,
        "score_ci_high": boot.ci_high,
        "bootstrap_p": boot.p_value,
        "score_verdict": bootstrap_verdict(boot.mean_diff, boot.p_value, alpha, n),
        "bootstrap_min_pairs": bootstrap_min_pairs(alpha),
    }


def bootstrap_verdict(diff: float, p: float, alpha: float, n: int) -> str:
    """A paired bootstrap's verdict over n pairs: TOO_FEW_PAIRS below eexp.stats.bootstrap_min_pairs(alpha) (one pair
    resamples to itself: an interval of width 0 and "p < 0.0002"), else verdict's."""
    if 0 < n < bootstrap_min_pairs(alpha):
        return TOO_FEW_PAIRS
    return verdict(diff, p, alpha, n)


def verdict(diff: float, p: float, alpha: float, n: int) -> str:
    if n == 0:
        return "no common tasks"
    if p < alpha and diff > 0:
        return "better"
    if p < alpha and diff < 0:
        return "worse"
    return "no significant difference"


def format_comparison(result: dict) -> str:
    if result.get("seeded"):
        return format_seeded(result)
    out = []
    for split, rows in result["splits"].items():
        out.append(
            f"{result['env']} {split}: success with 95% Wilson intervals; each run against the first over "
            f"the tasks both ran (exact McNemar on success, paired bootstrap on score, alpha "
            f"{result['alpha']})"
        )
        w_run = max(len("run"), *(len(r["run"]) for r in rows))
        w_pol = max(len("policy"), *(len(r["policy"]) for r in rows))
        out.append(
            f"  {'run':<{w_run}}  {'policy':<{w_pol}}  {'n':>5}  {'success':>7}  {'95% CI':<16}  {'score':>6}  vs first"
        )
        for r in rows:
            ci = f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]"
            vs = "(reference)"
            t = r.get("vs_first")
            if t:
                vs = (
                    f"{t['paired_n']} paired: success {100 * t['success_diff']:+.1f} pts "
                    f"(McNemar p={t['mcnemar_p']:.3g}, {held(t['success_verdict'])}); "
                    f"{score_text(t, result['resamples'], 'tasks')}"
                )
            out.append(
                f"  {r['run']:<{w_run}}  {r['policy']:<{w_pol}}  {r['n']:>5}  {pct(r['success_rate']):>7}  "
                f"{ci:<16}  {r['mean_score']:6.3f}  {vs}"
            )
        if len(rows) > 1:
            out.append(f"  {ONE_RUN_NOTE}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


HELD = "for these runs"
# under a table of single runs (one file per name)
ONE_RUN_NOTE = (
    f'one training run per name: these tests pair tasks and hold the runs fixed ("{HELD}"): they say '
    f"these two runs differ on tasks like these, not that the method would on another training run (give "
    f"each method's seeds, NAME=FILE,FILE,..., for a test over seeds)"
)
# under a table of seeds where a test over tasks x seeds says better or worse, and no too_few_note says this already
TASKS_HELD_NOTE = (
    f'"{HELD}": the tests over tasks x seeds hold these training runs fixed: they say these runs '
    f"differ on tasks like these, not that the method wins on another seed (that is the test over "
    f"seeds)"
)


def held(v: str) -> str:
    """A test over tasks' verdict as the table prints it: better or worse only with HELD beside it."""
    return f"{v} {HELD}" if v in ("better", "worse") else v


def score_text(t: dict, resamples: int, units: str) -> str:
    """The score against the first over tasks: the mean difference with its paired bootstrap interval, p and
    verdict, or with fewer than t's bootstrap_min_pairs tasks the mean and "too few" (no interval, no p)."""
    if t["score_verdict"] == TOO_FEW_PAIRS:
        return (
            f"score {t['score_diff']:+.3f} ({t['paired_n']} {units if t['paired_n'] != 1 else units[:-1]}: too "
            f"few for a bootstrap, which needs {t['bootstrap_min_pairs']})"
        )
    return (
        f"score {t['score_diff']:+.3f} [{t['score_ci_low']:+.3f}, {t['score_ci_high']:+.3f}] "
        f"(bootstrap {p_text(t['bootstrap_p'], resamples)}, {held(t['score_verdict'])})"
    )


def format_seeded(result: dict) -> str:
    """The table of a comparison with seeds: per method the pooled success, the seeds' min-max and sd, then the test
    against the first over seeds (where there is one: seed_level) before the test over tasks x seeds."""
    out = []
    for split, rows in result["splits"].items():
        by_seed = [(r.get("vs_first") or {}).get("seed_level") for r in rows]
        seed_cells = (
            [
                seed_text(s, result["resamples"]) if s else "(reference)" if not r.get("vs_first") else "-"
                for r, s in zip(rows, by_seed)
            ]
            if any(by_seed)
            else None
        )
        if seed_cells:
            out.append(
                f"{result['env']} {split}: success pooled over seeds, with the seeds' range and sd (a single "
                f"run: its 95% Wilson interval); each method against the first over seeds, file i against "
                f"file i (per-seed differences, hierarchical bootstrap over seeds then tasks, exact sign-flip "
                f"test over seeds), then over tasks x seeds (exact sign-flip test on per-task successes summed "
                f"over seeds, paired bootstrap over tasks on score), alpha {result['alpha']}"
            )
        else:
            out.append(
                f"{result['env']} {split}: success pooled over seeds, with the seeds' range and sd (a single "
                f"run: its 95% Wilson interval); each method against the first over tasks x seeds (exact "
                f"sign-flip test on per-task successes summed over seeds, paired bootstrap over tasks on score, "
                f"alpha {result['alpha']})"
            )
        w_run = max(len("run"), *(len(r["run"]) for r in rows))
        w_pol = max(len("policy"), *(len(r["policy"]) for r in rows))
        head = "vs first over seeds"
        w_seed = max(len(head), *(len(c) for c in seed_cells)) if seed_cells else 0
        out.append(
            f"  {'run':<{w_run}}  {'policy':<{w_pol}}  {'seeds':>5}  {'n':>5}  {'success':>7}  "
            f"{'seeds min-max / 95% CI':<24}  {'sd':>5}  {'score':>6}  "
            + (f"{head:<{w_seed}}  vs first over tasks x seeds" if seed_cells else "vs first")
        )
        for i, r in enumerate(rows):
            s = r["seed_success"]
            if r.get("seeds", 1) > 1:
                spread, sd = f"{pct(s['min'])} - {pct(s['max'])}", f"{100 * s['sd']:5.1f}"
            else:
                spread, sd = f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]", "    -"
            vs = "(reference)" if not seed_cells else ""
            t = r.get("vs_first")
            if t:
                vs = (
                    f"{t['paired_n']} tasks x {t['seeds_first']}|{t['seeds_this']} seeds: success "
                    f"{100 * t['success_diff']:+.1f} pts ({t['tasks_better']} tasks better, {t['tasks_worse']} "
                    f"worse; {t.get('success_test', SEEDED_TEST)} p={t['success_p']:.3g}, "
                    f"{held(t['success_verdict'])}); "
                    f"{score_text(t, result['resamples'], 'tasks')}"
                )
            if seed_cells:
                vs = f"{seed_cells[i]:<{w_seed}}  {vs}"
            out.append(
                f"  {r['run']:<{w_run}}  {r['policy']:<{w_pol}}  {r['seeds']:>5}  {r['n']:>5}  "
                f"{pct(r['success_rate']):>7}  {spread:<24}  {sd:>5}  {r['mean_score']:6.3f}  {vs}".rstrip()
            )
        few = [s["seeds"] for s in by_seed if s and not s["enough_seeds"]]
        if few:
            out.append(f"  {TOO_FEW_SEEDS}: {too_few_note(result['alpha'], few)}")
        elif any(
            held(r["vs_first"][k]) != r["vs_first"][k]
            for r in rows
            if r.get("vs_first")
            for k in ("success_verdict", "score_verdict")
        ):
            out.append(f"  {TASKS_HELD_NOTE}")
        if any(by_seed):
            out.append(f"  {POWER_NOTE}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


POWER_NOTE = (
    f'over seeds, "cannot be told from zero": a smaller mean difference is detected with less than '
    f"{POWER:.0%} power at these seeds (two-sided, at alpha), from the sd of the per-seed differences by the "
    f"paired t-test's approximation (t quantiles); the exact sign-flip test has about that power from 8 "
    f'seeds on and less with fewer (at 6, about {POWER:.0%} only at 1.25 times it). "would need": the '
    f"seeds a mean difference of the observed size needs for {POWER:.0%} power, if the sd stays"
)


def seed_text(s: dict, resamples: int) -> str:
    """One method against the first over seeds, in a line: each seed's difference (beyond MAX_LISTED_SEEDS seeds
    their sd), how many are above, the mean with its hierarchical bootstrap interval and p (with too few seeds for a
    bootstrap claim, the mean alone), the sign-flip test over seeds with its floor and verdict, and the power over
    these seeds (seed_power): the smallest detectable difference, and the seeds the observed mean would need."""
    if s["seeds"] > MAX_LISTED_SEEDS:
        diffs = f"{s['seeds']} seed differences, sd {100 * s['sd']:.1f} pts"
    else:
        diffs = ", ".join(f"{100 * d:+.1f}" for d in s["diffs"]) + " pts"
    mean = f"mean {100 * s['mean_diff']:+.1f}"
    if s.get("bootstrap_enough", True):
        mean += (
            f" [{100 * s['ci_low']:+.1f}, {100 * s['ci_high']:+.1f}] (hierarchical bootstrap "
            f"{p_text(floored(s['bootstrap_p'], resamples), resamples)}; "
        )
    else:
        mean += f" (no bootstrap claim under {bootstrap_min_pairs(s.get('alpha', 0.05))} seeds; "
    return (
        f"{diffs}: {s['above']}/{s['seeds']} seeds above; {mean}sign-flip over seeds p={s['sign_flip_p']:.3g}, "
        f"{s['verdict']}){power_text(s)}"
    )


def power_text(s: dict) -> str:
    """`; with S seeds (sign-flip floor P), differences under X pts cannot be told from zero (sd D); +Y pts would
    need N seeds`, from seed_power (empty for a seed level computed without it). The floor is the smallest p the
    sign-flip test over seeds can give, 2 / 2^S' over the S' seeds that differ (S' < S where some are tied)."""
    if "detectable_diff" not in s:
        return ""
    tied = s["seeds"] - s["above"] - s["below"]  # a seed with no difference drops out of the sign-flip test
    seeds = f"with {s['seeds']} seeds ({f'{tied} tied, ' if tied else ''}sign-flip floor {s['smallest_p']:.3g})"
    if s["detectable_diff"] is None and s["sd"] == 0 and s["smallest_p"] < s.get("alpha", 0.05):
        out = f"; {seeds}, every seed differs by the same: no power can be estimated from their sd (0)"
    elif s["detectable_diff"] is None:
        out = f"; {seeds} no difference can be told from zero"
    else:
        out = (
            f"; {seeds}, differences under {100 * s['detectable_diff']:.1f} pts cannot be told from zero (sd "
            f"{100 * s['sd']:.1f})"
        )
    need = s["seeds_for_observed"]
    if need is None:
        return out + "; no number of seeds detects a mean of 0"
    return out + f"; {100 * s['mean_diff']:+.1f} pts would need {need} seeds"


def floored(p: float, resamples: int) -> float:
    """A hierarchical bootstrap p at its floor (1 / resamples: no resample crossed 0) as 0, which p_text prints as
    `p < 2 / resamples`."""
    return 0.0 if p <= 1 / resamples else p


def seeds_needed(alpha: float) -> int:
    """The fewest seeds whose exact sign-flip test can reach p < alpha: its smallest p over S seeds is 2 / 2^S."""
    seeds = 1
    while 2 / 2**seeds >= alpha:
        seeds += 1
    return seeds


def too_few_note(alpha: float, seeds: list[int], units: str = "tasks") -> str:
    """Why a seed-level claim needs more seeds, under a table whose rows of `seeds` seeds have too few; `units` are
    what the test beside it pairs (eval's tasks, world-model-eval's transitions)."""
    smallest = ", ".join(f"{2 / 2**n:g} with {n} seeds" for n in sorted(set(seeds)))
    return (
        f"over S seeds that differ, the exact sign-flip test over seeds cannot give p below 2 / 2^S ({smallest}); "
        f"p < {alpha:g} takes {seeds_needed(alpha)}. The hierarchical bootstrap can only resample the seeds "
        f"there are: with few, its interval is too narrow and its p too small. The test over {units} x seeds "
        f"holds these training runs fixed: it says these runs differ on {units} like these, not that the method "
        f"wins on another seed."
    )


def p_text(p: float, resamples: int) -> str:
    """`p = 0.031`, or `p < 0.0002` for a bootstrap p of 0 with 10,000 resamples. No resample crossed zero: the p is
    not 0, but below the least p a crossing gives, twice one resample's share (2 / resamples)."""
    return f"p < {2 / resamples:g}" if p == 0 else f"p = {p:.3g}"


def plot_comparison(result: dict, path: str) -> None:
    """Success rate with its interval per run, grouped by split, as a PNG (matplotlib, Agg: no display needed); with a
    test over seeds (seed_level), a second panel under it: each seed's difference from the first run, and their
    mean with its hierarchical bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(result["splits"])
    labels = list(dict.fromkeys(r["run"] for rows in result["splits"].values() for r in rows))
    width = 0.8 / max(1, len(labels))
    size = max(5.0, 1.6 * len(splits) * max(1, len(labels)) ** 0.5 + 2.5)
    seeded = bool(result.get("seeded"))
    by_seed = {
        (split, r["run"]): r["vs_first"]["seed_level"]
        for split, rows in result["splits"].items()
        for r in rows
        if "seed_level" in (r.get("vs_first") or {})
    }
    if by_seed:
        fig, (ax, dx) = plt.subplots(2, 1, figsize=(size, 7.0), sharex=True, gridspec_kw={"height_ratios": [4, 3]})
    else:
        fig, ax = plt.subplots(figsize=(size, 4.0))
    dots_labelled = False
    for i, label in enumerate(labels):
        xs, ys, lo, hi, ns, dots = [], [], [], [], [], []
        for j, split in enumerate(splits):
            for r in result["splits"][split]:
                if r["run"] == label:
                    x = j - 0.4 + width * (i + 0.5)
                    xs.append(x)
                    ys.append(100 * r["success_rate"])
                    if seeded and r.get("seeds", 1) > 1:  # the seeds' range as the whisker, each seed a dot
                        s = r["seed_success"]
                        lo.append(100 * (r["success_rate"] - s["min"]))
                        hi.append(100 * (s["max"] - r["success_rate"]))
                        dots += [(x, 100 * p["success_rate"]) for p in r["per_seed"]]
                        ns.append(f"{r['seeds']} seeds")
                    else:
                        lo.append(100 * (r["success_rate"] - r["ci_low"]))
                        hi.append(100 * (r["ci_high"] - r["success_rate"]))
                        ns.append(f"n={r['n']}")
        policy = next(r["policy"] for rows in result["splits"].values() for r in rows if r["run"] == label)
        color = f"C{i}"  # the same colour for a method in both panels
        ax.bar(
            xs,
            ys,
            width * 0.9,
            yerr=[lo, hi],
            capsize=4,
            alpha=0.85,
            color=color,
            label=label if policy in (label, "") else f"{label} ({policy})",
        )
        for j, split in enumerate(splits):
            s = by_seed.get((split, label))
            if not s:
                continue
            x, mean = j - 0.4 + width * (i + 0.5), 100 * s["mean_diff"]
            dx.scatter([x] * len(s["diffs"]), [100 * d for d in s["diffs"]], s=14, color="black", zorder=3)
            dx.errorbar(
                [x],
                [mean],
                yerr=[[mean - 100 * s["ci_low"]], [100 * s["ci_high"] - mean]],
                fmt="D",
                color=color,
                capsize=4,
                markersize=5,
            )
            dx.annotate(
                f"{s['above']}/{s['seeds']}",
                (x, 100 * max(s["ci_high"], *s["diffs"])),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize="x-small",
            )
        if dots:
            ax.scatter(
                [d[0] for d in dots],
                [d[1] for d in dots],
                s=14,
                color="black",
                zorder=3,
                label=None if dots_labelled else "one seed",
            )
            dots_labelled = True
        for x, y, h, n in zip(xs, ys, hi, ns):
            ax.annotate(
                f"{y:.0f}%\n{n}",
                (x, min(y + h, 100)),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize="x-small",
            )
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylim(0, 112)
    ax.set_ylabel(
        "success rate (%), 95% Wilson interval"
        if not seeded
        else "success rate (%), pooled over seeds\nwhisker: the seeds' min-max (one run: 95% Wilson)"
    )
    ax.set_title(f"{result['env']}: success per run and split")
    if by_seed:
        reference = next(
            r["vs_first"]["first"]
            for rows in result["splits"].values()
            for r in rows
            if "seed_level" in (r.get("vs_first") or {})
        )
        dx.axhline(0, color="grey", linewidth=0.8)
        dx.margins(y=0.15)  # room for the k/S labels above the highest interval
        dx.set_xticks(range(len(splits)), splits)
        dx.set_ylabel(f"success minus {reference}'s\nof the same seed (points)")
        dx.set_title(
            f"against {reference} over seeds: a dot per seed; the mean with its 95% interval (bootstrap "
            f"over seeds and tasks); k/S: seeds above {reference}",
            fontsize="small",
        )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    drawn = io.BytesIO()
    fig.savefig(drawn, format=plot_format(path), dpi=120)
    plt.close(fig)
    write_atomic(path, drawn.getvalue())


def plot_format(path: str) -> str:
    """The image format --plot PATH asks for, by its extension; UsageProblem for one matplotlib cannot write (asked
    before the comparison is made). ImportError without matplotlib."""
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in formats:
        raise UsageProblem(
            f"--plot {path}: {'no extension' if not ext else f'.{ext} is no image format matplotlib writes'} "
            f"(give one of: {', '.join(sorted(formats))})"
        )
    return ext
