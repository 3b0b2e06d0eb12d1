"""--act think: the reply is begun with `Thought:` (a prefill), the model writes its thought, then the action is
chosen after it (ranked among the admissible actions of a closed set, generated in an open one), once in
eexp.policies.chat for every local backend and in eexp.policies.http over a server; the thought's budget comes from
the model card (finetune records the longest training thought) unless --thought-tokens gives it, and eval reports
the share of steps with a thought and the share cut, and warns past 5% cut.

The logic is checked with a thought we choose (a transformers policy whose first generation is scripted: the model,
its template and its scores stay real), with a character-level model that answers as an IL+SR model does (at once
`Action:` from the bare prompt, a thought after `Thought:`), then end to end on the tiny models of both backends, in
eval and branch, and over HTTP against the stub server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eexp.cli import cli
from eexp.envs.base import Env
from eexp.errors import PolicyError
from eexp.policies import load_policy
from eexp.policies.chat import ModelPolicy
from eexp.prompts import Serializer, format_action

pytest.importorskip("torch")

DATA = Path(__file__).parent / "data"
ADMISSIBLE = ["take lamp", "take lamp from the table", "go north", "go north east", "inventory", 'say "hi"']
STATE = {
    "goal": "take the lamp and go north",
    "history": [{"observation": "You wake up in a hall.", "action": "look"}],
    "observation": "A hall. A lamp is here.",
    "admissible": ADMISSIBLE,
}
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
        full = policy.encode_chat(
            MESSAGES + [{"role": "assistant", "content": f"{prefix}Action: {action}"}], add_generation_prompt=False
        )
        full = full[: full.index(end, len(prompt)) + 1]
        with torch.no_grad():
            logp = torch.log_softmax(policy.model(torch.tensor([full])).logits[0].float(), -1)
        out[action] = sum(float(logp[t - 1, full[t]]) for t in range(len(prompt), len(full)))
    return out


def test_action_is_ranked_as_the_continuation_of_the_thought(scripted, monkeypatch):
    thought = "Thought: the lamp is here, and the task wants it first."
    # what the model writes after the prefill `Thought:`
    scripted.script[:] = [(" the lamp is here, and the task wants it first.\nAction: go north", "stop")]
    scripted.generations.clear()
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
        whole = scripted.encode_chat(
            MESSAGES + [{"role": "assistant", "content": f"{prefix}Action: {action}"}], add_generation_prompt=False
        )
        assert whole[: len(seen["ids"]) + len(tail)] == seen["ids"] + tail
    # ...so each score differs from the whole turn's log-likelihood by one constant (the shared part's), and the
    # choice is the argmax of the whole turn's likelihood
    expected = full_turn_logliks(scripted, prefix)
    offsets = [expected[a] - s for a, s in zip(ADMISSIBLE, seen["logliks"])]
    assert max(offsets) - min(offsets) < 1e-3
    assert reply.action == max(expected, key=expected.get)
    # the context ends inside the thought's turn, after the prompt (the thought is conditioned on)
    assert len(seen["ids"]) > len(scripted.encode_chat(MESSAGES)) + 5
    # the thought was generated after the prompt and the assistant turn begun with `Thought:`, as the template renders
    # that turn (without its end of turn)
    turn = scripted.encode_chat(MESSAGES + [{"role": "assistant", "content": "Thought:"}], add_generation_prompt=False)
    prompt = scripted.encode_chat(MESSAGES)
    begun = scripted.generations[0]
    assert begun == turn[: len(begun)] and begun[: len(prompt)] == prompt and len(begun) > len(prompt)
    assert scripted.tokenizer.decode(begun[len(prompt) :]) == "Thought:"


def test_a_thought_cut_by_max_tokens_still_gets_an_action(scripted):
    scripted.script[:] = [(" I am not sure whether", "length")]
    reply = scripted.act(MESSAGES, admissible=ADMISSIBLE, seed=3, temperature=0.0)
    assert reply.thought_cut and reply.thought == "I am not sure whether"
    assert reply.valid and reply.action in ADMISSIBLE
    assert reply.text == f"Thought: I am not sure whether\n\nAction: {reply.action}"  # the SR target's layout
    expected = full_turn_logliks(scripted, "Thought: I am not sure whether\n\n")
    assert reply.action == max(expected, key=expected.get)


def test_an_empty_thought_is_no_thought(scripted):
    """A model that closes its `Thought:` at once writes no thought: the step counts as one without (eval's
    thought_share), and the action is ranked after what it wrote."""
    scripted.script[:] = [("\nAction: inventory", "stop")]
    reply = scripted.act(MESSAGES, admissible=ADMISSIBLE, seed=3, temperature=0.0)
    assert (reply.thought, reply.thought_cut) == (None, False)
    assert reply.valid and reply.text == f"Thought:\nAction: {reply.action}"
    expected = full_turn_logliks(scripted, "Thought:\n")
    assert reply.action == max(expected, key=expected.get)


def test_sampling_after_the_thought_is_seeded(scripted):
    draws = []
    for _ in range(2):
        scripted.script[:] = [(" hmm.\nAction: x", "stop")] * 12
        draws.append(
            [
                r.action
                for r in scripted.sample(MESSAGES, admissible=ADMISSIBLE, seeds=list(range(1, 13)), temperature=40.0)
            ]
        )
    assert draws[0] == draws[1] and all(a in ADMISSIBLE for a in draws[0])
    assert len(set(draws[0])) > 1  # a draw from softmax(loglik / T), not the argmax


def test_open_action_space_generates_the_action_after_the_thought(scripted):
    # the action written after the thought is the one taken
    scripted.script[:] = [(" the door is shut.\nAction: open the red door\nmore text", "stop")]
    reply = scripted.act(MESSAGES, admissible=None, seed=1, temperature=0.0)
    assert (reply.action, reply.thought, reply.valid, reply.thought_cut) == (
        "open the red door",
        "the door is shut.",
        None,
        False,
    )
    # a cut thought: the model continues its own turn after `Action:` (prompt + thought + "Action:" as the template
    # renders it, without the end of turn), and the first line it writes is the action
    scripted.script[:] = [(" the door", "length")]
    scripted.generations.clear()
    reply = scripted.act(MESSAGES, admissible=None, seed=1, temperature=0.0)
    assert reply.thought_cut and reply.thought == "the door"
    after = scripted.generations[1]
    turn = scripted.encode_chat(
        MESSAGES + [{"role": "assistant", "content": "Thought: the door\n\nAction:"}], add_generation_prompt=False
    )
    assert after == turn[: len(after)] and scripted.tokenizer.decode(after).endswith("Thought: the door\n\nAction:")
    assert after[: len(scripted.encode_chat(MESSAGES))] == scripted.encode_chat(MESSAGES)
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
        result = runner.invoke(
            cli,
            [
                "eval",
                "--policy",
                str(tiny_checkpoint),
                "--env",
                "shop",
                "-n",
                "2",
                "--max-steps",
                "2",
                "--act",
                "think",
                "--max-tokens",
                "8",
                "-o",
                str(out),
                "--summary",
                str(summary),
            ],
        )
        assert result.exit_code == 0, result.output
        runs.append(([json.loads(line) for line in out.read_text().splitlines()], json.loads(summary.read_text())))
    (episodes, summary), (again, _) = runs
    assert len(episodes) == 2
    cut = 0
    for e in episodes:
        assert e["meta"]["act"] == "think" and e["meta"]["max_tokens"] == 8
        # the tiny model's card records no training thought: the budget is --max-tokens, and says so
        assert e["meta"]["thought_tokens"] == {"tokens": 8, "from": "max_tokens"}
        assert len(e["thoughts"]) == e["steps"] == len(e["actions"])
        assert 0 <= e["meta"]["thoughts_cut"] <= e["steps"]
        cut += e["meta"]["thoughts_cut"]
    assert summary["thoughts_cut"] == cut and "thoughts_cut" not in summary["meta"]
    steps = sum(e["steps"] for e in episodes)
    assert summary["thoughts_cut_share"] == cut / steps
    assert summary["thought_share"] == sum(1 for e in episodes for t in e["thoughts"] if t) / steps
    # the same inputs and seeds: the same episodes
    keep = ("id", "actions", "thoughts", "observations", "success")
    assert [{k: e.get(k) for k in keep} for e in again] == [{k: e.get(k) for k in keep} for e in episodes]
    # the thought's length limit is part of a think episode's identity
    other = runner.invoke(
        cli,
        [
            "eval",
            "--policy",
            str(tiny_checkpoint),
            "--env",
            "shop",
            "-n",
            "1",
            "--max-steps",
            "1",
            "--act",
            "think",
            "--max-tokens",
            "9",
            "-q",
        ],
    )
    assert other.exit_code == 0 and json.loads(other.stdout.splitlines()[0])["id"] != episodes[0]["id"]
    # ...and so is the thought budget, given by --thought-tokens (here the same 8 tokens --max-tokens gave)
    given = runner.invoke(
        cli,
        [
            "eval",
            "--policy",
            str(tiny_checkpoint),
            "--env",
            "shop",
            "-n",
            "1",
            "--max-steps",
            "2",
            "--act",
            "think",
            "--max-tokens",
            "8",
            "--thought-tokens",
            "8",
            "-q",
        ],
    )
    assert given.exit_code == 0, given.output
    record = json.loads(given.stdout.splitlines()[0])
    assert record["meta"]["thought_tokens"] == {"tokens": 8, "from": "option"} and record["id"] == episodes[0]["id"]
    assert record["actions"] == episodes[0]["actions"] and record["thoughts"] == episodes[0]["thoughts"]


def test_branch_proposals_carry_their_thoughts(runner, tiny_checkpoint, tmp_path):
    out, stats = tmp_path / "b.jsonl", tmp_path / "stats.json"
    result = runner.invoke(
        cli,
        [
            "branch",
            str(DATA / "trajectories.jsonl"),
            "--propose",
            "policy",
            "--policy",
            str(tiny_checkpoint),
            "--act",
            "think",
            "--max-tokens",
            "6",
            "-k",
            "2",
            "--steps",
            "0",
            "-o",
            str(out),
            "--stats",
            str(stats),
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    proposed = [a for r in records for a in r["alternatives"] if a["source"] == "policy"]
    assert proposed and all(isinstance(a.get("thought"), str) and a["thought"] for a in proposed)
    assert all(r["meta"]["act"] == "think" for r in records)
    assert json.loads(stats.read_text()).get("thoughts_cut", 0) <= 2 * len(records)


# --- think means think: the prefill, the budget from the card, the shares and the warning -------------------------


class CharPolicy(ModelPolicy):
    """A character-level "model" that answers as one trained on IL and SR examples together does: from the bare
    prompt it answers `Action:` at once (the IL mode, which greedy decoding chose at most steps before the prefill),
    and after `Thought:` it writes `thought`, then its action. A token is a character; the ranking favours `up`, and
    `submit` at 3."""

    backend = "chars"
    name = spec = "chars"

    def __init__(self, thought: str = " the count is below the target, so up.", **kwargs):
        super().__init__(act="think", **kwargs)
        self.thought = thought
        self.budgets: list[int] = []

    def encode_chat(self, messages, add_generation_prompt=True):
        text = "".join(f"\x02{m['role']}\n{m['content']}\x01" for m in messages)
        return [ord(c) for c in text + ("\x02assistant\n" if add_generation_prompt else "")]

    def context_size(self):
        return 1 << 20

    def is_stop(self, token):
        return token == 1

    def _generate_ids(self, ids, *, seed, temperature, top_p, max_tokens):
        self.budgets.append(max_tokens)
        text = "".join(map(chr, ids))
        reply = f"{self.thought}\nAction: up" if text.endswith("Thought:") else "Action: up"
        return (reply[:max_tokens], "length") if len(reply) > max_tokens else (reply, "stop")

    def _logliks(self, ids, candidates):
        want = "submit" if "Current observation:\ncount 3" in "".join(map(chr, ids)) else "up"
        return [0.0 if want in "".join(map(chr, c)) else -1.0 for c in candidates]


class UpDown(Env):
    """Count up to 3, then submit."""

    name, version, splits, max_steps = "updown", "1", ("test",), 6

    def tasks(self, split):
        return [{"id": f"t{i}", "split": "test", "goal": "reach 3"} for i in range(3)]

    def reset(self, task):
        self.count, self.done = 0, False
        return "count 0"

    def step(self, action):
        if action == "submit":
            self.done = True
            return "submitted", 1.0, True, {"valid": True}
        self.count += 1 if action == "up" else -1
        return f"count {self.count}", 0.0, False, {"valid": True}

    def admissible(self):
        return ["down", "submit", "up"]

    def expert(self, task):
        return ["up"] * 3 + ["submit"]

    def success(self):
        return self.done and self.count == 3

    def score(self):
        return float(self.success())


def think_run(policy, **settings):
    """The episodes of an --act think eval of `policy` on UpDown, and their summary (with the run's meta, as
    eexp.stages.evaluate.stage.evaluate writes it)."""
    from eexp.stages.evaluate.episode import episode_id
    from eexp.stages.evaluate.runner import Runner
    from eexp.stages.evaluate.settings import EvalSettings
    from eexp.stages.evaluate.summary import summarize

    env = UpDown()
    s = EvalSettings(env_name="updown", policy_spec=policy.spec, act="think", **settings)
    with Runner(s, 1, env=env, policy=policy) as runner:
        tasks = env.tasks("test")
        episodes = [e for e, _ in runner.map([(t, episode_id(s, t, runner.description)) for t in tasks])]
    summary = summarize(episodes, env="updown", policy=policy.name)
    summary["meta"] = {k: v for k, v in episodes[0]["meta"].items() if k != "thoughts_cut"}
    return episodes, summary


def test_every_step_of_a_think_eval_has_a_thought():
    """A model that would answer `Action:` at once from the bare prompt thinks at every step: the reply is begun
    with `Thought:`."""
    from eexp.stages.evaluate.summary import format_summary, thought_warnings

    episodes, summary = think_run(CharPolicy())
    steps = sum(e["steps"] for e in episodes)
    assert steps >= 12
    for e in episodes:
        assert e["success"] and e["thoughts"] == ["the count is below the target, so up."] * e["steps"]
        assert e["meta"]["thoughts_cut"] == 0
    assert (
        summary["thought_steps"],
        summary["thought_share"],
        summary["thoughts_cut"],
        summary["thoughts_cut_share"],
    ) == (steps, 1.0, 0, 0.0)
    assert "thoughts  100.0% of steps had one" in format_summary(summary)
    # no card: the thought may take --max-tokens, and the run says so (no warning about cuts)
    assert summary["meta"]["thought_tokens"] == {"tokens": 256, "from": "max_tokens"}
    assert [w.split(":")[1].strip() for w in thought_warnings(summary)] == ["--act think"]


def test_the_cut_share_is_reported_and_past_5_percent_warned():
    policy = CharPolicy(thought=" " + "and so on " * 10)  # 101 characters, then `Action: up`
    episodes, summary = think_run(policy, thought_tokens=50)
    assert set(policy.budgets) == {50}  # every thought asked for at most --thought-tokens
    steps = sum(e["steps"] for e in episodes)
    assert all(e["meta"]["thoughts_cut"] == e["steps"] for e in episodes)
    assert (summary["thoughts_cut"], summary["thoughts_cut_share"], summary["thought_share"]) == (steps, 1.0, 1.0)
    from eexp.stages.evaluate.summary import format_summary, thought_warnings

    assert f"100.0% cut ({steps} never reached `Action:` within 50 tokens (--thought-tokens)" in format_summary(summary)
    warnings = thought_warnings(summary)
    assert len(warnings) == 1 and warnings[0].startswith(
        f"warning: {steps} of {steps} thoughts (100.0%, more than 5%) were cut at the thought budget of 50 tokens"
    )
    # a budget the thoughts fit in: nothing cut, nothing said
    episodes, summary = think_run(CharPolicy(thought=" " + "and so on " * 10), thought_tokens=120)
    assert summary["thoughts_cut"] == 0 and thought_warnings(summary) == []


def test_the_budget_comes_from_the_card_with_a_margin():
    from eexp.policies.base import thought_budget

    class Carded(CharPolicy):
        def trained_thought_tokens(self):
            return 80

    assert (thought_budget(80), thought_budget(10), thought_budget(400)) == (100, 26, 500)
    policy = Carded()
    episodes, summary = think_run(policy)
    assert set(policy.budgets) == {100}
    assert summary["meta"]["thought_tokens"] == {"tokens": 100, "from": "card", "trained": 80}
    # --thought-tokens wins over the card, and the budget is part of the episode's identity
    again, _ = think_run(Carded(), thought_tokens=60)
    assert again[0]["meta"]["thought_tokens"] == {"tokens": 60, "from": "option", "trained": 80}
    assert again[0]["id"] != episodes[0]["id"] and again[0]["actions"] == episodes[0]["actions"]


def test_eval_warns_when_thoughts_are_cut(runner, tiny_checkpoint):
    result = runner.invoke(
        cli,
        [
            "eval",
            "--policy",
            str(tiny_checkpoint),
            "--env",
            "shop",
            "-n",
            "2",
            "--max-steps",
            "2",
            "--act",
            "think",
            "--thought-tokens",
            "2",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    episodes = [json.loads(line) for line in result.stdout.splitlines()]
    steps = sum(e["steps"] for e in episodes)
    assert sum(e["meta"]["thoughts_cut"] for e in episodes) == steps  # 2 tokens reach no `Action:`
    assert (
        f"eexp: warning: {steps} of {steps} thoughts (100.0%, more than 5%) were cut at the thought budget of 2 "
        f"tokens" in result.stderr
    )
    assert "100.0% cut" in result.stderr and "thoughts " in result.stderr
    refused = runner.invoke(cli, ["eval", "--policy", "random", "--env", "shop", "-n", "1", "--thought-tokens", "9"])
    assert refused.exit_code == 2 and "--thought-tokens is the budget of the thought that --act think" in refused.output


def sr_examples(path: Path) -> list[dict]:
    """IL examples of the test trajectories made SR-shaped (`Thought: ...` then `Action: ...`), thoughts of growing
    length, and one IL example left as it is."""
    from eexp.io import read_records
    from eexp.stages.imitation import imitation_examples

    examples = [
        e for t in read_records([DATA / "trajectories.jsonl"]) for e in imitation_examples(t, Serializer(), True)
    ][:6]
    for i, e in enumerate(examples[1:], 1):
        answer = e["messages"][-1]
        answer["content"] = format_action(
            answer["content"].split("Action: ", 1)[1], thought="I look at the page and choose. " * i
        )
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return examples


def test_finetune_records_the_longest_thought_and_eval_takes_its_budget_from_it(
    runner, tiny_checkpoint, tmp_path, stub
):
    from eexp.card import Card, read_card, read_model_card, write_card
    from eexp.policies.base import thought_budget
    from eexp.policies.chat import longest_thought

    examples = sr_examples(tmp_path / "sr.jsonl")
    out = tmp_path / "sr"
    result = runner.invoke(
        cli,
        [
            "finetune",
            str(tmp_path / "sr.jsonl"),
            "--model",
            str(tiny_checkpoint),
            "-o",
            str(out),
            "--max-steps",
            "1",
            "--batch-size",
            "6",
            "--max-length",
            "1024",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    policy = load_policy(str(out), act="think")
    tokens = lambda text: len(policy.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    longest = max(longest_thought(e["messages"], tokens) for e in examples)
    # the longest thought, `Thought:` through the line break before `Action:`
    last = examples[-1]["messages"][-1]["content"]
    assert longest == tokens(last[: last.index("Action:")]) > 30
    assert read_card(out).thought_tokens == longest == policy.trained_thought_tokens()
    # an IL-only run records none
    assert longest_thought(examples[0]["messages"], tokens) == 0
    # eval takes the budget from the card
    result = runner.invoke(
        cli, ["eval", "--policy", str(out), "--env", "shop", "-n", "1", "--max-steps", "1", "--act", "think", "-q"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["meta"]["thought_tokens"] == {"tokens": thought_budget(longest), "from": "card", "trained": longest}
    # ...and over HTTP, from the card of the model the server names (vLLM lists the folder it serves)
    folder = tmp_path / "served"
    folder.mkdir()
    write_card(folder, Card(command="finetune", thought_tokens=40))
    assert read_model_card(folder).thought_tokens == 40
    # a GGUF carries it in its metadata (eexp export copies the card), as llama.cpp hands it back: a string
    assert Card.from_gguf(Card(thought_tokens=40).gguf_fields(), "x.gguf").thought_tokens == 40
    server = stub("llamacpp", model_id=str(folder), free_text=il_and_sr)
    result = runner.invoke(
        cli, ["eval", "--policy", server.url, "--env", "shop", "-n", "1", "--max-steps", "2", "--act", "think", "-q"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["meta"]["thought_tokens"] == {"tokens": 56, "from": "card", "trained": 40}
    assert record["meta"]["card"] == str(folder)
    thoughts = [
        c for c in server.chats if c.get("continue_final_message") and c["messages"][-1]["content"] == "Thought:"
    ]
    assert len(thoughts) == record["steps"] and {c["max_tokens"] for c in thoughts} == {56}


def il_and_sr(body: dict) -> str:
    """A stub model trained on IL and SR examples: `Action:` at once from the bare prompt, a thought after
    `Thought:`."""
    if body.get("continue_final_message") and body["messages"][-1]["content"] == "Thought:":
        return " the page shows the results, so I look closer.\nAction: click[back to search]"
    return "Action: click[back to search]"


def test_every_step_of_a_think_eval_over_http_has_a_thought(runner, stub):
    server = stub("llamacpp", echoes=True, free_text=il_and_sr)  # llama-server: answers with the message continued
    result = runner.invoke(
        cli,
        [
            "eval",
            "--policy",
            server.url,
            "--env",
            "shop",
            "-n",
            "2",
            "--max-steps",
            "3",
            "--act",
            "think",
            "--thought-tokens",
            "300",
        ],
    )
    assert result.exit_code == 0, result.output
    episodes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"id"')]
    steps = sum(e["steps"] for e in episodes)
    assert steps >= 4
    for e in episodes:
        assert e["thoughts"] == ["the page shows the results, so I look closer."] * e["steps"]
        assert e["meta"]["thoughts_cut"] == 0 and e["invalid_actions"] == 0
        assert e["meta"]["thought_tokens"] == {"tokens": 300, "from": "option"}
    # each step: the thought, continuing `Thought:` (up to the budget), then the action, continuing the thought
    begun = [c for c in server.chats if c.get("continue_final_message") and c["messages"][-1]["content"] == "Thought:"]
    assert len(begun) == steps and {c["max_tokens"] for c in begun} == {300}
    assert "100.0% of steps had one" in result.stderr and "0.0% cut" in result.stderr


@pytest.mark.parametrize("reply, kind", [(" up", "action"), ("", "empty")])
def test_thoughts_that_stop_short_of_the_budget_are_not_told_to_take_a_larger_one(reply, kind):
    """A model that answers `Thought:` with its action (as the demo's SR did: `search[...]`, then the end of its
    reply) or with nothing never reaches `Action:`, well inside the budget: the warning says what it wrote instead,
    and does not advise a larger --thought-tokens, which would change nothing."""
    from eexp.stages.evaluate.summary import thought_warnings

    class NoThought(CharPolicy):
        def _generate_ids(self, ids, *, seed, temperature, top_p, max_tokens):
            if "".join(map(chr, ids)).endswith("Thought:"):
                return reply, "stop"
            return super()._generate_ids(ids, seed=seed, temperature=temperature, top_p=top_p, max_tokens=max_tokens)

    episodes, summary = think_run(NoThought(), thought_tokens=200)
    steps = sum(e["steps"] for e in episodes)
    assert summary["thoughts_cut"] == steps and summary["thoughts_stopped"][kind] == steps
    warnings = thought_warnings(summary)
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"warning: {steps} of {steps} thoughts (100.0%) never reached `Action:` though they "
        f"stopped short of the thought budget of 200 tokens: {steps} "
    )
    assert {"action": "an action written where the thought belongs", "empty": "the model wrote no thought"}[
        kind
    ] in warnings[0]
    assert "does not change" in warnings[0] and "give a larger --thought-tokens" not in warnings[0]
