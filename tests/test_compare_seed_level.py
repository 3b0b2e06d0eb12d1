"""eval --compare over seeds: file i of a method against file i of the reference (the per-seed differences, how many
are above, a hierarchical bootstrap over seeds and tasks, the exact sign-flip test over seeds and when too few seeds
allow no claim), beside the test over tasks x seeds; episode files built so that the two levels disagree."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from eexp.cli import cli
from eexp.stages.evaluate.compare import Run, compare_runs, format_comparison
from eexp.stats import hierarchical_bootstrap, paired_bootstrap, sign_flip_exact

TASKS = 200


def episode(task: int, success: bool, score: float | None = None, split: str = "test", policy: str = "p") -> dict:
    return {
        "id": f"{policy}-{task}",
        "task": {"id": f"t{task:03d}", "split": split, "goal": "g"},
        "policy": policy,
        "actions": [],
        "observations": ["o"],
        "success": success,
        "score": float(success) if score is None else score,
        "steps": 0,
        "invalid_actions": 0,
        "stop_reason": "done",
        "meta": {"env": "count", "split": split, "seed": 0},
    }


def run(label: str, path: str, wins: set[int], n: int = TASKS, score: float | None = None) -> Run:
    return Run(label, path, "test", label, {f"t{t:03d}": episode(t, t in wins, score, policy=label) for t in range(n)})


def write(path, wins: set[int], n: int = TASKS) -> str:
    path.write_bytes(b"".join(orjson.dumps(episode(t, t in wins)) + b"\n" for t in range(n)))
    return str(path)


def compare_files(tmp_path, il: list[set[int]], method: list[set[int]], *extra: str) -> tuple[dict, str]:
    """eval --compare IL=<seed files> M=<seed files>: (the --summary JSON, the table)."""
    il_files = [write(tmp_path / f"IL-s{s}.jsonl", wins) for s, wins in enumerate(il)]
    m_files = [write(tmp_path / f"M-s{s}.jsonl", wins) for s, wins in enumerate(method)]
    summary = tmp_path / "cmp.json"
    result = CliRunner().invoke(
        cli,
        ["eval", "--compare", f"IL={','.join(il_files)}", f"M={','.join(m_files)}", "--summary", str(summary), *extra],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return json.loads(summary.read_text()), result.stdout


# --- the hierarchical bootstrap --------------------------------------------------------------------------------------


def test_bootstrap_resamples_seeds_hand_computed():
    # Two seeds, the same difference on every task within a seed: 0 in seed 0, +1 in seed 1. Drawing tasks changes
    # nothing, so a resample's mean is 0, 0.5 or 1 as the two seeds drawn are {0, 0}, {0, 1} or {1, 1}: with
    # probabilities 1/4, 1/2, 1/4. The 95% interval is then [0, 1]; the means <= 0 are a quarter: p = 2 / 4 = 0.5.
    boot = hierarchical_bootstrap([[0] * 50, [1] * 50], resamples=10000, seed=3)
    assert (boot.mean_diff, boot.ci_low, boot.ci_high) == (0.5, 0.0, 1.0)
    # 2 x Binomial(10000, 1/4) / 10000: sd 0.0087; 0.03 is 3.5 sd
    assert boot.p_value == pytest.approx(0.5, abs=0.03)


def test_bootstrap_within_one_seed_is_the_task_bootstrap():
    # One seed: 60 tasks +1, 40 tasks -1, 300 ties. Mean 0.05, per-task variance 0.25 - 0.05^2 = 0.2475, so the
    # resampled mean has sd sqrt(0.2475 / 400) = 0.0249 and a 95% interval of about 0.05 -+ 1.96 x 0.0249
    diffs = [1] * 60 + [-1] * 40 + [0] * 300
    boot = hierarchical_bootstrap([diffs], resamples=10000, seed=0)
    assert boot.mean_diff == pytest.approx(0.05)
    assert boot.ci_low == pytest.approx(0.05 - 1.96 * 0.02487, abs=0.006)
    assert boot.ci_high == pytest.approx(0.05 + 1.96 * 0.02487, abs=0.006)
    # and the same as the task-level paired bootstrap (plain Python, its own random stream) up to resampling noise
    tasks = paired_bootstrap([0.0] * 400, [float(d) for d in diffs], resamples=10000, seed=0)
    assert (boot.ci_low, boot.ci_high) == (
        pytest.approx(tasks.ci_low, abs=0.0051),
        pytest.approx(tasks.ci_high, abs=0.0051),
    )
    assert boot.p_value == pytest.approx(tasks.p_value, abs=0.02)


def test_copies_of_one_run_add_no_evidence():
    # Every seed ran the same tasks, so one task draw serves all seeds: eight identical seeds give the interval of
    # one (drawing tasks afresh per seed would average a task's difference away and narrow it by sqrt(8))
    rng = np.random.default_rng(7)
    one = rng.choice([-1, 0, 1], p=[0.15, 0.7, 0.15], size=300).tolist()
    single = hierarchical_bootstrap([one], seed=1)
    copies = hierarchical_bootstrap([one] * 8, seed=1)
    width = single.ci_high - single.ci_low
    assert copies.mean_diff == pytest.approx(single.mean_diff)
    assert copies.ci_high - copies.ci_low == pytest.approx(width, rel=0.1)


def test_the_interval_covers_the_true_difference_where_training_varies():
    # 8 seeds, 200 tasks drawn afresh each time; the method's gain is 0.05 on average but varies from seed to seed
    # (sd 0.1: training variance) and tasks differ in difficulty. Over 100 such experiments the 95% interval should
    # hold the true mean gain (0.05) at least about 95% of the time (resampling seeds and tasks both counts the
    # seed x task noise twice: it errs wide). The task-level bootstrap (tasks only, of the per-task mean difference
    # over seeds) cannot see the seeds' spread and misses far more often.
    rng = np.random.default_rng(2024)
    hits = task_hits = 0
    experiments = 100
    for e in range(experiments):
        base = rng.uniform(0.3, 0.6, size=TASKS)
        gains = rng.normal(0.05, 0.1, size=(8, 1))
        il = rng.random((8, TASKS)) < base
        method = rng.random((8, TASKS)) < np.clip(base + gains, 0, 1)
        diffs = method.astype(int) - il.astype(int)
        boot = hierarchical_bootstrap(diffs.tolist(), resamples=1000, seed=e)
        hits += boot.ci_low <= 0.05 <= boot.ci_high
        tasks_only = hierarchical_bootstrap([diffs.mean(axis=0).tolist()], resamples=1000, seed=e)
        task_hits += tasks_only.ci_low <= 0.05 <= tasks_only.ci_high
    assert hits / experiments >= 0.9
    assert task_hits / experiments <= 0.8


def test_bootstrap_is_deterministic_and_floored():
    diffs = [[1, 0, 1, -1] * 10, [1, 1, 0, 0] * 10, [0, 1, 0, 1] * 10]
    assert hierarchical_bootstrap(diffs, seed=5) == hierarchical_bootstrap(diffs, seed=5)
    assert hierarchical_bootstrap(diffs, seed=5) != hierarchical_bootstrap(diffs, seed=6)
    # no resample reaches 0: p is below 1 / resamples, given as that floor (never 0)
    assert hierarchical_bootstrap([[1] * 10, [1] * 10], resamples=500).p_value == 1 / 500
    assert hierarchical_bootstrap([[0] * 10, [0] * 10]).p_value == 1.0
    with pytest.raises(ValueError, match="same tasks"):
        hierarchical_bootstrap([[1, 0], [1]])


# --- the two levels disagree ------------------------------------------------------------------------------------------

IL_WINS = set(range(20))  # IL solves tasks 0-19 in every seed


def test_tasks_significant_seeds_not(tmp_path):
    # 8 seeds. Seed 0 of M solves 60 more tasks than IL (100-159); seeds 1, 3, 5, 7 one more (160 + s), seeds 2, 4,
    # 6 one fewer (task s). Over tasks x seeds: 64 tasks where M is ahead (+8 each, once per seed pair, summed), 3
    # where it is behind: the sign-flip test over tasks says better, p ~ 1e-15. Over seeds the differences are
    # +60, +1, -1, +1, -1, +1, -1, +1 tasks: |T| >= 61 needs +60 with the seven ones summing >= +1 (64 of 128
    # patterns), and the mirror image: p = 128 / 256 = 0.5. One training run carries the whole gain.
    method = [IL_WINS | set(range(100, 160))] + [IL_WINS | {160 + s} if s % 2 else IL_WINS - {s} for s in range(1, 8)]
    result, table = compare_files(tmp_path, [IL_WINS] * 8, method)
    il, m = result["splits"]["test"]
    t = m["vs_first"]
    assert t["success_p"] < 1e-10 and t["success_verdict"] == "better"
    s = t["seed_level"]
    assert s["diffs"] == [0.3] + [0.005, -0.005] * 3 + [0.005]
    assert (s["seeds"], s["above"], s["below"], s["paired_n"]) == (8, 5, 3, TASKS)
    assert s["sign_flip_p"] == pytest.approx(0.5, abs=1e-15)
    assert s["smallest_p"] == 2 / 2**8 and s["enough_seeds"]
    assert s["verdict"] == "no significant difference"
    # the mean over seeds is the mean over tasks x seeds: 61 tasks of 1600 pairs
    assert s["mean_diff"] == pytest.approx(t["success_diff"]) == pytest.approx(61 / 1600)
    # a third of the resamples leave seed 0 out ((7/8)^8 = 0.34): the interval reaches 0
    assert s["ci_low"] <= 0 < s["ci_high"] and s["bootstrap_p"] > 0.05
    # 8 seeds can support a claim: no "too few seeds" anywhere
    assert "too few seeds" not in table
    assert [pair[1].rsplit("/", 1)[1] for pair in s["files"]] == [f"M-s{i}.jsonl" for i in range(8)]


def test_seeds_significant_tasks_not(tmp_path):
    # 8 seeds, the same in every seed: M solves tasks 0-9 that IL fails and fails tasks 10-19 that IL solves; and
    # seed s of M also solves task 20 + s. Every seed: +10 - 10 + 1 = one task ahead: 8 of 8 seeds above, the exact
    # sign-flip test over seeds p = 2 / 2^8 = 0.0078, better. Over tasks x seeds the per-task sums are +8 (tasks
    # 0-9), -8 (10-19) and +1 (20-27): the twenty 8s dominate, p > 0.5. The seed level says the training runs agree
    # on these tasks; the task level says these tasks are too few and too mixed to say M wins on others; the
    # hierarchical bootstrap resamples both, and its interval holds 0.
    il = [set(range(10, 20))] * 8
    method = [set(range(10)) | {20 + s} for s in range(8)]
    result, table = compare_files(tmp_path, il, method)
    t = result["splits"]["test"][1]["vs_first"]
    assert t["success_p"] > 0.5 and t["success_verdict"] == "no significant difference"
    s = t["seed_level"]
    assert s["diffs"] == [0.005] * 8 and (s["above"], s["below"]) == (8, 0)
    assert s["sign_flip_p"] == pytest.approx(2 / 256, abs=1e-15) and s["verdict"] == "better"
    assert s["ci_low"] < 0 < s["ci_high"] and s["bootstrap_p"] > 0.05
    assert "8/8 seeds above" in table and "sign-flip over seeds p=0.00781, better" in table


def test_three_seeds_cannot_support_a_claim(tmp_path):
    # the demo's shape: M ahead in all 3 seeds (by 20, 10 and 2 tasks); over tasks that is p < 1e-8, but the
    # sign-flip test over 3 seeds cannot go below 2 / 2^3 = 0.25, and the table says so under the rows
    method = [IL_WINS | set(range(100, 100 + k)) for k in (20, 10, 2)]
    result, table = compare_files(tmp_path, [IL_WINS] * 3, method)
    t = result["splits"]["test"][1]["vs_first"]
    assert t["success_verdict"] == "better"
    s = t["seed_level"]
    assert s["diffs"] == [0.1, 0.05, 0.01] and s["above"] == 3
    assert s["sign_flip_p"] == 0.25 and s["smallest_p"] == 0.25 and not s["enough_seeds"]
    assert s["verdict"] == "too few seeds for a seed-level claim"
    assert "+10.0, +5.0, +1.0 pts: 3/3 seeds above" in table
    assert (
        "  too few seeds for a seed-level claim: over S seeds that differ, the exact sign-flip test over seeds "
        "cannot give p below 2 / 2^S (0.25 with 3 seeds); p < 0.05 takes 6." in table
    )


def test_same_input_same_json_and_plot(tmp_path):
    method = [IL_WINS | set(range(100, 100 + k)) for k in (20, 10, 2)]
    first, table = compare_files(tmp_path, [IL_WINS] * 3, method, "--plot", str(tmp_path / "a.png"))
    again, table_again = compare_files(tmp_path, [IL_WINS] * 3, method, "--plot", str(tmp_path / "b.png"))
    assert first == again and table == table_again
    assert first["splits"]["test"][1]["vs_first"]["seed_level"]["ci_low"] > 0
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --seed seeds the bootstraps: another seed, another interval from the same data
    other, _ = compare_files(tmp_path, [IL_WINS] * 3, method, "--seed", "1")
    assert other["splits"]["test"][1]["vs_first"]["seed_level"] != first["splits"]["test"][1]["vs_first"]["seed_level"]


# --- pairing and when there is no seed level -------------------------------------------------------------------------


def test_seeds_are_paired_by_position():
    # IL's seeds solve 10, 20, 30 tasks; M's 15, 20, 25. File i against file i: +5, 0, -5 tasks. Given in another
    # order, M's files pair differently, and the differences follow
    il = [run("IL", f"IL{s}", set(range(k))) for s, k in enumerate((10, 20, 30))]
    m = [run("M", f"M{s}", set(range(k))) for s, k in enumerate((15, 20, 25))]
    s = compare_runs("count", il + m)["splits"]["test"][1]["vs_first"]["seed_level"]
    assert s["diffs"] == [0.025, 0.0, -0.025] and (s["above"], s["below"]) == (1, 1)
    assert s["files"] == [["IL0", "M0"], ["IL1", "M1"], ["IL2", "M2"]]
    assert s["sign_flip_p"] == 1.0 and s["smallest_p"] == 0.5  # a zero difference drops out: 2 seeds differ
    swapped = compare_runs("count", il + m[::-1])["splits"]["test"][1]["vs_first"]["seed_level"]
    assert swapped["diffs"] == [0.075, 0.0, -0.075] and swapped["files"][0] == ["IL0", "M2"]


def test_no_seed_level_with_one_seed_or_unequal_seeds():
    il = [run("IL", f"IL{s}", set(range(10))) for s in range(3)]
    one = run("One", "One0", set(range(30)))
    two = [run("Two", f"Two{s}", set(range(30))) for s in range(2)]
    rows = {r["run"]: r for r in compare_runs("count", il + [one] + two)["splits"]["test"]}
    assert "seed_level" not in rows["One"]["vs_first"] and "seed_level" not in rows["Two"]["vs_first"]
    table = format_comparison(compare_runs("count", il + [one] + two))
    assert "vs first over seeds" not in table and "too few seeds" not in table  # the table as it was


def test_the_table_word_for_word():
    # A: 2 seeds that solve none of 4 tasks (score 0); B: 2 seeds that solve all 4 (score 1); C: one run that solves
    # tasks 0 and 1, score 0 everywhere. B against A over seeds: +100 pts in both seeds, and every resample too:
    # [+100, +100], but 2 seeds are under the 10 a bootstrap claim needs (the mean alone is given); the sign-flip test
    # over 2 seeds: 2 of 4 patterns, p = 0.5 (its floor), too few seeds, so no difference is detectable either; the
    # differences' sd is 0, so +100 would need the sign-flip test's own minimum, 6 seeds. Over tasks: 4 tasks, each
    # +4 (2 x 2 - 2 x 0): 2 of 16 patterns, p = 0.125; 4 tasks are too few for the bootstrap on score. C has one file
    # against A's two: no seed pairing ("-"); per task 2 x k_C - 1 x k_A = 2, 2, 0, 0: p = 2 / 4 = 0.5, and the rate
    # difference is (1 + 1 + 0 + 0) / 4 = +50 pts; its score difference is +0.000 on 4 tasks, again too few for the
    # bootstrap. C's Wilson interval for 2 of 4: center 0.5, half-width 0.350: [15.0%, 85.0%]. No verdict says
    # better or worse, so no "for these runs" note: the too-few-seeds note, then what the power figures mean.
    runs = [
        run("A", "A0", set(), n=4),
        run("A", "A1", set(), n=4),
        run("B", "B0", set(range(4)), n=4),
        run("B", "B1", set(range(4)), n=4),
        run("C", "C0", {0, 1}, n=4, score=0.0),
    ]
    b = (
        "+100.0, +100.0 pts: 2/2 seeds above; mean +100.0 (no bootstrap claim under 10 seeds; sign-flip over seeds "
        "p=0.5, too few seeds for a seed-level claim); with 2 seeds (sign-flip floor 0.5) no difference can be told "
        "from zero; +100.0 pts would need 6 seeds"
    )
    w = len(b)
    assert (
        format_comparison(compare_runs("count", runs))
        == "\n".join(
            [
                "count test: success pooled over seeds, with the seeds' range and sd (a single run: its 95% Wilson "
                "interval); each method against the first over seeds, file i against file i (per-seed differences, "
                "hierarchical bootstrap over seeds then tasks, exact sign-flip test over seeds), then over tasks x "
                "seeds "
                "(exact sign-flip test on per-task successes summed over seeds, paired bootstrap over tasks on score), "
                "alpha 0.05",
                "  run  policy  seeds      n  success  seeds min-max / 95% CI       sd   score  "
                + "vs first over seeds".ljust(w)
                + "  vs first over tasks x seeds",
                "  A    A           2      8     0.0%    0.0% -   0.0%             0.0   0.000  (reference)",
                "  B    B           2      8   100.0%  100.0% - 100.0%             0.0   1.000  "
                + b
                + "  4 tasks x 2|2 "
                "seeds: success +100.0 pts (4 tasks better, 0 worse; sign-flip p=0.125, no significant difference); "
                "score "
                "+1.000 (4 tasks: too few for a bootstrap, which needs 10)",
                "  C    C           1      4    50.0%  [ 15.0%,  85.0%]              -   0.000  "
                + "-".ljust(w)
                + "  4 tasks "
                "x 2|1 seeds: success +50.0 pts (2 tasks better, 0 worse; within-task permutation p=0.111, "
                "no significant difference); "
                "score +0.000 (4 tasks: too few for a bootstrap, which needs 10)",
                "  too few seeds for a seed-level claim: over S seeds that differ, the exact sign-flip test over "
                "seeds cannot "
                "give p below 2 / 2^S (0.5 with 2 seeds); p < 0.05 takes 6. The hierarchical bootstrap can only "
                "resample the "
                "seeds there are: with few, its interval is too narrow and its p too small. The test over tasks x "
                "seeds holds "
                "these training runs fixed: it says these runs differ on tasks like these, not that the method wins on "
                "another seed.",
                '  over seeds, "cannot be told from zero": a smaller mean difference is detected with less than 80% '
                "power "
                "at these seeds (two-sided, at alpha), from the sd of the per-seed differences by the paired t-test's "
                "approximation (t quantiles); the exact sign-flip test has about that power from 8 seeds on and less "
                "with "
                'fewer (at 6, about 80% only at 1.25 times it). "would need": the seeds a mean difference of the '
                "observed "
                "size needs for 80% power, if the sd stays",
            ]
        )
        + "\n"
    )
    assert sign_flip_exact([4, 4, 4, 4]) == 0.125  # the task-level p above, by the test's own count
