"""world-model-eval --compare: prediction files side by side, each model against the first over the prediction ids
both have, with eval --compare's tests. A model that copies the state against one that says nothing, on outcomes
whose next states are known; hand-written prediction records whose exact matches and F1 are known give the exact
rates, differences and p-values; pooled NAME=A,B groups; the seed-level test with three files a side; failed
requests and unpaired ids counted; bad input FILE:LINE and exit 1, word for word; the same output for the same
inputs and seed."""

from __future__ import annotations

import json

import orjson
import pytest
from click.testing import CliRunner
from test_world_model_eval import KITCHEN, Copier, outcomes_file  # noqa: F401 (a fixture)

import eexp.cli.world_model
from eexp.cli import cli
from eexp.policies.base import Policy, Reply
from eexp.stages.world_model_compare import TEST_FIELDS
from eexp.stages.world_model_eval import token_f1
from eexp.stats import mcnemar_exact, sign_flip_exact, wilson, within_task_permutation_exact

IDS = 20


def prediction(
    i: int,
    exact: bool,
    f1: float | None = None,
    *,
    env: str = "shop",
    model: str = "m",
    failed: bool = False,
    labelled: bool = True,
    target: str = "the next page",
) -> dict:
    """A prediction record as world-model-eval writes one, with the scores given (failed: a request that failed)."""
    f1 = (1.0 if exact else 0.0) if f1 is None else f1
    return {
        "id": f"wmeval:{env}:t{i:02d}#0:expert",
        "source_id": f"{env}:t{i:02d}#0",
        "trajectory_id": f"t{i:02d}",
        "step": 0,
        "env": {"name": env, "version": "1"},
        "task": {"id": f"t{i:02d}", "split": "test", "goal": "g"},
        "action": "click",
        "action_source": "expert",
        "alternative": -1,
        "prompt_sha256": "0" * 64,
        "prediction": target if exact else "",
        "labelled": labelled,
        "finish_reason": "error: the server did not answer" if failed else "stop",
        "target": target,
        "scores": None if failed else {"exact": exact, "f1": f1, "changed": True, "valid": None},
        "effect": {"changed": True, "predicted_changed": True, "valid": None, "predicted_valid": None, "done": False},
        "meta": {"stage": "world-model-eval", "model": model, "scorer": 1, "env": env},
    }


def write(path, records: list[dict]) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


def exact_on(path, hits: set[int], n: int = IDS, model: str = "m") -> str:
    """A file of n predictions, exact (F1 1) on the ids in `hits`, F1 0 elsewhere."""
    return write(path, [prediction(i, i in hits, model=model) for i in range(n)])


def compare(*args: str, summary=None) -> tuple[int, str, str, dict | None]:
    extra = ["--summary", str(summary)] if summary else []
    result = CliRunner().invoke(cli, ["world-model-eval", "--compare", *args, *extra])
    return (
        result.exit_code,
        result.stdout,
        result.stderr,
        json.loads(summary.read_text()) if summary and result.exit_code == 0 else None,
    )


class Silent(Policy):
    """A "model" that says nothing: every prediction empty, unlabelled."""

    name = "silent"

    def generate(self, messages, *, seed, temperature, top_p=1.0, max_tokens=256):
        return Reply(text="", action=None, finish_reason="stop")


def predictions_of(model, outcomes, out, monkeypatch) -> str:
    monkeypatch.setattr(eexp.cli.world_model, "load_policy", lambda *a, **k: model)
    result = CliRunner().invoke(cli, ["world-model-eval", "--policy", "m.gguf", str(outcomes), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return str(out)


# --- known scores ---------------------------------------------------------------------------------------------


def test_a_copy_against_silence_on_known_outcomes(outcomes_file, tmp_path, monkeypatch):  # noqa: F811
    copy = predictions_of(Copier(), outcomes_file, tmp_path / "copy.jsonl", monkeypatch)
    silent = predictions_of(Silent(), outcomes_file, tmp_path / "silent.jsonl", monkeypatch)
    code, out, err, result = compare(copy, silent, summary=tmp_path / "cmp.json")
    assert code == 0, err
    alf, tw = result["envs"]["alfworld"], result["envs"]["textworld"]
    # alfworld: the copy is exact where the state did not change (1 of 3: "look"); F1 of the copy as
    # test_world_model_eval computes it; silence is exact nowhere, F1 0, and never in the Observation: format
    copy_f1 = (5 / 11 + 1 + token_f1(KITCHEN, "Nothing happens.")) / 3
    c, s = alf
    assert (c["run"], s["run"]) == ("copy", "silent") and (c["model"], s["model"]) == ("copier", "silent")
    assert (c["n"], c["exact_match"]["k"], c["labelled"]["rate"], s["exact_match"]["k"], s["labelled"]["k"]) == (
        3,
        1,
        1.0,
        0,
        0,
    )
    assert (c["exact_match"]["ci_low"], c["exact_match"]["ci_high"]) == wilson(1, 3)
    assert c["f1"]["mean"] == pytest.approx(copy_f1, abs=1e-6) and s["f1"]["mean"] == 0.0
    t = s["vs_first"]
    assert (t["first"], t["paired_n"], t["only_first"], t["only_this"]) == ("copy", 3, 1, 0)
    assert t["exact_diff"] == pytest.approx(-1 / 3) and t["mcnemar_p"] == 1.0
    assert t["f1_diff"] == pytest.approx(-copy_f1, abs=1e-6) and t["f1_ci_high"] < 0
    assert t["left_out"] == {"first": 0, "this": 0}
    assert (tw[0]["exact_match"]["k"], tw[1]["vs_first"]["paired_n"]) == (1, 2)
    assert out.startswith("alfworld: exact match with 95% Wilson intervals")
    assert "\ntextworld: " in out and "3 paired: exact -33.3 pts (McNemar p=1, no significant difference)" in out


def test_hand_written_scores_give_the_exact_rates_and_tests(tmp_path):
    # a: exact on 0-3, F1 0.5 elsewhere; b: exact on 0-11, F1 0.25 elsewhere; 2 of b's requests failed (18, 19)
    a = write(tmp_path / "a.jsonl", [prediction(i, i < 4, 1.0 if i < 4 else 0.5) for i in range(IDS)])
    b = write(
        tmp_path / "b.jsonl",
        [prediction(i, i < 12, 1.0 if i < 12 else 0.25, failed=i >= 18, labelled=i % 2 == 0) for i in range(IDS)],
    )
    code, out, err, result = compare(a, b, summary=tmp_path / "cmp.json")
    assert code == 0, err
    first, second = result["envs"]["shop"]
    assert (first["n"], first["failed"], first["exact_match"]["rate"], first["f1"]["mean"]) == (
        20,
        0,
        0.2,
        pytest.approx((4 + 16 * 0.5) / 20),
    )
    assert (second["predictions"], second["n"], second["failed"], second["exact_match"]["k"]) == (20, 18, 2, 12)
    assert second["labelled"]["k"] == 9 and second["f1"]["mean"] == pytest.approx((12 + 6 * 0.25) / 18)
    t = second["vs_first"]
    # over the 18 ids both scored: b alone exact on 4-11 (8), a alone on none
    assert (t["paired_n"], t["only_first"], t["only_this"]) == (18, 0, 8)
    assert t["exact_diff"] == pytest.approx(8 / 18) and t["mcnemar_p"] == mcnemar_exact(0, 8) == 2 / 2**8
    assert t["exact_verdict"] == "better"
    # F1 per id: 0-3 equal, 4-11 +0.5, 12-17 -0.25
    assert t["f1_diff"] == pytest.approx((8 * 0.5 - 6 * 0.25) / 18) and t["f1_verdict"] in (
        "better",
        "no significant difference",
    )
    assert t["left_out"] == {"first": 2, "this": 0}
    assert set(TEST_FIELDS.values()) & set(t) == {
        "exact_diff",
        "exact_verdict",
        "f1_diff",
        "f1_ci_low",
        "f1_ci_high",
        "f1_bootstrap_p",
        "f1_verdict",
    }
    assert (
        "  b: 2 of a's scored predictions and 0 of its own have no counterpart in every file of both; left out "
        "of its tests (18 paired)\n" in out
    )


def test_the_table_word_for_word(tmp_path):
    a = exact_on(tmp_path / "a.jsonl", set(range(5)), model="IL")
    b = exact_on(tmp_path / "b.jsonl", set(range(15)), model="IWM")
    code, out, err, _ = compare(f"IL={a}", f"IWM={b}")
    assert code == 0, err
    assert out.splitlines() == [
        "shop: exact match with 95% Wilson intervals, mean token F1 with 95% bootstrap intervals; each model against "
        "the first over the transitions both predicted (exact McNemar on exact match, paired bootstrap on F1, alpha "
        "0.05)",
        "  run  model      n  failed   exact  95% CI               F1  95% CI            labelled  vs first",
        "  IL   IL        20       0   25.0%  [11.2%, 46.9%]    0.250  [0.100, 0.450]      100.0%  (reference)",
        "  IWM  IWM       20       0   75.0%  [53.1%, 88.8%]    0.750  [0.550, 0.900]      100.0%  20 paired: exact "
        "+50.0 pts (McNemar p=0.00195, better); F1 +0.500 [+0.300, +0.700] (bootstrap p < 0.0002, better)",
    ]


# --- seeds -------------------------------------------------------------------------------------------------------


def test_pooled_names_are_one_row(tmp_path):
    a0 = exact_on(tmp_path / "a0.jsonl", set(range(4)))
    a1 = exact_on(tmp_path / "a1.jsonl", set(range(8)))
    b = exact_on(tmp_path / "b.jsonl", set(range(10)))
    code, out, err, result = compare(f"A={a0},{a1}", b, summary=tmp_path / "cmp.json")
    assert code == 0, err
    pooled, single = result["envs"]["shop"]
    assert (pooled["run"], pooled["seeds"], pooled["n"], pooled["exact_match"]["k"]) == ("A", 2, 40, 12)
    assert [p["exact_match"]["k"] for p in pooled["per_seed"]] == [4, 8]
    assert (pooled["seed_exact"]["min"], pooled["seed_exact"]["max"]) == (0.2, 0.4)
    t = single["vs_first"]
    # per id, 2 x b's exact - 1 x A's summed: ids 0-3 0, 4-7 +1, 8-9 +2: 6 better; two seeds against one: the
    # within-task permutation test, exactly (ids 0-3: A 2 of 2, b 1 of 1; 4-7: 1 and 1; 8-9: 0 and 1; the rest 0)
    assert (t["exact_test"], t["seeds_first"], t["seeds_this"], t["transitions_better"], t["transitions_worse"]) == (
        "within-task permutation",
        2,
        1,
        6,
        0,
    )
    expected = within_task_permutation_exact([(2, 1)] * 4 + [(1, 1)] * 4 + [(0, 1)] * 2 + [(0, 0)] * (IDS - 10), 2, 1)
    assert t["exact_p"] == expected and "seed_level" not in t
    assert t["exact_diff"] == pytest.approx(0.5 - 0.3)
    assert out.splitlines()[1:3] == [
        "  run  model  seeds      n  failed   exact  seeds min-max / 95% CI     F1  seeds min-max / 95% CI  labelled  "
        "vs first",
        "  A    m          2     40       0   30.0%  20.0% - 40.0%           0.300  0.200 - 0.400             100.0%  "
        "(reference)",
    ]


def test_seed_level_with_three_files_a_side(tmp_path):
    ref = [set(range(5)), set(range(6)), set(range(4))]
    other = [set(range(10)), set(range(8)), set(range(12))]
    refs = ",".join(exact_on(tmp_path / f"r{s}.jsonl", hits) for s, hits in enumerate(ref))
    others = ",".join(exact_on(tmp_path / f"o{s}.jsonl", hits) for s, hits in enumerate(other))
    code, out, err, result = compare(f"R={refs}", f"O={others}", summary=tmp_path / "cmp.json")
    assert code == 0, err
    t = result["envs"]["shop"][1]["vs_first"]
    s = t["seed_level"]
    # file i against file i: (10 - 5) / 20, (8 - 6) / 20, (12 - 4) / 20
    assert s["diffs"] == [0.25, 0.1, 0.4] and (s["seeds"], s["above"], s["below"]) == (3, 3, 0)
    assert s["mean_diff"] == pytest.approx(0.25) and s["ci_low"] <= 0.25 <= s["ci_high"]
    assert (s["sign_flip_p"], s["smallest_p"], s["enough_seeds"], s["verdict"]) == (
        0.25,
        0.25,
        False,
        "too few seeds for a seed-level claim",
    )
    # over transitions x seeds: per id 3 x (O's exact count - R's): ids 4..11 give 3, 6, 9, 9, 6, 6, 3, 3
    assert (t["transitions_better"], t["transitions_worse"], t["exact_diff"]) == (8, 0, pytest.approx(0.25))
    assert t["exact_p"] == sign_flip_exact([3, 6, 9, 9, 6, 6, 3, 3]) == 2 / 2**8
    assert "+25.0, +10.0, +40.0 pts: 3/3 seeds above; mean +25.0" in out
    assert "20 transitions x 3|3 seeds: exact +25.0 pts (8 better, 0 worse; sign-flip p=0.00781, better)" in out
    assert (
        "The test over transitions x seeds holds these training runs fixed: it says these runs differ on "
        "transitions like these" in out
    )


# --- errors and determinism ---------------------------------------------------------------------------------------


def test_errors_word_for_word(tmp_path):
    a = exact_on(tmp_path / "a.jsonl", {0})
    other = write(tmp_path / "other.jsonl", [prediction(i, True) for i in range(IDS, IDS + 3)])
    code, _, err, _ = compare(a, other)
    assert (code, err) == (
        1,
        "Error: other and a share no shop prediction id: they predicted other outcome records "
        "(give every model the same outcomes)\n",
    )
    code, _, err, _ = compare(f"A={a},{a}", "B=" + other)
    assert (code, err) == (1, f"Error: {a}: given twice for 'A': one file is one run (one seed)\n")
    bad = tmp_path / "bad.jsonl"
    episode = {
        "id": "e",
        "task": {"id": "t", "split": "test", "goal": "g"},
        "policy": "p",
        "actions": [],
        "observations": [],
        "success": True,
        "score": 1.0,
        "steps": 0,
        "invalid_actions": 0,
        "stop_reason": "done",
    }
    cases = [
        ([prediction(0, True), episode], ":2: expected a world-model prediction, got an episode"),
        (
            [prediction(0, True), {**prediction(1, True), "scores": {"exact": 1, "f1": 1.0}}],
            ":2: scores.exact: expected a boolean, got a number",
        ),
        (
            [{**prediction(0, True), "scores": {"exact": True, "f1": 2}}],
            ":1: scores.f1: expected a number from 0 to 1, got 2",
        ),
        (
            [prediction(0, True), prediction(0, False)],
            ":2: prediction 'wmeval:shop:t00#0:expert' appears twice: one "
            "file holds one run's predictions (put runs of other seeds in separate files: NAME=A.jsonl,B.jsonl)",
        ),
        (
            [prediction(1, True), prediction(0, True, target="a clipped page")],
            f":2: prediction "
            f"'wmeval:shop:t00#0:expert' has another target than in {a}: the two were scored against other outcome "
            f"records or another --max-chars (compare predictions of the same outcomes)",
        ),
        (
            [{**prediction(0, True), "meta": {"model": "m", "scorer": 2}}],
            f":1: a prediction scored by scorer version "
            f"2, but {a} holds predictions scored by version 1: score both with one eexp (world-model-eval again) to "
            f"compare them",
        ),
        ([prediction(0, False, failed=True)], ": every shop prediction failed (its request): nothing to compare"),
    ]
    for records, message in cases:
        write(bad, records)
        code, out, err, _ = compare(a, str(bad))
        assert (code, out, err) == (1, "", f"Error: {bad}{message}\n")
    write(bad, [prediction(0, True), episode, prediction(1, True)])
    code, out, err, _ = compare(a, str(bad), "--on-error", "skip")
    assert code == 0 and err == f"eexp: skipping {bad}:2: expected a world-model prediction, got an episode\n"
    assert "\n  bad  m          2       0" in out and "2 paired" in out


def test_usage_errors(tmp_path):
    a = exact_on(tmp_path / "a.jsonl", {0})
    for args, message in (
        (["--policy", "m.gguf", a], "--compare reads prediction files; it takes no --policy"),
        (["--max-chars", "40", a], "--compare reads prediction files; it takes no --max-chars"),
        (["--history", "1", a], "--compare reads prediction files; it takes no --history"),
        (["--resume", "-o", str(tmp_path / "t.txt"), a], "it takes no --resume"),
        ([], "--compare needs the prediction files to compare"),
    ):
        code, _, err, _ = compare(*args)
        assert code == 2 and message in err, err


def test_same_inputs_and_seed_same_output(tmp_path):
    a = exact_on(tmp_path / "a.jsonl", set(range(5)))
    b = write(tmp_path / "b.jsonl", [prediction(i, i < 9, 1.0 if i < 9 else i / 40) for i in range(IDS)])
    runs = [compare(a, b, "--seed", seed, summary=tmp_path / f"{n}.json") for n, seed in enumerate(("3", "3", "4"))]
    assert runs[0][1:] == runs[1][1:]
    assert (
        runs[0][3]["envs"]["shop"][1]["vs_first"]["f1_ci_low"] != runs[2][3]["envs"]["shop"][1]["vs_first"]["f1_ci_low"]
    )
    table = tmp_path / "table.txt"
    assert compare(a, b, "--seed", "3", "-o", str(table))[0] == 0 and table.read_text() == runs[0][1]
