"""eval --compare's power over seeds and its limits on small inputs (issues 61 and 65): the smallest per-seed mean
difference the test over seeds can detect and the seeds an observed difference would need, checked against the
textbook formula with t quantiles from a printed table; no bootstrap claim on fewer pairs than
eexp.stats.bootstrap_min_pairs; the per-seed column summarised beyond a dozen seeds; and single runs compared with
the caveat that their test over tasks holds the runs fixed."""

from __future__ import annotations

import json
import math
import re

import orjson
import pytest
from click.testing import CliRunner

from eexp.cli import cli
from eexp.stages.evaluate.compare import MAX_LISTED_SEEDS, TOO_FEW_PAIRS, Run, compare_runs, format_comparison
from eexp.stats import bootstrap_min_pairs, detectable_difference, seeds_for_power, t_quantile, t_within

TASKS = 200

# Student's t quantiles as a printed table gives them (3 decimals): (df, p) -> t
T_TABLE = {
    (1, 0.975): 12.706,
    (1, 0.8): 1.376,
    (2, 0.975): 4.303,
    (5, 0.975): 2.571,
    (5, 0.8): 0.920,
    (10, 0.975): 2.228,
    (10, 0.8): 0.879,
    (16, 0.975): 2.120,
    (16, 0.8): 0.865,
    (17, 0.975): 2.110,
    (17, 0.8): 0.863,
    (29, 0.975): 2.045,
    (120, 0.975): 1.980,
}


def episode(task: int, success: bool) -> dict:
    return {
        "id": f"e{task}",
        "task": {"id": f"t{task:03d}", "split": "test", "goal": "g"},
        "policy": "p",
        "actions": [],
        "observations": ["o"],
        "success": success,
        "score": float(success),
        "steps": 0,
        "invalid_actions": 0,
        "stop_reason": "done",
        "meta": {"env": "count", "split": "test", "seed": 0},
    }


def write(path, wins: set[int], n: int = TASKS) -> str:
    path.write_bytes(b"".join(orjson.dumps(episode(t, t in wins)) + b"\n" for t in range(n)))
    return str(path)


def compare(tmp_path, *inputs: str) -> tuple[dict, str]:
    summary = tmp_path / "cmp.json"
    result = CliRunner().invoke(cli, ["eval", "--compare", *inputs, "--summary", str(summary)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(summary.read_text()), result.stdout


def seeds(tmp_path, name: str, wins: list[set[int]], n: int = TASKS) -> str:
    return f"{name}=" + ",".join(write(tmp_path / f"{name}-s{s}.jsonl", w, n) for s, w in enumerate(wins))


# --- the quantiles and the formula ------------------------------------------------------------------------------------


def test_t_quantiles_match_the_printed_table():
    for (df, p), t in T_TABLE.items():
        assert t_quantile(p, df) == pytest.approx(t, abs=5e-4), (df, p)
        assert t_quantile(1 - p, df) == -t_quantile(p, df)
    # closed forms: df 1 is Cauchy, tan(pi (p - 1/2)); df 2: t = (2p - 1) sqrt(2 / (1 - (2p - 1)^2))
    assert t_quantile(0.9, 1) == pytest.approx(math.tan(math.pi * 0.4), rel=1e-12)
    q = 2 * 0.95 - 1
    assert t_quantile(0.95, 2) == pytest.approx(q * math.sqrt(2 / (1 - q * q)), rel=1e-12)
    assert t_within(0.0, 7) == 0.0 and t_within(50.0, 3) == pytest.approx(1.0, abs=1e-4)
    # far past the exact range the quantile is the normal's, corrected: 1.96 at df 10^6
    assert t_quantile(0.975, 10**6) == pytest.approx(1.959966, abs=1e-6)


def test_against_scipy_where_it_is_installed():
    stats = pytest.importorskip("scipy.stats")  # not a dependency: a check where a machine has it
    for df in (1, 2, 3, 5, 8, 19, 199, 4000, 4001, 10**5):
        for p in (0.6, 0.8, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9), (df, p)


def test_detectable_difference_is_the_textbook_formula():
    # 6 seeds whose differences are +1, +3, ..., +11 pts: mean 6, sd sqrt((25 + 9 + 1 + 1 + 9 + 25) / 5) = sqrt(14).
    # The paired t-test at 5% (two-sided) has 80% power from (t(.975, 5) + t(.80, 5)) sd / sqrt(6)
    sd = math.sqrt(14)
    textbook = (T_TABLE[5, 0.975] + T_TABLE[5, 0.8]) * sd / math.sqrt(6)
    assert detectable_difference(sd, 6) == pytest.approx(textbook, rel=5e-4)  # the table rounds each t to 3 decimals
    assert detectable_difference(sd, 6) == pytest.approx(5.331, abs=1e-3)
    # a larger alpha or a smaller power lowers it; more seeds lower it as 1 / sqrt(n) for large n
    assert detectable_difference(sd, 6, alpha=0.1) < detectable_difference(sd, 6)
    assert detectable_difference(sd, 6, power=0.5) < detectable_difference(sd, 6)
    big = detectable_difference(1.0, 10**4)
    assert big == pytest.approx((1.959964 + 0.841621) / 100, rel=1e-3)
    with pytest.raises(ValueError):
        detectable_difference(1.0, 1)


def test_seeds_for_power_is_the_fewest_that_detect_it():
    # mean 5.17 pts, sd 7.26 (the demo's IWM - IL@IWM): 17 seeds detect only 5.25, 18 seeds 5.09 (table values)
    sd, diff = 7.257, 31 / 6
    at = {n: (T_TABLE[n - 1, 0.975] + T_TABLE[n - 1, 0.8]) * sd / math.sqrt(n) for n in (17, 18)}
    assert at[17] > diff > at[18]
    assert seeds_for_power(diff, sd) == 18 and seeds_for_power(-diff, sd) == 18
    assert seeds_for_power(0.0, sd) is None
    # no spread: the fewest allowed (2, or the sign-flip test's own minimum where given)
    assert seeds_for_power(0.05, 0.0) == 2 and seeds_for_power(0.05, 0.0, at_least=6) == 6
    # a tiny difference: the normal formula's count, ((1.96 + 0.84) sd / diff)^2, give or take the t correction
    assert seeds_for_power(0.001, 0.1) == pytest.approx(((1.959964 + 0.841621) * 100) ** 2, rel=1e-3)


def test_bootstrap_min_pairs():
    # P(|T(n-1)| > 1.96 sqrt((n-1)/n)): the percentile bootstrap's error for a true null of normal differences is
    # over 2 x 5% at 9 pairs (t(8) beyond 1.848: 0.1016), at most that at 10 (t(9) beyond 1.859: 0.0959)
    assert bootstrap_min_pairs(0.05) == 10
    assert 1 - t_within(1.959964 * math.sqrt(8 / 9), 8) > 0.1 >= 1 - t_within(1.959964 * math.sqrt(9 / 10), 9)
    assert bootstrap_min_pairs(0.01) > 10 > bootstrap_min_pairs(0.1)


# --- the test over seeds, through the command -------------------------------------------------------------------------

IL = set(range(20))


def shifted(counts: list[int]) -> list[set[int]]:
    """Seed s solves IL's 20 tasks moved by counts[s] tasks: a difference of counts[s] / 200."""
    return [set(range(20 + c)) for c in counts]


def test_six_seeds_say_what_they_cannot_tell(tmp_path):
    # the demo's IWM against IL@IWM: -1.5, +3.0, +9.0, +17.0, -2.5, +6.0 pts (4 of 6 above; sign-flip p = 10/64)
    counts = [-3, 6, 18, 34, -5, 12]
    result, table = compare(tmp_path, seeds(tmp_path, "IL", [IL] * 6), seeds(tmp_path, "IWM", shifted(counts)))
    s = result["splits"]["test"][1]["vs_first"]["seed_level"]
    diffs = [c / TASKS for c in counts]
    mean = sum(diffs) / 6
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 5)
    assert s["sign_flip_p"] == pytest.approx(10 / 64) and s["verdict"] == "no significant difference"
    assert (s["power"], s["sd"]) == (0.8, pytest.approx(sd))
    assert s["detectable_diff"] == pytest.approx(
        (T_TABLE[5, 0.975] + T_TABLE[5, 0.8]) * sd / math.sqrt(6), rel=5e-4
    )  # the table rounds each t to 3 decimals
    assert s["seeds_for_observed"] == 18
    # the words a results page can quote, beside the verdict, and the sign-flip test's floor
    assert (
        "sign-flip over seeds p=0.156, no significant difference); with 6 seeds (sign-flip floor 0.0312), "
        "differences under 10.3 pts cannot be told from zero (sd 7.3); +5.2 pts would need 18 seeds"
    ) in table
    # 6 seeds are too few for the hierarchical bootstrap's claim: its mean, without an interval or p
    assert not s["bootstrap_enough"] and "mean +5.2 (no bootstrap claim under 10 seeds; sign-flip" in table
    assert "hierarchical bootstrap p" not in table


def test_too_few_seeds_detect_nothing(tmp_path):
    result, table = compare(tmp_path, seeds(tmp_path, "IL", [IL] * 3), seeds(tmp_path, "M", shifted([10, 20, 30])))
    s = result["splits"]["test"][1]["vs_first"]["seed_level"]
    # 3 seeds: the sign-flip test cannot go below 2 / 2^3 = 0.25, so no difference is detectable at 0.05; with
    # differences of exactly 5, 10, 15 pts (sd 5) a mean of +10 needs 6 seeds, the sign-flip test's own minimum
    assert s["detectable_diff"] is None and s["sd"] == pytest.approx(0.05) and s["seeds_for_observed"] == 6
    assert (
        "p=0.25, too few seeds for a seed-level claim); with 3 seeds (sign-flip floor 0.25) no difference can "
        "be told from zero; +10.0 pts would need 6 seeds"
    ) in table
    assert "cannot give p below 2 / 2^S (0.25 with 3 seeds)" in table  # the floor's note stays


def test_seeds_that_cancel_out_have_a_mean_of_zero(tmp_path):
    # ALFWorld's 6-seed IL@SR against IL on valid_seen: -11, -2, +1, +7, +6, -1 games of 140. Their rates' float sum
    # is 2.6e-18, not 0, and "would need" read that as 9 x 10^34 seeds; the mean of the whole counts is 0
    counts = [-11, -2, 1, 7, 6, -1]
    result, table = compare(tmp_path, seeds(tmp_path, "IL", [IL] * 6), seeds(tmp_path, "M", shifted(counts)))
    s = result["splits"]["test"][1]["vs_first"]["seed_level"]
    assert s["seeds_for_observed"] is None and s["sd"] > 0
    assert "; no number of seeds detects a mean of 0" in table and not re.search(r"would need \d", table)


def test_many_seeds_are_summarised(tmp_path):
    # 200 seeds of one episode each: the seed column gives the differences' sd and signs, not 200 numbers
    wins = [{0} if s % 5 < 3 else set() for s in range(200)]  # 120 of 200 seeds solve the one task
    result, table = compare(tmp_path, seeds(tmp_path, "A", [set()] * 200, n=1), seeds(tmp_path, "B", wins, n=1))
    s = result["splits"]["test"][1]["vs_first"]["seed_level"]
    assert (s["seeds"], s["above"], s["below"]) == (200, 120, 0) and len(s["diffs"]) == 200  # the JSON keeps all
    assert "200 seed differences, sd 49.1 pts: 120/200 seeds above; mean +60.0" in table
    assert "+100.0, +100.0" not in table and max(len(line) for line in table.splitlines()) < 700
    # and the one task is too few for a bootstrap over tasks
    t = result["splits"]["test"][1]["vs_first"]
    assert t["score_verdict"] == TOO_FEW_PAIRS and "score +0.600 (1 task: too few for a bootstrap" in table


def run(label: str, path: str, wins: set[int], n: int = 50) -> Run:
    return Run(label, path, "test", label, {f"t{t:03d}": episode(t, t in wins) for t in range(n)})


def test_a_dozen_seeds_are_listed_then_summarised():
    def table(n_seeds: int) -> str:
        runs = [run("A", f"A{s}", set()) for s in range(n_seeds)] + [run("B", f"B{s}", {s}) for s in range(n_seeds)]
        return format_comparison(compare_runs("count", runs, resamples=200))

    assert MAX_LISTED_SEEDS == 12
    assert ", ".join(["+2.0"] * 12) + " pts: 12/12 seeds above" in table(12)
    assert "13 seed differences, sd 0.0 pts: 13/13 seeds above" in table(13)


# --- single runs and few tasks ----------------------------------------------------------------------------------------


def test_one_episode_a_run_makes_no_bootstrap_claim(tmp_path):
    a, b = write(tmp_path / "a.jsonl", set(), n=1), write(tmp_path / "b.jsonl", {0}, n=1)
    result, table = compare(tmp_path, a, b)
    t = result["splits"]["test"][1]["vs_first"]
    assert t["score_verdict"] == TOO_FEW_PAIRS and t["bootstrap_min_pairs"] == 10
    assert "score +1.000 (1 task: too few for a bootstrap, which needs 10)" in table
    assert "bootstrap p" not in table and "[+1.000, +1.000]" not in table


def test_nine_tasks_are_too_few_ten_are_enough():
    for n, claim in ((9, False), (10, True)):
        t = compare_runs("count", [run("A", "a", set(), n), run("B", "b", set(range(n)), n)])["splits"]["test"][1]
        assert (t["vs_first"]["score_verdict"] == "better") is claim, n
        assert (t["vs_first"]["score_verdict"] == TOO_FEW_PAIRS) is not claim, n


def test_single_runs_never_say_better_without_the_caveat(tmp_path):
    # 20 tasks: A solves 0-1, B 0-15: McNemar 14 of 14 discordant for B, p = 2 / 2^14, and the bootstrap agrees
    result, table = compare(
        tmp_path, write(tmp_path / "A.jsonl", {0, 1}, 20), write(tmp_path / "B.jsonl", set(range(16)), 20)
    )
    t = result["splits"]["test"][1]["vs_first"]
    assert t["success_verdict"] == "better" and t["score_verdict"] == "better"  # the JSON's verdicts, as before
    assert "McNemar p=0.000122, better for these runs" in table and "better for these runs)" in table
    assert re.findall(r"\b(?:better|worse)\b(?! for these runs)", table) == []
    assert (
        'one training run per name: these tests pair tasks and hold the runs fixed ("for these runs"): they '
        "say these two runs differ on tasks like these, not that the method would on another training run"
    ) in table


def test_seeds_without_a_seed_level_carry_the_caveat_too():
    # 2 seeds against one run: no test over seeds, and the test over tasks x seeds holds the runs fixed
    runs = [run("A", "A0", set()), run("B", "B0", set(range(30))), run("B", "B1", set(range(30)))]
    table = format_comparison(compare_runs("count", runs, resamples=200))
    # one run against two: the within-task permutation test (each task 3 runs, 2 successes: B's both with
    # probability 1/3), p = 3^-30
    assert "within-task permutation p=4.86e-15, better for these runs" in table
    # the counts of tasks beside it are no verdict: "30 tasks better, 0 worse"
    assert re.findall(r"\b(?:better|worse)\b(?! for these runs)", table) == ["better", "worse"]
    assert "the tests over tasks x seeds hold these training runs fixed" in table


def test_a_tied_seed_raises_the_floor_it_states():
    # 6 seeds, one with no difference: the sign-flip test drops it, so its floor is 2 / 2^5 = 0.0625 and no verdict
    # is possible; the detectable difference is still the design's, at 6 seeds
    il = [run("IL", f"IL{s}", set()) for s in range(6)]
    m = [run("M", f"M{s}", set(range(k))) for s, k in enumerate((0, 1, 2, 3, 4, 5))]
    s = compare_runs("count", il + m, resamples=200)["splits"]["test"][1]["vs_first"]["seed_level"]
    assert (s["smallest_p"], s["enough_seeds"]) == (0.0625, False)
    assert s["detectable_diff"] == pytest.approx(detectable_difference(s["sd"], 6))
    assert "with 6 seeds (1 tied, sign-flip floor 0.0625), differences under" in format_comparison(
        compare_runs("count", il + m, resamples=200)
    )
