"""One way to shorten a state that does not fit: training (--max-length) and inference (the context size) call the
same `eexp.prompts.fit_messages`, so a long state reaches the model as it was trained on it, its task intact."""

from __future__ import annotations

import pytest

from eexp.policies import load_policy
from eexp.prompts import Serializer, fit_messages, shorten
from eexp.training.data import encode

STATE = {
    "goal": "buy a blue shirt under 30 dollars",
    "observation": "results for shirt\n" + "\n".join(f"[shirt {i}] ${10 + i}" for i in range(30)),
    "history": [{"observation": f"page {i} " * 10, "action": f"click[{i}]"} for i in range(10)],
    "admissible": [f"click[shirt {i}]" for i in range(30)],
}


def user(messages):
    return messages[1]["content"]


def test_shorten_drops_the_oldest_step_then_clips_and_never_the_task():
    messages = Serializer(history=10).policy_messages(STATE)
    once = shorten(messages)
    assert "click[0]" not in user(once) and "click[1]" in user(once)
    assert "(1 earlier step not shown)" in user(once)
    assert "(2 earlier steps not shown)" in user(shorten(once))
    steps = [messages]
    while (shorter := shorten(steps[-1])) is not None:
        steps.append(shorter)
    last = user(steps[-1])
    assert "(10 earlier steps not shown)" in last and "Action: click[" not in last
    assert last.startswith("Task: buy a blue shirt under 30 dollars\n")  # every step kept the task whole
    assert len(last) < len(user(steps[11]))  # after the history, the sections shrank
    assert all(m[0] == messages[0] for m in steps)  # and the system prompt never changed


def test_multi_turn_loses_its_oldest_pair_first():
    turns = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
    ]
    assert shorten(turns) == [turns[0], turns[3]]
    # a conversation of states loses its oldest turns first too: its last state stays
    state = Serializer(history=10).policy_messages(STATE)[1]
    states = [turns[0], state, turns[2], state]
    assert shorten(states) == [states[0], states[3]]


def test_observation_loss_example_keeps_its_state_and_action():
    """An `imitation-data --observation-loss` example (the state, its action, a question, the next observation) is
    shortened in its state, never by losing its first pair: the observation it teaches depends on that state. The
    pair was dropped first once, leaving the observation to be learnt from the question alone."""
    from eexp.stages.imitation import OBSERVATION_PROMPT

    state, action = Serializer(history=10).policy_messages(STATE), {"role": "assistant", "content": "Action: click[3]"}
    example = [*state, action, {"role": "user", "content": OBSERVATION_PROMPT}, {"role": "assistant", "content": "x"}]
    steps = [example]
    while (shorter := shorten(steps[-1])) is not None:
        steps.append(shorter)
    assert len(steps) > 11  # the ten history steps, then the sections clipped
    for shortened in steps:
        assert len(shortened) == 5 and shortened[2:] == example[2:] and shortened[0] == example[0]
        assert user(shortened).startswith("Task: buy a blue shirt under 30 dollars\n")
    assert "(10 earlier steps not shown)" in user(steps[-1])


def test_fit_messages_stops_at_the_budget():
    messages = Serializer(history=10).policy_messages(STATE)
    length = lambda m: sum(len(x["content"]) for x in m)  # noqa: E731
    fitted, steps = fit_messages(messages, length, 1200)
    assert length(fitted) <= 1200 < length(shorten_n(messages, steps - 1)) and steps > 0
    assert fit_messages(messages, length, 10**6) == (messages, 0)


def shorten_n(messages, n):
    for _ in range(n):
        messages = shorten(messages)
    return messages


@pytest.mark.parametrize("max_length", [200, 400, 900])
def test_training_and_eval_render_a_long_state_identically(tiny_checkpoint, max_length):
    """The tokens training keeps before the target are the prompt eval gives the model at the same budget."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    prompt = Serializer(history=10).policy_messages(STATE)
    example = encode(tokenizer, prompt + [{"role": "assistant", "content": "Action: click[shirt 3]"}], max_length)
    assert example.truncated and len(example.ids) <= max_length
    trained_prompt = example.ids[: example.weights.index(next(w for w in example.weights if w))]
    assert "Task: buy a blue shirt under 30 dollars" in tokenizer.decode(trained_prompt)

    policy = load_policy(str(tiny_checkpoint), {"n_ctx": str(len(trained_prompt) + 16)}, max_tokens=16)
    _, eval_prompt = policy.fit(prompt, reserve=16)
    assert eval_prompt == trained_prompt
