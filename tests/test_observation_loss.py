"""imitation-data --observation-loss (the ActObs baseline): the expert trajectories only, with the next observation as
a second assistant target, so that finetune's own masking puts loss on the observation tokens (and plain IL
examples get none there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from by_hand import untimed

from eexp.cli import cli
from eexp.stages.imitation import OBSERVATION_PROMPT

pytest.importorskip("transformers")

DATA = Path(__file__).parent / "data"
TRAJECTORIES = [json.loads(line) for line in (DATA / "trajectories.jsonl").read_text().splitlines()]


def run_data(runner, tmp_path, name, *args):
    out = tmp_path / name
    result = runner.invoke(cli, ["imitation-data", str(DATA / "trajectories.jsonl"), "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return out, [json.loads(line) for line in out.read_text().splitlines()]


def test_examples_carry_the_next_observation(runner, tmp_path):
    _, il = run_data(runner, tmp_path, "il.jsonl")
    _, obs = run_data(runner, tmp_path, "obs.jsonl", "--observation-loss")
    successful = [t for t in TRAJECTORIES if t["success"]]
    assert len(obs) == len(il) == sum(len(t["steps"]) for t in successful)  # no new data: one per expert step
    for a, b in zip(il, obs):
        assert b["id"] == a["id"].replace("il:", "ilobs:", 1) and b["source_id"] == a["source_id"]
        assert b["messages"][:3] == a["messages"]  # the IL prompt and target, unchanged
        assert b["meta"]["kind"] == "il-obs" and a["meta"]["kind"] == "il"
        assert json.loads(b["meta"]["extra"]) == {"observation_loss": True, "observation_weight": 1.0}
        assert a["meta"]["extra"] == ""
        assert set(b["meta"]) == set(a["meta"])  # the fixed example meta keys
    # the targets: the observation the trajectory recorded next, and its final observation after the last step
    t = successful[0]
    mine = [e for e in obs if e["source_id"] == t["id"]]
    expected = [s["observation"] for s in t["steps"][1:]] + [t["final_observation"]]
    assert [e["messages"][3] for e in mine] == [{"role": "user", "content": OBSERVATION_PROMPT}] * len(mine)
    assert [e["messages"][4] for e in mine] == [{"role": "assistant", "content": f"Observation: {o}"} for o in expected]
    # deterministic: the same input gives the same records (up to the creation time)
    _, again = run_data(runner, tmp_path, "obs2.jsonl", "--observation-loss")
    assert untimed(again) == untimed(obs)


def test_weight_and_clipping(runner, tmp_path):
    _, obs = run_data(
        runner,
        tmp_path,
        "w.jsonl",
        "--observation-loss",
        "--observation-weight",
        "0.5",
        "--max-observation-chars",
        "20",
    )
    target = obs[0]["messages"][4]
    assert target["weight"] == 0.5 and json.loads(obs[0]["meta"]["extra"])["observation_weight"] == 0.5
    assert target["content"] == "Observation: " + TRAJECTORIES[0]["steps"][1]["observation"][:19].rstrip() + "…"
    result = runner.invoke(cli, ["imitation-data", str(DATA / "trajectories.jsonl"), "--observation-weight", "2"])
    assert result.exit_code == 2 and "--observation-loss" in result.output
    result = runner.invoke(
        cli, ["imitation-data", str(DATA / "trajectories.jsonl"), "--observation-loss", "--observation-weight", "0"]
    )
    assert result.exit_code == 2


def test_finetune_puts_loss_on_the_observation_tokens(runner, tmp_path, tiny_checkpoint):
    """Through finetune's own reading and encoding (read_examples -> encode_items), with the model's template."""
    import transformers

    from eexp.training.config import FinetuneConfig
    from eexp.training.data import encode_items, read_examples

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    cfg = FinetuneConfig(train_files=[], model=str(tiny_checkpoint), output=str(tmp_path / "unused"), max_length=2048)

    def targets(path):
        items, reader = read_examples([str(path)], "fail", print)
        data = encode_items("x", items, reader, tokenizer, cfg)
        assert len(data.examples) == len(items) and data.truncated == 0
        return items, [[(tok, w) for tok, w in zip(e.ids, e.weights)] for e in data.examples]

    il_path, _ = run_data(runner, tmp_path, "il.jsonl")
    obs_path, _ = run_data(runner, tmp_path, "obs.jsonl", "--observation-loss", "--observation-weight", "0.5")
    il_items, il_targets = targets(il_path)
    obs_items, obs_targets = targets(obs_path)
    for il_item, il_t, item, t in zip(il_items, il_targets, obs_items, obs_targets):
        observation = item.record["messages"][4]["content"]
        action = item.record["messages"][2]["content"]
        trained = lambda pairs, weight: tokenizer.decode([tok for tok, w in pairs if w == weight])  # noqa: E731
        # IL: loss on the action turn (and its end of turn) only
        assert trained(il_t, 1.0) == f"{action}<|im_end|>"
        assert not any(w not in (0.0, 1.0) for _, w in il_t)
        # observation loss: the action at weight 1, the observation at weight 0.5, the prompts at 0
        assert trained(t, 1.0) == f"{action}<|im_end|>"
        assert trained(t, 0.5) == f"{observation}<|im_end|>"
        untrained = tokenizer.decode([tok for tok, w in t if w == 0])
        assert OBSERVATION_PROMPT in untrained and observation not in untrained
        # the prefix up to the action is the IL example, token for token
        assert t[: len(il_t)] == il_t
