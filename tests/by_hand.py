"""What several test files share: the committed records of tests/data, reading and writing JSONL, and a
log-likelihood computed by hand (not with eexp's code) to check eexp's own against."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

DATA = Path(__file__).parent / "data"
OUTCOMES = str(DATA / "outcomes.jsonl")
TRAJ = str(DATA / "trajectories.jsonl")


def lines(text: str) -> list[dict]:
    return [orjson.loads(x) for x in text.splitlines() if x.strip()]


def outcomes() -> list[dict]:
    return [json.loads(line) for line in Path(OUTCOMES).read_text().splitlines()]


def write(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def answer_logp(model, tok, prompt: list[dict], answer: list[dict]) -> float:
    """log p(answer | prompt): the prompt rendered with the generation prompt, the answer the rest of the rendered
    conversation (up to its end-of-turn token: the whitespace the template writes after it is no target), and the
    sum of the log-probabilities the model gives the answer's tokens, one by one."""
    import torch

    head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(prompt + answer, tokenize=False).rstrip()
    assert full.startswith(head) and full.endswith(tok.eos_token)
    context = tok(head, add_special_tokens=False)["input_ids"]
    target = tok(full[len(head) :], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context + target])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[len(context) - 1 + i, t]) for i, t in enumerate(target))
