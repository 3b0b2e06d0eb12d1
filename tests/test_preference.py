"""preference-data: pairs (state, expert action chosen, executed alternative rejected) from outcome records."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest
from by_hand import OUTCOMES, TRAJ, lines, outcomes, untimed, write

from eexp.cli import cli
from eexp.records import EXAMPLE_META, kind_of, validate
from eexp.stages.preference import PAIR_META


def test_a_pair_per_executed_alternative_with_the_imitation_prompt(runner, tmp_path):
    stats = tmp_path / "s.json"
    result = runner.invoke(cli, ["preference-data", OUTCOMES, "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    pairs = lines(result.stdout)
    # 2 alternatives at step 0; at step 1 two executed, the third failed in rollout (no outcome: no pair)
    assert [p["id"] for p in pairs] == [
        "pref:shop:train-00001#0:0",
        "pref:shop:train-00001#0:1",
        "pref:shop:train-00001#1:0",
        "pref:shop:train-00001#1:1",
    ]
    # The prompt is exactly what imitation-data trains on (and eval renders) at that state, chosen its target.
    il = {e["id"]: e for e in lines(runner.invoke(cli, ["imitation-data", TRAJ]).stdout)}
    for pair in pairs:
        example = il[f"il:shop:train-00001#{pair['meta']['step']}"]
        assert pair["prompt"] == example["messages"][:-1]
        assert pair["chosen"] == [example["messages"][-1]]
        assert pair["source_id"] == pair["id"].rsplit(":", 1)[0][len("pref:") :]
    invalid = pairs[3]
    assert invalid["rejected"] == [{"role": "assistant", "content": "Action: click[green t-shirt]"}]
    assert invalid["chosen"] == [{"role": "assistant", "content": "Action: click[red cotton t-shirt]"}]
    meta = invalid["meta"]
    assert list(meta) == [*[k for k in EXAMPLE_META if k != "created_utc"], *PAIR_META, "created_utc"]
    assert (
        meta["stage"],
        meta["kind"],
        meta["alternative"],
        meta["rejected_action"],
        meta["rejected_source"],
        meta["reason"],
        meta["rejected_filter"],
        meta["seed"],
    ) == ("preference-data", "preference", 1, "click[green t-shirt]", "policy", "invalid", "all", 99)
    assert meta["action"] == "click[red cotton t-shirt]" and meta["trajectory_id"] == "shop:train-00001"
    assert all(list(p["meta"]) == list(meta) for p in pairs)  # one set of keys: Arrow sees one schema
    assert [p["meta"]["reason"] for p in pairs] == ["executed", "executed", "executed", "invalid"]
    counts = orjson.loads(stats.read_bytes())
    assert (
        counts["records_in"],
        counts["records_out"],
        counts["pairs_executed"],
        counts["pairs_invalid"],
        counts["not_executed"],
    ) == (2, 4, 3, 1, 1)
    # eexp validate knows the kind
    path = tmp_path / "pairs.jsonl"
    path.write_text(result.stdout)
    checked = runner.invoke(cli, ["validate", "--kind", "preference", str(path)])
    assert checked.exit_code == 0 and "4 preference" in checked.stdout


def outcome_with(*alternatives: dict, expert: dict | None = None) -> dict:
    record = copy.deepcopy(outcomes()[1])
    record["alternatives"] = [{"source": "admissible", **a} for a in alternatives]
    if expert:
        record["expert"].update(expert)
    return record


SAME = "[results page 1/2] 1. blue cotton t-shirt $12.00 | 2. red cotton t-shirt $24.00 |  3. red silk t-shirt $41.00"
ALTERNATIVES = [
    {"action": "a-invalid", "next_observation": "invalid action", "reward": 0.0, "done": False, "valid": False},
    {"action": "a-same", "next_observation": SAME, "reward": 0.0, "done": False, "valid": True},  # spacing differs
    {"action": "a-ends-early", "next_observation": "bought it", "reward": 0.5, "done": True, "valid": True},
    {"action": "a-detour", "next_observation": "[item page] red silk", "reward": 0.0, "done": False, "valid": True},
    {"action": "a-failed", "error": "environment error: step timed out"},
]


@pytest.mark.parametrize(
    "rejected, taken",
    [
        ("invalid", {"a-invalid": "invalid"}),
        ("no-progress", {"a-invalid": "invalid", "a-same": "no_change", "a-ends-early": "ended_episode"}),
        (
            "all",
            {"a-invalid": "invalid", "a-same": "no_change", "a-ends-early": "ended_episode", "a-detour": "executed"},
        ),
    ],
)
def test_rejected_chooses_which_alternatives_count(runner, tmp_path, rejected, taken):
    path = write(tmp_path / "o.jsonl", [outcome_with(*ALTERNATIVES)])
    stats = tmp_path / "s.json"
    result = runner.invoke(cli, ["preference-data", path, "--rejected", rejected, "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    pairs = lines(result.stdout)
    assert {p["meta"]["rejected_action"]: p["meta"]["reason"] for p in pairs} == taken
    assert all(p["meta"]["rejected_filter"] == rejected for p in pairs)
    assert [p["id"].rsplit(":", 1)[1] for p in pairs] == [
        str(j) for j, a in enumerate(ALTERNATIVES) if a["action"] in taken
    ]  # j: index in the outcome
    counts = orjson.loads(stats.read_bytes())
    assert counts["not_executed"] == 1 and counts.get("not_rejected", 0) == 4 - len(taken)


def test_an_ending_counts_as_no_progress_only_when_the_expert_did_better():
    from eexp.prompts import Serializer
    from eexp.stages.preference import preference_pairs

    ends = {"next_observation": "bought", "done": True, "valid": True}
    record = outcome_with(
        {"action": "worse", **ends, "reward": 0.5},
        {"action": "as-good", **ends, "reward": 1.0},
        expert={"done": True, "reward": 1.0},
    )
    pairs = list(preference_pairs(record, Serializer(), "no-progress"))
    assert [p["meta"]["rejected_action"] for p in pairs] == ["worse"]  # a buy as good as the expert's is not
    record = outcome_with({"action": "ends", **ends, "reward": 1.0})  # the expert's action went on (done false)
    assert [p["meta"]["reason"] for p in preference_pairs(record, Serializer(), "no-progress")] == ["ended_episode"]


def test_states_that_give_no_pairs_are_counted_and_said(runner, tmp_path):
    unreachable = {**outcomes()[0], "error": "cannot reach the recorded state: observation differs"}
    expert_failed = copy.deepcopy(outcomes()[0])
    del expert_failed["expert"]["next_observation"]
    expert_failed["expert"]["error"] = "environment error: boom"
    empty = {**outcomes()[0], "alternatives": []}
    path = write(tmp_path / "o.jsonl", [unreachable, expert_failed, empty])
    stats = tmp_path / "s.json"
    result = runner.invoke(cli, ["preference-data", path, "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert (
        "no preference pairs: none of the 3 states has an executed alternative that --rejected all takes"
        in result.stderr
    )
    counts = orjson.loads(stats.read_bytes())
    assert (counts["unreachable"], counts["expert_not_executed"], counts["no_alternatives"]) == (1, 1, 1)


def test_bad_input_names_file_and_line(runner, tmp_path):
    branch = copy.deepcopy(outcomes()[1])  # a branch record that was never rolled out
    del branch["expert"]["next_observation"]
    branch["meta"] = {"stage": "branch"}
    for a in branch["alternatives"]:
        for key in ("next_observation", "reward", "done", "valid", "error"):
            a.pop(key, None)
    path = write(tmp_path / "in.jsonl", [outcomes()[0], branch])
    result = runner.invoke(cli, ["preference-data", path])
    assert result.exit_code == 1
    assert f"{path}:2: expected an outcome record, got a branch record" in result.stderr
    assert len(lines(result.stdout)) == 2  # the first state's pairs were written
    skipped = runner.invoke(cli, ["preference-data", path, "--on-error", "skip"])
    assert skipped.exit_code == 0 and len(lines(skipped.stdout)) == 2


def test_same_input_same_records_and_resume(runner, tmp_path):
    a = lines(runner.invoke(cli, ["preference-data", OUTCOMES]).stdout)
    assert untimed(a) == untimed(lines(runner.invoke(cli, ["preference-data", OUTCOMES]).stdout))
    out = tmp_path / "pairs.jsonl"
    whole = runner.invoke(cli, ["preference-data", OUTCOMES, "-o", str(out)])
    assert whole.exit_code == 0
    torn = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(torn[:3]) + torn[3][:20])  # killed in the second state
    resumed = runner.invoke(cli, ["preference-data", OUTCOMES, "-o", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert untimed(lines(out.read_text())) == untimed(a)
    il = tmp_path / "il.jsonl"
    runner.invoke(cli, ["imitation-data", TRAJ, "-o", str(il)])
    refused = runner.invoke(cli, ["preference-data", OUTCOMES, "-o", str(il), "--resume"])
    assert refused.exit_code == 1 and "this file holds training examples, not preference pairs" in refused.stderr


def test_pair_validation():
    pair = lines(Path(OUTCOMES).read_text())[0]  # any outcome, to build one pair from
    from eexp.prompts import Serializer
    from eexp.stages.preference import preference_pairs

    record = next(preference_pairs(pair, Serializer()))
    assert kind_of(record) == "preference" and validate(record, "preference") is None
    assert validate({**record, "chosen": []}, "preference") == "chosen: empty"
    assert (
        validate({**record, "rejected": [{"role": "user", "content": "x"}]}, "preference")
        == "rejected[0].role: expected assistant, got 'user'"
    )
    assert (
        validate({**record, "prompt": record["prompt"][:1]}, "preference")
        == "prompt: expected it to end on a user turn, got 'system'"
    )
