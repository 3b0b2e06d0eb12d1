"""--act think: the model writes its thought, then the action is chosen after it (ranked among the admissible
actions of a closed set, generated in an open one), once in eexp.policies.chat for every local backend.

The logic is checked with a thought we choose (a transformers policy whose first generation is scripted: the model,
its template and its scores stay real), then end to end on the tiny models of both backends, in eval and branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eexp.cli import cli
from eexp.policies import PolicyError, load_policy
from eexp.prompts import Serializer

pytest.importorskip("torch")

DATA = Path(__file__).parent / "data"
ADMISSIBLE = ["take lamp", "take lamp from the table", "go north", "go north east", "inventory", 'say "hi"']
STATE = {"goal": "take the lamp and go north", "history": [{"observation": "You wake up in a hall.", "action": "look"}],
         "observation": "A hall. A lamp is here.", "admissible": ADMISSIBLE}
MESSAGES = Serializer().policy_messages(STATE)


@pytest.fixture(scope="module")
def scripted(tiny_checkpoint):
    """A transformers policy (act think) whose next free generation is taken from `script` when one is queued;
    every other call (the continuation after `Action:`, the scores) is the real model's."""
    from eexp.policies.hf import TransformersPolicy

    class Scripted(TransformersPolicy):
        script: list[tuple[str, str]] = []
        generations: list[list[int]] = []

        def _generate_ids(self, ids, **kwargs):
            self.generations.append(list(ids))
            if self.script:
                return self.script.pop(0)
            return super()._generate_ids(ids, **kwargs)

    return Scripted(str(tiny_checkpoint), act="think", max_tokens=16)


def full_turn_logliks(policy, prefix: str) -> dict[str, float]:
    """log p(assistant turn | prompt) for every admissible action, the turn rendered whole by the template, with
    one plain forward pass each (no cache, no sharing): what the ranking after a thought must agree with."""
    import torch
    prompt = policy.encode_chat(MESSAGES)
    end = policy.tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = {}
    for action in ADMISSIBLE:
        full = policy.encode_chat(MESSAGES + [{"role": "assistant", "content": f"{prefix}Action: {action}"}],
                                  add_generation_prompt=False)
        full = full[:full.index(end, len(prompt)) + 1]
        with torch.no_grad():
            logp = torch.log_softmax(policy.model(torch.tensor([full])).logits[0].float(), -1)
        out[action] = sum(float(logp[t - 1, full[t]]) for t in range(len(prompt), len(full)))
    return out


def test_action_is_ranked_as_the_continuation_of_the_thought(scripted, monkeypatch):
    thought = "Thought: the lamp is here, and the task wants it first."
    scripted.script[:] = [(f"{thought}\nAction: go north", "stop")]
    seen = {}
    real = type(scripted).scores_for

    def spy(self, ids, candidates):
        seen["ids"], seen["candidates"] = ids, candidates
        seen["logliks"] = real(self, ids, candidates)
        return seen["logliks"]

    monkeypatch.setattr(type(scripted), "scores_for", spy)
    reply = scripted.act(MESSAGES, admissible=ADMISSIBLE, seed=3, temperature=0.0)
    assert reply.thought == "the lamp is here, and the task wants it first." and not reply.thought_cut
    assert reply.valid and reply.action in ADMISSIBLE and reply.seed == 0
    assert reply.text == f"{thought}\nAction: {reply.action}"  # the model's own text up to `Action:`, then ours
    # Every candidate is the full turn as the template tokenizes it: the shared context + its own tail.
    prefix = f"{thought}\n"
    for action, tail in zip(ADMISSIBLE, seen["candidates"]):
        whole = scripted.encode_chat(MESSAGES + [{"role": "assistant", "content": f"{prefix}Action: {action}"}],
                                     add_generation_prompt=False)
        assert whole[:len(seen["ids"]) + len(tail)] == seen["ids"] + tail
    # ...so each score differs from the whole turn's log-likelihood by one constant (the shared part's), and the
    # choice is the argmax of the whole turn's likelihood
    expected = full_turn_logliks(scripted, prefix)
    offsets = [expected[a] - s for a, s in zip(ADMISSIBLE, seen["logliks"])]
    assert max(offsets) - min(offsets) < 1e-3
    assert reply.action == max(expected, key=expected.get)
    # the context ends inside the thought's turn, after the prompt (the thought is conditioned on)
    assert len(seen["ids"]) > len(scripted.encode_chat(MESSAGES)) + 5


def test_a_thought_cut_by_max_tokens_still_gets_an_action(scripted):
    scripted.script[:] = [("Thought: I am not sure whether", "length")]
    reply = scripted.act(MESSAGES, admissible=ADMISSIBLE, seed=3, temperature=0.0)
    assert reply.thought_cut and reply.thought == "I am not sure whether"
    assert reply.valid and reply.action in ADMISSIBLE
    assert reply.text == f"Thought: I am not sure whether\n\nAction: {reply.action}"  # the SR target's layout
    expected = full_turn_logliks(scripted, "Thought: I am not sure whether\n\n")
    assert reply.action == max(expected, key=expected.get)


def test_no_thought_ranks_as_score_does(scripted):
    """A model that answers `Action:` at once (IL, IWM) gets the action --act score would give it: the same
    candidates after the same prompt, so such models can be reported both ways."""
    scripted.script[:] = [("Action: inventory", "stop")]
    reply = scripted.act(MESSAGES, admissible=ADMISSIBLE, seed=3, temperature=0.0)
    assert (reply.thought, reply.thought_cut) == (None, False)
    assert reply.action == scripted.rank(MESSAGES, ADMISSIBLE)[0][0] and reply.text == f"Action: {reply.action}"


def test_sampling_after_the_thought_is_seeded(scripted):
    draws = []
    for _ in range(2):
        scripted.script[:] = [("Thought: hmm.\nAction: x", "stop")] * 12
        draws.append([r.action for r in scripted.sample(MESSAGES, admissible=ADMISSIBLE, seeds=list(range(1, 13)),
                                                         temperature=40.0)])
    assert draws[0] == draws[1] and all(a in ADMISSIBLE for a in draws[0])
    assert len(set(draws[0])) > 1  # a draw from softmax(loglik / T), not the argmax


def test_open_action_space_generates_the_action_after_the_thought(scripted):
    # the action written after the thought is the one taken
    scripted.script[:] = [("Thought: the door is shut.\nAction: open the red door\nmore text", "stop")]
    reply = scripted.act(MESSAGES, admissible=None, seed=1, temperature=0.0)
    assert (reply.action, reply.thought, reply.valid, reply.thought_cut) == \
        ("open the red door", "the door is shut.", None, False)
    # a cut thought: the model continues its own turn after `Action:` (prompt + thought + "Action:" as the template
    # renders it, without the end of turn), and the first line it writes is the action
    scripted.script[:] = [("Thought: the door", "length")]
    scripted.generations.clear()
    reply = scripted.act(MESSAGES, admissible=None, seed=1, temperature=0.0)
    assert reply.thought_cut and reply.thought == "the door"
    after = scripted.generations[1]
    turn = scripted.encode_chat(MESSAGES + [{"role": "assistant", "content": "Thought: the door\n\nAction:"}],
                                add_generation_prompt=False)
    assert after == turn[:len(after)] and scripted.tokenizer.decode(after).endswith("Thought: the door\n\nAction:")
    assert after[:len(scripted.encode_chat(MESSAGES))] == scripted.encode_chat(MESSAGES)
    assert reply.text.startswith("Thought: the door\n\nAction: ")


def test_both_backends_think_alike(tiny_checkpoint, tmp_path):
    """No script: the tiny model's own thought (greedy), then the ranking, the same through llama.cpp (an f32
    export, which reproduces transformers' logits) as through transformers."""
    pytest.importorskip("llama_cpp")
    from eexp.models.export import export_gguf
    gguf = export_gguf(tiny_checkpoint, tmp_path / "tiny.f32.gguf", quant="f32")
    hf = load_policy(str(tiny_checkpoint), act="think", max_tokens=12)
    llama = load_policy(str(gguf), act="think", max_tokens=12)
    a = hf.act(MESSAGES, admissible=ADMISSIBLE, seed=1, temperature=0.0)
    b = llama.act(MESSAGES, admissible=ADMISSIBLE, seed=1, temperature=0.0)
    assert a.action in ADMISSIBLE and a.valid
    assert (b.action, b.thought, b.thought_cut) == (a.action, a.thought, a.thought_cut)
    # sampled thoughts: the same seeds give the same replies, on either backend
    seeds = [11, 12, 13]
    for policy in (hf, llama):
        first = policy.sample(MESSAGES, admissible=ADMISSIBLE, seeds=seeds, temperature=1.0)
        again = policy.sample(MESSAGES, admissible=ADMISSIBLE, seeds=seeds, temperature=1.0)
        assert [(r.text, r.seed) for r in first] == [(r.text, r.seed) for r in again]
        assert [r.seed for r in first] == seeds and all(r.action in ADMISSIBLE for r in first)
    llama.close()


def test_http_think_is_tried_and_unknown_modes_are_refused():
    """An endpoint takes --act think now (tests/test_http.py: the thought, then the action continuing it): it is
    contacted, not refused on sight as it was while a server could not continue the model's reply."""
    with pytest.raises(PolicyError, match="^cannot reach the policy endpoint http://127.0.0.1:9/v1"):
        load_policy("http://127.0.0.1:9/v1", act="think")
    with pytest.raises(PolicyError, match="unknown --act"):
        load_policy("random", act="ponder")


def test_eval_records_thoughts(runner, tiny_checkpoint, tmp_path):
    runs = []
    for name in ("a", "b"):
        out, summary = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.json"
        result = runner.invoke(cli, ["eval", "--policy", str(tiny_checkpoint), "--env", "shop", "-n", "2",
                                     "--max-steps", "2", "--act", "think", "--max-tokens", "8", "-o", str(out),
                                     "--summary", str(summary)])
        assert result.exit_code == 0, result.output
        runs.append(([json.loads(line) for line in out.read_text().splitlines()], json.loads(summary.read_text())))
    (episodes, summary), (again, _) = runs
    assert len(episodes) == 2
    cut = 0
    for e in episodes:
        assert e["meta"]["act"] == "think" and e["meta"]["max_tokens"] == 8
        assert len(e["thoughts"]) == e["steps"] == len(e["actions"])
        assert 0 <= e["meta"]["thoughts_cut"] <= e["steps"]
        cut += e["meta"]["thoughts_cut"]
    assert summary["thoughts_cut"] == cut and "thoughts_cut" not in summary["meta"]
    # the same inputs and seeds: the same episodes
    keep = ("id", "actions", "thoughts", "observations", "success")
    assert [{k: e.get(k) for k in keep} for e in again] == [{k: e.get(k) for k in keep} for e in episodes]
    # the thought's length limit is part of a think episode's identity
    other = runner.invoke(cli, ["eval", "--policy", str(tiny_checkpoint), "--env", "shop", "-n", "1", "--max-steps",
                                "1", "--act", "think", "--max-tokens", "9", "-q"])
    assert other.exit_code == 0 and json.loads(other.stdout.splitlines()[0])["id"] != episodes[0]["id"]


def test_branch_proposals_carry_their_thoughts(runner, tiny_checkpoint, tmp_path):
    out, stats = tmp_path / "b.jsonl", tmp_path / "stats.json"
    result = runner.invoke(cli, ["branch", str(DATA / "trajectories.jsonl"), "--propose", "policy", "--policy",
                                 str(tiny_checkpoint), "--act", "think", "--max-tokens", "6", "-k", "2",
                                 "--steps", "0", "-o", str(out), "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    proposed = [a for r in records for a in r["alternatives"] if a["source"] == "policy"]
    assert proposed and all(isinstance(a.get("thought"), str) and a["thought"] for a in proposed)
    assert all(r["meta"]["act"] == "think" for r in records)
    assert json.loads(stats.read_text()).get("thoughts_cut", 0) <= 2 * len(records)
