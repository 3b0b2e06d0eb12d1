"""What several test files share: the committed records of tests/data, reading and writing JSONL, a
log-likelihood computed by hand (not with eexp's code) to check eexp's own against, and a plugin package installed
apart from this environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
from netguard import LOG_VARIABLE, pythonpath

DATA = Path(__file__).parent / "data"
OUTCOMES = str(DATA / "outcomes.jsonl")
TRAJ = str(DATA / "trajectories.jsonl")


def lines(text: str) -> list[dict]:
    return [orjson.loads(x) for x in text.splitlines() if x.strip()]


def untimed(records) -> list[dict]:
    """Copies of records without the time each was written (`meta.created_utc`, and branch's, which rollout keeps
    in `meta.branch`): what two runs of the same inputs and seeds must agree on. Two runs can straddle a second."""
    out = []
    for r in orjson.loads(orjson.dumps(list(records))):
        r["meta"].pop("created_utc", None)
        if isinstance(r["meta"].get("branch"), dict):
            r["meta"]["branch"].pop("created_utc", None)
        out.append(r)
    return out


def outcomes() -> list[dict]:
    return [json.loads(line) for line in Path(OUTCOMES).read_text().splitlines()]


def install_apart(src: Path, site: Path) -> dict[str, str]:
    """pip-installs the package folder src into the folder site (offline, without its dependencies, not into this
    environment: a plugin registers by entry point only where site is on the path), and returns the environment of a
    process that sees it: site on PYTHONPATH, this interpreter's folder on PATH. Building writes into src: give a
    copy, so that tests/ stays clean."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--target", str(site), str(src)],
        check=True,
        capture_output=True,
    )
    # the guard's log and the run's cache and offline Hub go along: the rest of the environment does not
    carried = {k: os.environ[k] for k in (LOG_VARIABLE, "EEXP_CACHE", "HF_HUB_OFFLINE") if k in os.environ}
    return {**carried, "PYTHONPATH": pythonpath(site), "PATH": str(Path(sys.executable).parent)}


class TrainedWith:
    """A policy mixin for a model "trained by eexp": serializer settings recorded with it (history 1, no admissible
    list), and every prompt it is asked kept in `prompts`, so a test can see how a stage rendered the state."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts = []

    def act(self, messages, **kwargs):
        self.prompts.append(messages[-1]["content"])
        return super().act(messages, **kwargs)

    def serializer_settings(self):
        return {"history": 1, "show_admissible": False}


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


def collate(examples, pad_id: int, device):
    """Padded rows of eexp.training.data.Encoded examples: (ids, attention mask, per-token loss weights), the plain
    batching that eexp.training.batches.collate_rows replaced (and is checked against, with `weighted_nll`)."""
    import torch

    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    weights = torch.zeros((len(examples), width), dtype=torch.float32)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        weights[row, :n] = torch.tensor(e.weights)
    return ids.to(device), mask.to(device), weights.to(device)


def weighted_nll(model, ids, mask, weights, per_example: bool = False):
    """Sum over target tokens of weight x negative log-likelihood (one sum per row with `per_example`), computing
    logits only where a target is predicted: the plain loss eexp.training.batches.example_nll replaced."""
    import torch
    import torch.nn.functional as F

    keep = torch.nonzero(weights[:, 1:].any(dim=0)).flatten()  # positions whose next token is a target
    try:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False).logits
    except TypeError:  # a model without logits_to_keep: full logits, then select
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, keep]
    labels = ids[:, keep + 1]
    w = weights[:, keep + 1]
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)
    rows = (nll * w).sum(dim=1)
    return rows if per_example else rows.sum()
