"""`eexp rl --reward next-state` (issue 53, item 4): GRPO on next-state predictions, rewarded by their token F1 with
the recorded next state (RWML). The reward on known strings; the prompt is the IWM example world-model-data writes;
a tiny run trains, logs its reward and is the same twice for one seed; outcome RL continues from its checkpoint;
--resume gives an uninterrupted run's weights; its usage and input errors.

Hand-made shop outcome records with short observations (the prompts stay a few dozen tokens), on the tiny
checkpoint of tests/conftest.py; one torch thread (see test_rl.py)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from eexp.cli import cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOM = "You are in a small shop. You see a red shirt."
PICKED = "You pick up the red shirt."


def outcome(id_, observation, expert, alternatives, *, split="train", error=None):
    record = {
        "id": id_,
        "source_id": id_.split("#")[0],
        "trajectory_id": id_.split("#")[0],
        "step": 0,
        "env": {"name": "shop", "version": "test", "kwargs": {}},
        "task": {"id": id_.split("#")[0], "split": split, "goal": "buy a red shirt"},
        "prefix": [],
        "state": {"goal": "buy a red shirt", "history": [], "observation": observation},
        "expert": expert,
        "alternatives": alternatives,
        "meta": {},
    }
    if error:
        record["error"] = error
    return record


def executed(action, next_observation, source="admissible"):
    return {
        "action": action,
        "source": source,
        "next_observation": next_observation,
        "reward": 0.0,
        "done": False,
        "valid": True,
    }


# Two reached states of train (5 executed transitions: 2 expert, 3 alternatives, one alternative failed), a state of
# test (left out under --split train) and an unreached one (left out, counted).
OUTCOMES = [
    outcome(
        "shop:a#0",
        ROOM,
        executed("take red shirt", PICKED),
        [
            executed("look", ROOM),
            executed("dance", "Nothing happens."),
            {"action": "go north", "source": "policy", "error": "the environment failed"},
        ],
    ),
    outcome("shop:b#0", "A till. A bell.", executed("ring bell", "Ding."), [executed("wait", "A till. A bell.")]),
    outcome("shop:c#0", ROOM, executed("look", ROOM), [], split="test"),
    outcome("shop:d#0", ROOM, {"action": "look"}, [], error="the state could not be reached"),
]
TRANSITIONS = ["wm:shop:a#0:expert", "wm:shop:a#0:0", "wm:shop:a#0:1", "wm:shop:b#0:expert", "wm:shop:b#0:0"]


@pytest.fixture
def outcomes_file(tmp_path):
    path = tmp_path / "outcomes.jsonl"
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in OUTCOMES))
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def timeless(out) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in {"rollout_s", "update_s", "predictions_per_s"}} for r in rows(out)]


# 2 transitions x 8 predictions of at most 12 tokens per step; temperature 2 so that an untrained model's
# predictions differ in how many of the target's tokens they hit (groups that all score the same teach nothing)
RUN = [
    "--env",
    "shop",
    "--reward",
    "next-state",
    "-G",
    8,
    "--tasks-per-step",
    2,
    "--max-tokens",
    12,
    "--temperature",
    2,
    "--lr",
    "1e-2",
    "-q",
]


def test_the_reward_is_world_model_evals_token_f1():
    """A copy of the recorded next state scores 1 (labelled as IWM trains it, or bare, whitespace around it), text
    sharing none of its tokens 0, partial overlap its F1 as world-model-eval scores it (punctuation counts)."""
    from eexp.rl.next_state import prediction_reward
    from eexp.stages.world_model_eval import token_f1

    assert prediction_reward(f"Observation: {PICKED}", PICKED) == 1.0
    assert prediction_reward(f"  {PICKED}\n", PICKED) == 1.0
    assert prediction_reward("Observation: Ding dong, bells everywhere", PICKED) == 0.0
    assert prediction_reward("", PICKED) == 0.0
    # "you pick up the blue hat ." against "you pick up the red shirt .": 5 of 7 tokens each way, F1 = 5/7
    assert prediction_reward("Observation: You pick up the blue hat.", PICKED) == pytest.approx(5 / 7)
    assert prediction_reward("You pick up the blue hat.", PICKED) == token_f1("You pick up the blue hat.", PICKED)


def test_the_prompts_are_the_iwm_examples_world_model_data_writes(tiny_checkpoint, outcomes_file, tmp_path):
    """Every executed transition of the reached train outcomes, asked exactly as world-model-data renders it with
    the start's serializer (the tiny checkpoint records none: the defaults, as world-model-data's), its target the
    recorded next observation; the test split's and the unreached record are left out, a failed action too."""
    from eexp.rl.config import RLConfig
    from eexp.rl.recipe import RL

    said = []
    run = RL(
        RLConfig(
            model=str(tiny_checkpoint),
            env="shop",
            reward="next-state",
            outcomes=str(outcomes_file),
            output=str(tmp_path / "out"),
            quiet=True,
        ),
        echo=said.append,
    )
    run.setup()
    run.env.close()
    assert [t["id"] for t in run.states] == TRANSITIONS and run.act == "generate"
    assert [t["target"] for t in run.states] == [PICKED, ROOM, "Nothing happens.", "Ding.", "A till. A bell."]
    result = invoke("world-model-data", outcomes_file, "-q", "--on-error", "skip")
    assert result.exit_code == 0, result.output
    made = {e["id"]: e["messages"] for e in map(json.loads, result.stdout.splitlines())}
    assert [t["messages"] for t in run.states] == [made[i][:-1] for i in TRANSITIONS]
    assert any("1 outcome records of" in s and "not reached left out" in s for s in said)


def test_a_tiny_run_trains_logs_its_reward_and_is_the_same_for_a_seed(tiny_checkpoint, outcomes_file, tmp_path):
    import yaml

    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        result = invoke(
            "rl", "--model", tiny_checkpoint, "--outcomes", outcomes_file, "-o", out, "--max-steps", 3, *RUN
        )
        assert result.exit_code == 0, result.output
    a, b = outs
    got = rows(a)
    assert [(r["step"], r["phase"], r["reward"], r["transitions"], r["predictions"]) for r in got] == [
        (1, "rl-next-state", "next-state", 2, 16),
        (2, "rl-next-state", "next-state", 2, 32),
        (3, "rl-next-state", "next-state", 2, 48),
    ]
    assert all(0.0 <= r["mean_reward"] <= 1.0 and "exact_rate" in r for r in got)
    assert sum(r["samples"] for r in got) > 0 and any(r["updates"] for r in got)  # rewards differed: it trained
    assert (a / "model.safetensors").read_bytes() != (tiny_checkpoint / "model.safetensors").read_bytes()
    # the same inputs and seed: the same metrics and weights
    assert timeless(a) == timeless(b)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    made = yaml.safe_load((a / "config.yaml").read_text())
    assert made["reward"] == "next-state" and made["outcomes"] == str(outcomes_file) and made["act"] == "generate"
    assert made["transitions"] == 5 and made["outcome_records"] == 2 and made["predictions"] == 48
    assert made["probe"]["predictions"] == 16 and made["episodes"] == 0
    card = yaml.safe_load((a / "card.yaml").read_text())
    assert card["phases"] == [{"name": "rl-next-state", "updates": 3}]
    # RWML's combination with the task reward: policy RL from the world-model RL checkpoint, as from any start
    c = tmp_path / "c"
    result = invoke(
        "rl",
        "--model",
        a,
        "--env",
        "shop",
        "-o",
        c,
        "-G",
        2,
        "--tasks-per-step",
        1,
        "--max-steps",
        1,
        "--episode-steps",
        2,
        "--reward",
        "score",
        "--allow-zero-start",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((c / "config.yaml").read_text())["start"] == str(a) and rows(c)[0]["reward"] == "score"


def test_resumes_exactly(tiny_checkpoint, outcomes_file, tmp_path):
    """A run cut off after its third step (its checkpoint of step 2 on disk) and --resumed gives the metrics and
    weights of an uninterrupted one, its prediction count included."""
    from eexp.rl.config import RLConfig
    from eexp.rl.recipe import RL, run_rl
    from eexp.runner import progress_bar

    settings = dict(
        model=str(tiny_checkpoint),
        env="shop",
        reward="next-state",
        outcomes=str(outcomes_file),
        group_size=4,
        tasks_per_step=2,
        max_tokens=8,
        temperature=2.0,
        lr=1e-2,
        max_steps=4,
        save_every=2,
        quiet=True,
    )
    whole = tmp_path / "whole"
    run_rl(RLConfig(**settings, output=str(whole)), echo=lambda message: None)
    cut = tmp_path / "cut"
    run = RL(RLConfig(**settings, output=str(cut)), echo=lambda message: None)
    run.setup()
    bar = progress_bar(True, total=4)
    for _ in range(3):  # steps 1-3: a checkpoint after step 2, step 3 lost with the process
        run._rl_step(bar)
    assert [c.name for c in (cut / "checkpoints").iterdir()] == ["step-2"] and len(rows(cut)) == 3
    run.env.close()
    del run
    run_rl(RLConfig(**settings, output=str(cut), resume=True), echo=lambda message: None)
    assert timeless(cut) == timeless(whole) and [r["predictions"] for r in rows(whole)] == [8, 16, 24, 32]
    assert (cut / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    assert sum(r["samples"] for r in rows(whole)) > 0


def test_bad_options_and_input(tiny_checkpoint, outcomes_file, tmp_path):
    """--reward next-state without --outcomes, --outcomes without it, and --act score with it are usage errors
    (exit 2); a file of another record kind or world is FILE:LINE, exit 1, and leaves no OUT behind."""
    base = ["rl", "--model", tiny_checkpoint, "--env", "shop", "-q"]
    result = invoke(*base, "-o", tmp_path / "a", "--reward", "next-state")
    assert result.exit_code == 2 and "--reward next-state needs --outcomes FILE" in result.output
    result = invoke(*base, "-o", tmp_path / "a", "--outcomes", outcomes_file)
    assert result.exit_code == 2 and "--outcomes: only with --reward next-state" in result.output
    result = invoke(
        *base, "-o", tmp_path / "a", "--reward", "next-state", "--outcomes", outcomes_file, "--act", "score"
    )
    assert result.exit_code == 2 and "--act score: --reward next-state generates" in result.output
    trajectory = {
        "id": "shop:x",
        "env": {"name": "shop", "version": "1", "kwargs": {}},
        "task": {"id": "x", "split": "train", "goal": "buy"},
        "steps": [{"observation": "o", "action": "a"}],
        "final_observation": "p",
        "success": True,
        "meta": {},
    }
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_bytes(orjson.dumps(OUTCOMES[0]) + b"\n" + orjson.dumps(trajectory) + b"\n")
    result = invoke(*base, "-o", tmp_path / "b", "--reward", "next-state", "--outcomes", wrong)
    assert result.exit_code == 1
    assert f"{wrong}:2: expected an outcome record, got a trajectory" in result.output
    other = tmp_path / "other.jsonl"
    other.write_bytes(
        orjson.dumps({**OUTCOMES[0], "env": {"name": "shop", "version": "1", "kwargs": {"catalog": "big"}}}) + b"\n"
    )
    result = invoke(*base, "-o", tmp_path / "b", "--reward", "next-state", "--outcomes", other)
    assert result.exit_code == 1 and f"{other}:1: an outcome record of shop {{'catalog': 'big'}}" in result.output
    assert not (tmp_path / "b").exists()
