"""eval --compare with seeds: NAME=FILE,FILE,... pools one method's runs; per-method mean and spread across seeds,
the exact sign-flip test over tasks x seeds (hand-computed here), the plot, and single runs compared as before."""

from __future__ import annotations

import json
import math
import random

import pytest
from click.testing import CliRunner

from eexp.cli import cli
from eexp.stages.evaluate.compare import Run, compare_runs, format_comparison
from eexp.stats import holm, mcnemar_exact, seed_spread, sign_flip_exact, wilson


def test_sign_flip_hand_computed():
    # diffs 2, 1, -1, 0, 2: the zero drops out; |T_obs| = |2 + 1 - 1 + 2| = 4 over the 2^4 = 16 sign patterns of
    # (2, 1, 1, 2). The two 2s give -4, 0, 0, +4 (counts 1, 2, 1), the two 1s give -2, 0, 0, +2 (1, 2, 1).
    # |T| >= 4: +4 with 0 or +2 (1 * 2 + 1 * 1 = 3 patterns), and the mirror image (3): p = 6 / 16 = 0.375
    assert sign_flip_exact([2, 1, -1, 0, 2]) == pytest.approx(0.375, abs=1e-15)
    # 3, 3, 3: only all-plus and all-minus reach |T| = 9: 2 / 8
    assert sign_flip_exact([3, 3, 3]) == pytest.approx(0.25, abs=1e-15)
    # 3, 1: the sums are 4, 2, -2, -4; |T| >= 4 for 2 of 4
    assert sign_flip_exact([3, -1, 0]) == pytest.approx(1.0) and sign_flip_exact([3, 1]) == pytest.approx(0.5)
    assert sign_flip_exact([]) == 1.0 and sign_flip_exact([0, 0]) == 1.0
    # a scale does not change it (unequal seed counts multiply the differences)
    assert sign_flip_exact([4, 2, -2, 0, 4]) == sign_flip_exact([2, 1, -1, 0, 2])


def test_holm_hand_computed():
    # 0.01, 0.04, 0.03: sorted, times 3, 2, 1: 0.03, 0.06, 0.04; the last may not fall below the one before: 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # the demo's three primary tests at 20 seeds (docs/results/demo.md): 0.0061, 0.80, 0.0061 -> 0.0183, 0.80, 0.0183
    # (the tie: the second 0.0061 times 2 is raised to the first's 0.0183)
    assert holm([0.0061, 0.80, 0.0061]) == pytest.approx([0.0183, 0.80, 0.0183])
    # capped at 1; one test is left as it is; none is an empty family
    assert holm([0.6, 0.5]) == [1.0, 1.0] and holm([0.2]) == [0.2] and holm([]) == []


def test_with_one_seed_each_it_is_exactly_mcnemar():
    rng = random.Random(0)
    for _ in range(100):
        b, c, ties = rng.randint(0, 15), rng.randint(0, 15), rng.randint(0, 5)
        diffs = [-1] * b + [1] * c + [0] * ties
        rng.shuffle(diffs)
        assert sign_flip_exact(diffs) == pytest.approx(mcnemar_exact(b, c), abs=1e-12), (b, c)


def test_seed_spread_hand_computed():
    s = seed_spread([0.2, 0.3, 0.4])
    # mean 0.3; sample variance ((-0.1)^2 + 0 + 0.1^2) / (3 - 1) = 0.01, sd 0.1
    assert (s.n, s.mean, s.sd, s.low, s.high) == (3, pytest.approx(0.3), pytest.approx(0.1), 0.2, 0.4)
    one = seed_spread([0.25])
    assert (one.mean, one.sd, one.low, one.high) == (0.25, 0.0, 0.25, 0.25)


def run(label, wins, seed_file, n=6, split="test"):
    eps = {
        f"t{i}": {
            "task": {"id": f"t{i}", "split": split, "goal": "g"},
            "success": i in wins,
            "score": 1.0 if i in wins else 0.0,
            "meta": {"seed": 0},
        }
        for i in range(n)
    }
    return Run(label, seed_file, split, label, eps)


def test_seeded_comparison_hand_computed():
    # Six tasks, two seeds per method.  A: seed 0 wins {0, 1}, seed 1 wins {0};  B: seed 0 wins {0..3}, seed 1 {1..4}.
    # Successes per task, summed over seeds: A = 2 1 0 0 0 0, B = 1 2 2 2 1 0; B - A = -1 +1 +2 +2 +1 0 (the test
    # gets 2 * that, S_A * k_B - S_B * k_A: the same p). Nonzero |d| = 1 1 2 2 1, 2^5 = 32 sign patterns, T_obs = 5.
    # The three 1s give -3 -1 +1 +3 (counts 1 3 3 1), the two 2s give -4 0 +4 (1 2 1). T >= 5: 3 + 4 = 7 (1 * 1)
    # and 1 + 4 = 5 (3 * 1): 4 patterns; T <= -5 likewise: p = 8 / 32 = 0.25.
    # (McNemar on the (task, seed) pairs, seed i with seed i, would say b = 1, c = 6, p = 2 * 8 / 128 = 0.125: it
    # counts task 2 and task 3, won twice by B, as two independent pairs each.)
    runs = [run("A", {0, 1}, "A0"), run("A", {0}, "A1"), run("B", {0, 1, 2, 3}, "B0"), run("B", {1, 2, 3, 4}, "B1")]
    result = compare_runs("count", runs)
    assert result["seeded"] and result["success_test"] == "sign-flip"
    a, b = result["splits"]["test"]
    assert (a["run"], a["seeds"], a["n"], a["successes"], a["files"]) == ("A", 2, 12, 3, ["A0", "A1"])
    assert a["success_rate"] == pytest.approx(3 / 12)
    # per-seed rates 2/6 and 1/6: mean 1/4, sd = sqrt(2 * (1/12)^2 / 1) = sqrt(2) / 12
    assert a["seed_success"] == {
        "mean": pytest.approx(0.25),
        "sd": pytest.approx(math.sqrt(2) / 12),
        "min": pytest.approx(1 / 6),
        "max": pytest.approx(2 / 6),
    }
    assert [p["success_rate"] for p in a["per_seed"]] == [pytest.approx(2 / 6), pytest.approx(1 / 6)]
    assert a["per_seed"][0]["ci_low"] == pytest.approx(wilson(2, 6)[0])
    assert "ci_low" not in a and "vs_first" not in a  # several seeds: their spread, not a pooled interval
    assert b["seed_success"]["sd"] == 0.0 and b["seed_success"]["min"] == b["seed_success"]["max"] == pytest.approx(
        4 / 6
    )
    t = b["vs_first"]
    assert (t["paired_n"], t["seeds_first"], t["seeds_this"], t["tasks_better"], t["tasks_worse"]) == (6, 2, 2, 4, 1)
    assert t["success_p"] == pytest.approx(0.25) and t["success_verdict"] == "no significant difference"
    assert t["success_diff"] == pytest.approx((8 - 3) / 12)  # mean over tasks of kB/2 - kA/2
    assert t["score_diff"] == pytest.approx(5 / 12)  # scores are the successes here
    table = format_comparison(result)
    assert "sign-flip p=0.25" in table and "16.7% -  33.3%" in table and "6 tasks x 2|2 seeds" in table


def test_seeds_with_one_run_methods_and_unequal_counts():
    # C has one run: its row keeps the Wilson interval, and against a one-run reference the test is McNemar's
    ref = run("R", {0}, "R0", n=10)
    c = run("C", set(range(1, 9)), "C0", n=10)
    d = [
        run("D", set(range(0, 10)), "D0", n=10),
        run("D", set(range(1, 10)), "D1", n=10),
        run("D", set(range(2, 10)), "D2", n=10),
    ]
    result = compare_runs("count", [ref, c, *d])
    rows = {r["run"]: r for r in result["splits"]["test"]}
    assert rows["C"]["ci_low"] == pytest.approx(wilson(8, 10)[0])
    assert rows["C"]["vs_first"]["success_p"] == pytest.approx(mcnemar_exact(1, 8))
    # D (3 seeds) against R (1 seed): unequal seeds, the within-task permutation test. Per task 1 * k_D - 3 * k_R:
    # task 0 (k_R 1, k_D 1) -2, task 1 (0, 2) +2, tasks 2-9 (0, 3) +3 each: T_obs = 24. Under the null a task's 4
    # runs are relabelled: tasks 0 and 1 (2 successes) give -2 or +2 evenly, tasks 2-9 (3 successes) +3 with
    # probability 1/4 (R's run is the failure) and -1 with 3/4. T >= 24 takes all eight +3 and tasks 0-1 not both -2
    # (3/4 * 4^-8), or seven +3 and both +2 (8 * 3/4 * 4^-7 * 1/4); T <= -24 cannot happen: 27 / 4^9
    t = rows["D"]["vs_first"]
    assert (t["seeds_first"], t["seeds_this"]) == (1, 3)
    assert t["success_p"] == pytest.approx(27 / 4**9) and t["success_verdict"] == "better"
    assert t["success_test"] == "within-task permutation"


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def episode_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    files = {}
    for name, policy, seed in [
        ("oracle", "oracle", 0),
        ("rand-s0", "random", 0),
        ("rand-s1", "random", 1),
        ("rand-s2", "random", 2),
    ]:
        files[name] = d / f"{name}.jsonl"
        result = invoke(
            ["eval", "--policy", policy, "--env", "shop", "-n", "12", "--seed", str(seed), "-q", "-o", str(files[name])]
        )
        assert result.exit_code == 0, result.output
    return d, files


def test_cli_seeds_by_name_and_glob(episode_files):
    d, files = episode_files
    listed = ",".join(str(files[f"rand-s{i}"]) for i in range(3))
    summary, png = d / "cmp.json", d / "cmp.png"
    result = invoke(
        [
            "eval",
            "--compare",
            f"oracle={files['oracle']}",
            f"random={listed}",
            "--summary",
            str(summary),
            "--plot",
            str(png),
        ]
    )
    assert result.exit_code == 0, result.output
    comparison = json.loads(summary.read_text())
    oracle, rand = comparison["splits"]["test"]
    assert (oracle["run"], oracle["seeds"], rand["run"], rand["seeds"]) == ("oracle", 1, "random", 3)
    assert [p["eval_seed"] for p in rand["per_seed"]] == [0, 1, 2]
    rates = [p["success_rate"] for p in rand["per_seed"]]
    assert rand["seed_success"]["min"] == min(rates) and rand["seed_success"]["max"] == max(rates)
    assert rand["n"] == 36 and rand["vs_first"]["paired_n"] == 12
    assert "sign-flip" in result.stdout and "random" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a quoted glob (expanded by eexp, sorted), or the label repeated, are the same comparison
    again = d / "again.json"
    assert (
        invoke(
            ["eval", "--compare", f"oracle={files['oracle']}", f"random={d}/rand-s*.jsonl", "--summary", str(again)]
        ).exit_code
        == 0
    )
    repeated = d / "repeated.json"
    assert (
        invoke(
            [
                "eval",
                "--compare",
                f"oracle={files['oracle']}",
                f"random={files['rand-s0']}",
                f"random={files['rand-s1']},{files['rand-s2']}",
                "--summary",
                str(repeated),
            ]
        ).exit_code
        == 0
    )
    for other in (again, repeated):
        assert json.loads(other.read_text())["splits"] == comparison["splits"]


def test_cli_single_runs_compare_as_before(episode_files):
    d, files = episode_files
    result = invoke(["eval", "--compare", str(files["oracle"]), str(files["rand-s0"])])
    assert result.exit_code == 0 and "McNemar" in result.stdout and "sign-flip" not in result.stdout
    # a label on single runs only names them: with the files' own names, the very same table
    named = invoke(["eval", "--compare", f"oracle={files['oracle']}", f"rand-s0={files['rand-s0']}"])
    assert named.exit_code == 0 and named.stdout == result.stdout


def test_cli_seed_errors(episode_files):
    d, files = episode_files
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", "--compare", f"random={d}/nothing-*.jsonl"])
    assert result.exit_code == 1 and "no file matches" in result.output
    result = runner.invoke(cli, ["eval", "--compare", f"R={files['rand-s0']},{files['rand-s0']}"])
    assert result.exit_code == 1 and "given twice" in result.output
    result = runner.invoke(cli, ["eval", "--compare", f"oracle={files['rand-s0']}", str(files["oracle"])])
    assert result.exit_code == 1 and "NAME=" in result.output
    for malformed in ("A=", "=x"):  # an argument written wrong, not a file: a usage error (exit 2)
        result = runner.invoke(cli, ["eval", "--compare", malformed, str(files["oracle"])])
        assert (result.exit_code, result.output) == (
            2,
            f"Error: {malformed!r}: expected a file or NAME=FILE[,FILE...] (the runs of one method, one per seed)\n",
        )
    result = runner.invoke(cli, ["eval", "--compare", f"R={d}/missing.jsonl"])
    assert result.exit_code == 1 and result.output.startswith("Error:") and len(result.output.splitlines()) == 1


def test_the_test_over_tasks_with_unequal_seeds_is_the_exact_within_task_permutation():
    """With unequal numbers of seeds the summed difference is not symmetric about 0 under the null, so the sign-flip
    test's p was too small (in a simulated null, 1 seed against 9 at a 5% success rate: 14% of p below 0.05). The
    within-task permutation test is checked here against every relabelling of the runs, enumerated."""
    import itertools
    import math

    from eexp.stats import within_task_permutation_exact

    s_first, s_other = 1, 3
    tasks = [(1, 0), (0, 2), (0, 3), (0, 1), (1, 3)]  # (first's successes of 1 run, other's of 3)
    observed = sum(s_first * ko - s_other * kf for kf, ko in tasks)
    # brute force: each task's 4 runs (its successes among them) relabelled in every way, tasks independent
    per_task = []
    for kf, ko in tasks:
        runs = [1] * (kf + ko) + [0] * (s_first + s_other - kf - ko)
        stats = []
        for chosen in itertools.combinations(range(len(runs)), s_first):
            first = sum(runs[i] for i in chosen)
            stats.append(s_first * (sum(runs) - first) - s_other * first)
        per_task.append(stats)
    hits = sum(1 for combo in itertools.product(*per_task) if abs(sum(combo)) >= abs(observed))
    expected = hits / math.prod(len(stats) for stats in per_task)
    assert within_task_permutation_exact(tasks, s_first, s_other) == pytest.approx(expected, abs=1e-15)
    # tasks every run failed or won carry no information
    assert within_task_permutation_exact([*tasks, (0, 0), (1, 3)], s_first, s_other) == pytest.approx(expected)
    assert 0 < expected < 1


def test_a_null_with_one_seed_against_nine_keeps_its_level():
    """Simulated null (every run draws the same task success rates): the share of p below 0.05 stays at most 5%."""
    import random

    from eexp.stats import within_task_permutation_exact

    rng = random.Random(0)
    below = 0
    trials = 300
    for _ in range(trials):
        tasks = []
        for _ in range(40):
            rate = 0.05
            tasks.append((int(rng.random() < rate), sum(rng.random() < rate for _ in range(9))))
        below += within_task_permutation_exact(tasks, 1, 9) < 0.05
    assert below / trials <= 0.05


def test_sign_flip_refuses_fractions():
    with pytest.raises(ValueError, match="whole differences"):
        sign_flip_exact([0.5, 0.5, 0.5])
