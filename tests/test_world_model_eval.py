"""world-model-eval (issue 53, item 1): a model's next-state predictions on outcome records, scored against what the
environment showed. Against hand-made outcomes whose next states are known: a model that copies the current
observation and a model that answers the recorded next state score exactly what they should; the prompt is byte for
byte the IWM example world-model-data writes; bad input is FILE:LINE and exit 1; the records are the same for the
same inputs and seed (with --concurrency too); one run end to end on a tiny checkpoint."""

from __future__ import annotations

import json

import orjson
import pytest
from click.testing import CliRunner

import eexp.cli.world_model
from eexp.cli import cli
from eexp.policies.base import Policy, Reply
from eexp.prompts import OBSERVATION_HEADING
from eexp.records import expect, kind_of, validate
from eexp.stages.world_model_eval import INVALID_REPLIES, prompt_sha256, token_f1, tokens

KITCHEN = "You are in the kitchen. You see a mug 1."
PICKED = "You pick up the mug 1 from the floor."


def outcome(id_, env, observation, expert, alternatives, admissible=None):
    state = {"goal": "put a mug in the sink", "history": [], "observation": observation}
    if admissible:
        state["admissible"] = admissible
    return {
        "id": id_,
        "source_id": id_.split("#")[0],
        "trajectory_id": id_.split("#")[0],
        "step": 0,
        "env": {"name": env, "version": "test", "kwargs": {}},
        "task": {"id": id_.split("#")[0], "split": "test", "goal": "put a mug in the sink"},
        "prefix": [],
        "state": state,
        "expert": expert,
        "alternatives": alternatives,
        "meta": {},
    }


def step(action, next_observation, *, valid=True, done=False, source="admissible"):
    return {
        "action": action,
        "source": source,
        "next_observation": next_observation,
        "reward": 0.0,
        "done": done,
        "valid": valid,
    }


# Five executed transitions of known effect: the expert's and two alternatives in ALFWorld's words (one changes
# nothing, one is refused with ALFWorld's "Nothing happens."), one that failed (not asked), and a TextWorld state
# whose expert action ends the episode.
OUTCOMES = [
    outcome(
        "alfworld:t1#0",
        "alfworld",
        KITCHEN,
        step("take mug 1", PICKED),
        [
            step("look", KITCHEN),
            step("fly away", "Nothing happens.", valid=False, source="policy"),
            {"action": "go to sink 1", "source": "admissible", "error": "the environment failed"},
        ],
        admissible=["take mug 1", "look", "go to sink 1"],
    ),
    outcome(
        "textworld:g1#0",
        "textworld",
        "A small room.",
        step("open door", "The door opens.", done=True),
        [step("wait", "A small room.")],
    ),
]
# (id, exact for a copy of the current observation, recorded changed, valid scorable and recorded)
EXPECTED = [
    ("wmeval:alfworld:t1#0:expert", False, True, True),
    ("wmeval:alfworld:t1#0:0", True, False, True),
    ("wmeval:alfworld:t1#0:1", False, True, False),
    ("wmeval:textworld:g1#0:expert", False, True, None),
    ("wmeval:textworld:g1#0:0", True, False, None),
]


@pytest.fixture
def outcomes_file(tmp_path):
    path = tmp_path / "outcomes.jsonl"
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in OUTCOMES))
    return path


def invoke(args, input=None):
    return CliRunner().invoke(cli, args, input=input)


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def timeless(items: list[dict]) -> list[dict]:
    return [{**r, "meta": {k: v for k, v in r["meta"].items() if k != "created_utc"}} for r in items]


def current_observation(messages: list[dict]) -> str:
    """What a model that copies the state answers: the current observation of the rendered state in its prompt."""
    return messages[-1]["content"].split(OBSERVATION_HEADING, 1)[1].split("\n\n", 1)[0]


class Copier(Policy):
    """A scripted "model" (in this process, as tests/test_reflect.py scripts one) that answers every prompt with the
    current observation, in the trained format; it keeps the prompts it was asked."""

    name = "copier"

    def __init__(self):
        self.asked: list[list[dict]] = []

    def generate(self, messages, *, seed, temperature, top_p=1.0, max_tokens=256):
        self.asked.append(messages)
        return Reply(text=f"Observation: {current_observation(messages)}", action=None, finish_reason="stop")


@pytest.fixture
def copier(monkeypatch):
    model = Copier()
    monkeypatch.setattr(eexp.cli.world_model, "load_policy", lambda *a, **k: model)
    return model


def iwm_examples(path, *args) -> list[dict]:
    result = invoke(["world-model-data", str(path), *args])
    assert result.exit_code == 0, result.output
    return records(result.stdout)


# --- the scores -------------------------------------------------------------------------------------------------


def test_tokens_and_f1_by_hand():
    assert tokens("You see a Mug 1, $24.00!") == ["you", "see", "a", "mug", "1", ",", "$", "24", ".", "00", "!"]
    # 12 tokens against 10; in common: you, the, mug, 1, "." (once each): P = 5/12, R = 5/10, F1 = 5/11
    assert token_f1(KITCHEN, PICKED) == pytest.approx(5 / 11)
    assert token_f1("red t-shirt $24", "red t-shirt $24.00") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert token_f1("", "") == 1.0 and token_f1("a", "") == 0.0 and token_f1("a b", "c") == 0.0


def test_a_model_that_copies_the_state_scores_what_it_should(copier, outcomes_file, tmp_path):
    summary_path = tmp_path / "summary.json"
    result = invoke(
        [
            "world-model-eval",
            "--policy",
            "m.gguf",
            str(outcomes_file),
            "--summary",
            str(summary_path),
            "--stats",
            str(tmp_path / "stats.json"),
        ]
    )
    assert result.exit_code == 0, result.output
    got = records(result.stdout)
    assert [r["id"] for r in got] == [e[0] for e in EXPECTED]  # the failed alternative is not asked
    for record, (_, exact, changed, valid) in zip(got, EXPECTED):
        assert expect("prediction")(record) is None and kind_of(record) == "prediction"
        assert record["scores"]["exact"] is exact  # 1 exactly where the state did not change
        assert record["effect"]["changed"] is changed and record["effect"]["predicted_changed"] is False
        assert record["scores"]["changed"] is (not changed)
        assert record["effect"]["valid"] is valid
        assert record["scores"]["valid"] is (None if valid is None else valid)  # a copy never says "refused"
        assert record["labelled"] and record["finish_reason"] == "stop"
    assert got[0]["scores"]["f1"] == pytest.approx(5 / 11, abs=1e-6)
    assert [r["scores"]["f1"] for r in got][1] == 1.0
    assert got[3]["effect"]["done"] is True and got[0]["effect"]["done"] is False
    assert got[0]["prediction"] == KITCHEN and got[0]["target"] == PICKED
    meta = got[0]["meta"]
    assert (meta["stage"], meta["model"], meta["temperature"], meta["seed"], meta["env"]) == (
        "world-model-eval",
        "copier",
        0.0,
        0,
        "alfworld",
    )
    assert meta["example_id"] == "wm:alfworld:t1#0:expert" and meta["call_seed"] >= 1

    summary = json.loads(summary_path.read_text())
    alf, tw = summary["envs"]["alfworld"], summary["envs"]["textworld"]
    assert (alf["exact_match"]["k"], alf["exact_match"]["n"]) == (1, 3)
    assert alf["f1"]["mean"] == pytest.approx((5 / 11 + 1 + token_f1(KITCHEN, "Nothing happens.")) / 3)
    assert alf["f1"]["ci_low"] <= alf["f1"]["mean"] <= alf["f1"]["ci_high"]
    assert alf["exact_match"]["ci_low"] < 1 / 3 < alf["exact_match"]["ci_high"]
    assert (alf["changed"]["k"], alf["changed"]["n"], alf["changed"]["recorded_changed"]) == (1, 3, 2)
    assert (alf["valid"]["k"], alf["valid"]["n"], alf["valid"]["recorded_invalid"]) == (2, 3, 1)
    assert tw["valid"]["n"] == 0 and "refused action" in tw["valid"]["why"]
    assert alf["done"]["n"] == 0 and tw["done"]["recorded_done"] == 1
    assert (tw["by_action"]["expert"]["exact_match"]["k"], tw["by_action"]["alternatives"]["exact_match"]["k"]) == (
        0,
        1,
    )
    assert summary["effect_scorable"] == {
        "changed": 5,
        "valid": 3,
        "done": 0,
        "valid_envs": ["alfworld"],
        "done_why": summary["effect_scorable"]["done_why"],
    }
    assert "world-model-eval: alfworld: 3 predictions (1 states): exact match 33.3%" in result.stderr
    assert "effect right: changed 33.3% of 3 (2 changed the state), valid 66.7% of 3 (1 refused)" in result.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert (stats["predictions"], stats["exact"], stats["not_executed"], stats["invalid_actions"]) == (5, 2, 1, 1)


def test_the_prompt_is_byte_for_byte_what_world_model_data_trains_on(copier, outcomes_file, tmp_path):
    examples = iwm_examples(outcomes_file, "--history", "1", "--max-observation-chars", "30")
    result = invoke(
        [
            "world-model-eval",
            "--policy",
            "m.gguf",
            str(outcomes_file),
            "--history",
            "1",
            "--max-observation-chars",
            "30",
        ]
    )
    assert result.exit_code == 0, result.output
    got = records(result.stdout)
    assert len(copier.asked) == len(examples) == len(got) == 5
    for asked, example, record in zip(copier.asked, examples, got):
        assert orjson.dumps(asked) == orjson.dumps(example["messages"][:-1])
        assert record["prompt_sha256"] == prompt_sha256(example["messages"][:-1])
        assert record["meta"]["example_id"] == example["id"]
        assert "Observation: " + record["target"] == example["messages"][-1]["content"]


def test_the_same_on_real_outcomes_and_with_clipped_targets(copier, tmp_path):
    path = tmp_path / "outcomes.jsonl"
    for args in (
        ["expert", "--env", "shop", "-n", "2", "--seed", "1", "-o", str(tmp_path / "e.jsonl")],
        ["branch", "-k", "2", str(tmp_path / "e.jsonl"), "-o", str(tmp_path / "b.jsonl")],
        ["rollout", str(tmp_path / "b.jsonl"), "-o", str(path)],
    ):
        assert invoke(args).exit_code == 0
    examples = iwm_examples(path, "--max-chars", "40")
    result = invoke(["world-model-eval", "--policy", "m.gguf", str(path), "--max-chars", "40", "-q"])
    assert result.exit_code == 0, result.output
    got = records(result.stdout)
    assert len(got) == len(examples) > 0
    for asked, example, record in zip(copier.asked, examples, got):
        assert asked == example["messages"][:-1]
        assert "Observation: " + record["target"] == example["messages"][-1]["content"]
        assert len(record["target"]) <= 40


def recorded_answers(path) -> dict[str, str]:
    """The IWM examples of `path` as a table: user turn -> the assistant turn (the recorded next observation)."""
    return {e["messages"][1]["content"]: e["messages"][2]["content"] for e in iwm_examples(path)}


def test_a_model_that_answers_the_recorded_next_state_scores_1_over_http_and_concurrency(stub, outcomes_file, tmp_path):
    answers = recorded_answers(outcomes_file)
    # (the backend's own probes of the server ask other things: "Say hello.")
    server = stub(latency=0.01, free_text=lambda body: answers.get(body["messages"][-1]["content"], "hello"))
    runs = {}
    for n in (1, 4):
        summary = tmp_path / f"s{n}.json"
        result = invoke(
            [
                "world-model-eval",
                "--policy",
                server.url,
                str(outcomes_file),
                "--concurrency",
                str(n),
                "--summary",
                str(summary),
                "-q",
            ]
        )
        assert result.exit_code == 0, result.output
        runs[n] = timeless(records(result.stdout))
        s = json.loads(summary.read_text())
        for env in ("alfworld", "textworld"):
            e = s["envs"][env]
            assert e["exact_match"]["rate"] == e["f1"]["mean"] == e["changed"]["rate"] == 1.0
            assert e["f1"]["ci_low"] == e["f1"]["ci_high"] == 1.0
        assert s["envs"]["alfworld"]["valid"]["rate"] == 1.0 and s["envs"]["alfworld"]["valid"]["n"] == 3
    assert runs[1] == runs[4] and len(runs[1]) == 5
    assert all(r["scores"]["exact"] and r["scores"]["f1"] == 1.0 for r in runs[1])
    refused = runs[1][2]
    assert refused["prediction"] == "Nothing happens." and refused["effect"]["predicted_valid"] is False


def test_records_are_the_same_for_the_same_inputs_and_seed(copier, outcomes_file, tmp_path):
    first = invoke(["world-model-eval", "--policy", "m.gguf", str(outcomes_file), "--seed", "7"])
    again = invoke(["world-model-eval", "--policy", "m.gguf", str(outcomes_file), "--seed", "7"])
    other = invoke(["world-model-eval", "--policy", "m.gguf", str(outcomes_file), "--seed", "8"])
    assert timeless(records(first.stdout)) == timeless(records(again.stdout))
    assert [r["meta"]["call_seed"] for r in records(first.stdout)] != [
        r["meta"]["call_seed"] for r in records(other.stdout)
    ]


# --- bad input and usage ----------------------------------------------------------------------------------------


def test_bad_input_is_file_line_and_exit_1(copier, outcomes_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    trajectory = {
        "id": "t",
        "env": {"name": "shop", "version": "1"},
        "task": {"id": "a", "split": "x", "goal": "g"},
        "steps": [],
        "final_observation": "",
        "success": True,
    }
    bad.write_bytes(orjson.dumps(OUTCOMES[0]) + b"\n" + orjson.dumps(trajectory) + b"\n")
    result = invoke(["world-model-eval", "--policy", "m.gguf", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.endswith(f"Error: {bad}:2: expected an outcome record, got a trajectory\n")
    assert len(records(result.stdout)) == 3  # the first record's predictions are written first
    broken = dict(OUTCOMES[1], state={"goal": "g", "history": []})
    bad.write_bytes(orjson.dumps(broken) + b"\n")
    result = invoke(["world-model-eval", "--policy", "m.gguf", str(bad)])
    assert result.exit_code == 1 and result.stderr == f"Error: {bad}:1: state.observation: missing\n"
    unreachable = dict(OUTCOMES[1], error="cannot reach the recorded state: it diverged")
    bad.write_bytes(b"not json\n" + orjson.dumps(unreachable) + b"\n" + orjson.dumps(OUTCOMES[1]) + b"\n")
    result = invoke(["world-model-eval", "--policy", "m.gguf", str(bad), "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert [r["source_id"] for r in records(result.stdout)] == ["textworld:g1#0"] * 2
    # the unreachable state is no bad record: it gives no transition, and is counted (unreachable), as
    # world-model-data counts it
    assert "skipped 1 bad record(s)" in result.stderr


def test_usage_errors(copier, outcomes_file):
    for args, message in (
        (["--policy", "random"], "writes no text"),
        (["--policy", "m.gguf", "--act", "score"], "No such option '--act'"),
        ([], "world-model-eval needs the model"),
    ):
        result = invoke(["world-model-eval", *args, str(outcomes_file)])
        assert result.exit_code == 2 and message in result.stderr, result.output


def test_only_the_commands_that_choose_actions_offer_act():
    """reflect and world-model-eval have their model write text: their help offers no --act to refuse."""
    for command, offers in (("world-model-eval", False), ("reflect", False), ("eval", True), ("branch", True)):
        result = invoke([command, "--help"])
        assert result.exit_code == 0 and ("--act" in result.stdout) == offers, command


def test_resume_continues_the_same_run_and_refuses_another(copier, outcomes_file, tmp_path):
    out = tmp_path / "p.jsonl"
    full = invoke(["world-model-eval", "--policy", "m.gguf", str(outcomes_file), "-o", str(out)])
    assert full.exit_code == 0, full.output
    whole = out.read_bytes()
    out.write_bytes(whole[: whole.index(b"\n") + 1] + b'{"id": "torn')  # one record, then a torn line
    result = invoke(
        [
            "world-model-eval",
            "--policy",
            "m.gguf",
            str(outcomes_file),
            "-o",
            str(out),
            "--resume",
            "--summary",
            str(tmp_path / "s.json"),
        ]
    )
    assert result.exit_code == 0, result.output
    assert timeless(records(out.read_text())) == timeless(records(whole.decode()))
    assert json.loads((tmp_path / "s.json").read_text())["predictions"] == 5  # the whole file's
    result = invoke(
        [
            "world-model-eval",
            "--policy",
            "m.gguf",
            str(outcomes_file),
            "-o",
            str(out),
            "--resume",
            "--temperature",
            "0.5",
        ]
    )
    assert result.exit_code == 2 and "holds predictions of another model or other settings" in result.stderr


def other_state(outcomes):
    changed = [dict(outcomes[0], state={**outcomes[0]["state"], "observation": "You are in the hall."}), outcomes[1]]
    return changed, "its records of alfworld:t1#0 were made from another input record than this one"


def other_outcome(outcomes):
    expert = dict(outcomes[0]["expert"], next_observation="You pick up the mug 2 from the floor.")
    return [dict(outcomes[0], expert=expert), outcomes[1]], (
        "its records of alfworld:t1#0 were made from another input record than this one"
    )


def other_tasks(outcomes):
    return [dict(o, id=o["id"].replace("#0", "#1")) for o in outcomes], (
        "3 of its 3 records are of inputs that this input does not begin with"
    )


@pytest.mark.parametrize("change", [other_state, other_outcome, other_tasks], ids=lambda f: f.__name__)
def test_resume_refuses_a_part_begun_from_other_outcomes(copier, outcomes_file, tmp_path, change):
    """The same settings, other outcomes (another state, another observed next state, other ids): the predictions
    kept are not this input's, so the part is refused and left as it was."""
    out = tmp_path / "p.jsonl"
    assert invoke(["world-model-eval", "--policy", "m.gguf", str(outcomes_file), "-o", str(out)]).exit_code == 0
    part = b"".join(out.read_bytes().splitlines(keepends=True)[:4])  # the first outcome's 3, one of the second's
    out.write_bytes(part)
    changed, said = change(OUTCOMES)
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in changed))
    result = invoke(["world-model-eval", "--policy", "m.gguf", str(other), "-o", str(out), "--resume"])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"Error: --resume: {out} was begun from another input ({said}): resume it with the input it was begun from, "
        "or write to another file\n"
    )
    assert out.read_bytes() == part


def test_invalid_replies_read_the_environments_refusals():
    assert INVALID_REPLIES["alfworld"].match("Nothing happens.")
    assert INVALID_REPLIES["shop"].match("invalid action: there is no 'green t-shirt' here.\n[results page 1/2]")
    assert not INVALID_REPLIES["shop"].match("[results page 1/2] 1. invalid action: a t-shirt")


# --- end to end on a tiny checkpoint ----------------------------------------------------------------------------


def test_end_to_end_on_a_tiny_checkpoint(tiny_checkpoint, outcomes_file, tmp_path):
    runs = []
    for _ in range(2):
        summary = tmp_path / "s.json"
        result = invoke(
            [
                "world-model-eval",
                "--policy",
                str(tiny_checkpoint),
                str(outcomes_file),
                "--max-tokens",
                "6",
                "--temperature",
                "1",
                "--seed",
                "3",
                "--summary",
                str(summary),
                "-q",
            ]
        )
        assert result.exit_code == 0, result.output
        runs.append(timeless(records(result.stdout)))
    assert runs[0] == runs[1] and len(runs[0]) == 5  # sampled, and the same for the same seed
    for record in runs[0]:
        assert validate(record, "prediction") is None
        assert record["meta"]["model_sha256"] and record["meta"]["temperature"] == 1.0
        assert 0.0 <= record["scores"]["f1"] <= 1.0
    s = json.loads(summary.read_text())
    assert s["predictions"] == 5 and set(s["envs"]) == {"alfworld", "textworld"}
