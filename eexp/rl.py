"""`eexp rl`: GRPO-style reinforcement learning from an eexp checkpoint, on one workstation (paper §5.3, Fig. 3).

A recipe next to the supervised one (eexp/training.py), not a second framework: `RL` subclasses `Finetune` and
reuses its model loading (full, LoRA, continuing a LoRA adapter, a GGUF imported once), its checkpoints (weights as
safetensors, optimizer/scheduler/RNG state, written to a temporary name and renamed), `--resume`, metrics.jsonl,
final save and `--export-gguf`. What differs is where the examples come from:

    for step in 1..--max-steps:                     (one step = one rollout batch and its updates)
        tasks  = a seeded permutation of the split, --tasks-per-step of them (a pure function of seed and step)
        groups = --group-size episodes per task, sampled from the current weights by eval's own episode loop
                 (eexp.stages.evaluate.Evaluator) over the transformers policy on the in-memory model
        reward = the environment's success (1/0), score, or both summed, at the end of the episode
        A      = group-relative advantage: (r - mean of the group) / (std of the group), every step of the episode
        update = --ppo-epochs passes over the steps of groups whose rewards differ, in --minibatches seeded chunks,
                 each one optimizer update of a clipped policy-gradient loss (+ --kl-coef x KL to the start)

Episodes are seeded by (seed, step, task, k) through `derive_seed`, the generation calls fork torch's RNG with their
own seed, and the model stays in eval mode (no dropout: the old and new log-probabilities are computed by the same
deterministic function), so a run killed and `--resume`d from its last checkpoint gives the weights and metrics of
an uninterrupted run.

Where the time goes (bench/bench_rl.py): the episodes of a group start in the same state and often pass through
the same later ones (with `--history 0`, as the CPU recipes train, a state is its page), so the live policy scores a
state once per weights (`scores_for`, forgotten at each update) and tokenizes a prompt once; the update computes the
samples with the same inputs once (`same_inputs`: one forward and backward, each sample its own decision,
advantage and ratio), and packs the distinct ones into a few forward passes (`packed_logprobs`: each prompt once,
its candidate replies or sampled reply beside it under a 4D mask, at most PACK_TOKENS tokens a pass; part by part
with the prompt's KV cache where the model's attention takes no custom mask). The old log-probabilities of a single
on-policy update are the update's own (no extra pass), and the policy is built once over the weights being trained.

Before the first update the first rollout batch is the probe: when none of its sampled episodes succeeds, every
group has one reward, there is no signal to learn from, and the run stops with advice (start from an IL, IWM or SR
checkpoint; verl-agent issue #41) unless `--allow-zero-start`.

What "the tokens the policy produced" and the PPO ratio mean in each action mode
--------------------------------------------------------------------------------
`--act generate` (open action spaces): the reply's sampled tokens. Per token t, logp_t = log softmax(logits / T) of
the sampled token, ratio_t = exp(logp_t(new) - logp_t(old)), the clipped surrogate is averaged over every trained
token of the minibatch (token-level mean), and the KL term is the k3 estimator exp(q - p) - (q - p) - 1 per token
(q: the reference model's log-prob). A reply that does not parse is still trained on (usually with a negative
advantage).

`--act score` (closed action spaces: the admissible actions are every valid action): the policy that acted is
pi(a|s) = softmax over the admissible a' of l(a')/T, where l(a) is the summed log-likelihood of the reply
`Action: a` (end of turn included) after the prompt: eval's `--act score` at temperature T. The tokens trained are
the chosen reply's, and its log-likelihood l(a) enters the loss, but the ratio is taken of the probability the
action was actually drawn with:

    ratio = pi_new(a|s) / pi_old(a|s) = exp((l_new(a) - l_old(a)) / T - (logZ_new - logZ_old)),
    logZ = logsumexp over the admissible a' of l(a')/T

not exp(l_new(a) - l_old(a)). The reply's raw likelihood ratio is not the probability of the decision: an update can
raise l of every candidate together (say, of the shared "Action: click[" prefix) and leave the choice unchanged, and
that ratio would still move and be clipped; or it can leave l(a) alone and lower every rival, changing the choice a
lot with a ratio of 1, unclipped. It is also not a valid importance weight for the later minibatches of a step,
which are off-policy. Normalizing over the admissible set makes the clip bound the change of the decision itself,
and the gradient is (grad l(a) - sum_a' pi(a') grad l(a')) / T: the chosen reply up, its rivals down in proportion
to how likely they were. The cost is a forward pass over every admissible reply at each trained state (the prompt
computed once and shared, as eval's scoring does), and the KL term is exact: KL(pi_new || pi_ref) over the set.

`--act think` (a model that reasons before it acts, as eval's think mode): the sampled thought tokens (those before
the reply's `Action:` line, or all of them when it never got there) are trained per token as in generate; then, in a
closed action space, the decision over the admissible replies after prompt + thought, as in score (its context is
the template's own tokenization of the thought, as the policy chose it); in an open one, every sampled token of the
reply and of the action generated after it. Every unit (thought token, decision) has its own ratio and enters the
token-level mean.

`--act constrained` is not offered: the exact probability of a trie-constrained sample needs each token's
renormalization over the allowed tokens; use score for closed action spaces.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import orjson

from eexp import __version__
from eexp.training import Finetune, FinetuneConfig, TrainingError, UsageProblem, from_scratch

REWARDS = ("success", "score", "success+score")
PACK_TOKENS = 4096  # tokens in one packed forward pass of the update (rows x longest row): bounds its memory (9 GiB
#                   for a 0.5B-parameter shape in bf16 with its 152k vocabulary, measured on an H100)
ENCODE_CACHE_SIZE = 50_000  # tokenized prompts and replies the live policy remembers (then it starts over)
RL_ACT_MODES = ("score", "generate", "think")
# Options that may differ between a run and its --resume without changing the result.
RESUME_FREE = {"resume", "quiet", "export_gguf", "quant", "save_every", "keep_checkpoints"}
ZERO_START_ADVICE = ("RL learns only from groups whose episodes differ, and with no success every group is all "
                     "failures (verl-agent issue #41: RL cannot start from 0% success). Start from an IL, IWM or SR "
                     "checkpoint that succeeds some of the time when sampled (`eexp finetune`, more updates if it "
                     "does not; `eexp eval --temperature 1` shows it), or pass --allow-zero-start to try anyway "
                     "(with --reward score partial scores can still differ)")


@dataclass
class RLConfig:
    model: str
    output: str
    env: str
    env_kwargs: dict = field(default_factory=dict)
    split: str = "train"
    tasks: int | None = None           # the first N tasks of the split (None: all)
    group_size: int = 8
    tasks_per_step: int = 4
    max_steps: int = 50                # RL steps: one rollout batch and its updates each
    act: str | None = None             # None: score where the environment's action set is closed, else generate
    temperature: float = 1.0
    max_tokens: int = 64               # generate mode: most tokens per reply
    episode_steps: int | None = None   # None: the environment's max_steps
    reward: str = "success"
    scale_rewards: bool = True         # divide the advantages by the group's std (GRPO); off: Dr. GRPO
    clip: float = 0.2
    kl_coef: float = 0.0
    ppo_epochs: int = 1
    minibatches: int = 1
    lr: float | None = None
    lr_scheduler: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: float = 32
    seed: int = 0
    save_every: int = 10
    keep_checkpoints: int = 1
    allow_zero_start: bool = False
    precision: str = "auto"
    trust_remote_code: bool = False
    export_gguf: bool = False
    quant: str = "q8_0"
    resume: bool = False
    quiet: bool = False

    def default_lr(self, start_from_scratch: bool, method: str) -> float:
        """1e-6 for full RL of a pretrained model (verl's GRPO default), 1e-5 with LoRA, 1e-4 for a model whose
        weights began random (`eexp init-model`): the supervised rates divided by ten."""
        if self.lr is not None:
            return self.lr
        if start_from_scratch and method == "full":
            return 1e-4
        return 1e-6 if method == "full" else 1e-5


# --- the policy over the live weights ---------------------------------------------------------------------------

def live_policy_class():
    """TransformersPolicy over a model already in memory (the weights being trained), recording what each call
    produced: the prompt ids and the candidate replies (score) or the sampled reply ids (generate)."""
    from eexp.policies.files import read_checkpoint_serializer
    from eexp.policies.hf import TransformersPolicy

    class LivePolicy(TransformersPolicy):
        def __init__(self, model, tokenizer, *, start: str, act: str, max_tokens: int, device):
            from eexp.policies.chat import ModelPolicy
            import torch
            ModelPolicy.__init__(self, act, max_tokens, 1.0)
            self.spec = start
            self.name = os.path.basename(os.path.normpath(start))
            self.adapter, self.base = None, start
            self.tokenizer, self.model, self.torch, self.device = tokenizer, model, torch, device
            self.n_ctx = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
            self.batch_size = 64
            eos = model.generation_config.eos_token_id
            eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
            if tokenizer.eos_token_id is not None:
                eos.append(tokenizer.eos_token_id)
            self.stop_ids = sorted(set(eos))
            self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
                (self.stop_ids[0] if self.stop_ids else 0)
            self.sha256 = ""
            self._serializer = read_checkpoint_serializer(start)
            self._cache_key, self._cache = None, None
            self.trace: list[dict] = []
            self._calls: list[dict] = []
            self._encoded: dict[bytes, tuple[int, ...]] = {}
            self._scores: dict[tuple, list[float]] = {}

        def serializer_settings(self):
            return self._serializer

        def weights_changed(self) -> None:
            """After an update: no cached prompt KV or scores of the old weights may be used again."""
            self._cache_key, self._cache, self._score_cache = None, None, None
            self._scores.clear()

        def forget(self) -> None:
            """Every cache, tokens included (for measurements that repeat the same episodes)."""
            self.weights_changed()
            self._encoded.clear()

        def encode_chat(self, messages, add_generation_prompt=True):
            """The template's ids, remembered: a group's episodes revisit the same states, and scoring tokenizes
            every admissible reply after the prompt (tokens do not depend on the weights, so this outlives an
            update; bounded)."""
            key = orjson.dumps([messages, add_generation_prompt])
            ids = self._encoded.get(key)
            if ids is None:
                if len(self._encoded) >= ENCODE_CACHE_SIZE:
                    self._encoded.clear()
                ids = self._encoded[key] = tuple(super().encode_chat(messages, add_generation_prompt))
            return list(ids)

        def scores_for(self, ids, candidates):
            """Eval's scoring, remembered for every state of the weights in use: the episodes of a group start in
            the same state and often reach the same later ones (the same function of the same weights gives the
            same numbers, so a hit changes nothing; forgotten at each update)."""
            self._calls.append({"mode": "score", "ids": list(ids), "candidates": [list(c) for c in candidates]})
            key = (tuple(ids), tuple(map(tuple, candidates)))
            if key not in self._scores:
                self._scores[key] = super().scores_for(ids, candidates)
            return self._scores[key]

        def _run_generate(self, ids, *, seed, temperature, top_p, max_tokens, allowed=None):
            torch = self.torch
            kwargs = dict(max_new_tokens=max_tokens, eos_token_id=self.stop_ids or None, pad_token_id=self.pad_id,
                          do_sample=temperature > 0, repetition_penalty=1.0, use_cache=True,
                          past_key_values=self._prefix_cache(ids))
            if temperature > 0:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
            else:
                kwargs.update(temperature=None, top_p=None)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [],
                                       device_type=self.device.type), torch.no_grad():
                torch.manual_seed(seed)
                out = self.model.generate(input_ids=self._tensor([ids]),
                                          attention_mask=self._tensor([[1] * len(ids)]), **kwargs)
            new = out[0, len(ids):].tolist()
            finish = "stop" if new and self.is_stop(new[-1]) else "length"
            self._calls.append({"mode": "generate", "ids": list(ids), "reply": new})
            return self.tokenizer.decode(new, skip_special_tokens=True), finish

        def sample(self, messages, *, admissible, seeds, temperature=1.0, context=None):
            """One action (RL asks for one seed at a time), and a trace record of the tokens it produced."""
            self._calls = []
            mode = self.mode_for(admissible, context)
            replies = super().sample(messages, admissible=admissible, seeds=seeds, temperature=temperature,
                                     context=context)
            calls, reply = self._calls, replies[0]
            if mode == "think":
                first = calls[0]
                if calls[-1]["mode"] == "score":
                    # closed: the thought is the sampled tokens before the reply's `Action:` line (all of them when
                    # it never got there); the decision is then taken over the admissible replies after it
                    parts = [{**first, "reply": self._before_action(first["reply"])},
                             {**calls[-1], "chosen": admissible.index(reply.action)}]
                else:  # open: every sampled token (thought and action line), and the action generated after it
                    parts = calls
                record = {"mode": "think", "parts": [p for p in parts if p["mode"] == "score" or p["reply"]]}
            elif calls:
                record = calls[-1]
                if mode == "score":
                    record["chosen"] = admissible.index(reply.action)
            else:
                return replies
            self.trace.append(record)
            return replies

        def _before_action(self, reply: list[int]) -> list[int]:
            """The longest prefix of the sampled tokens whose text ends before the first `Action:` line."""
            from eexp.policies.chat import ACTION_LINE
            found = ACTION_LINE.search(self.tokenizer.decode(reply, skip_special_tokens=True))
            if not found:
                return reply
            j = 0
            while j < len(reply) and len(self.tokenizer.decode(reply[:j + 1], skip_special_tokens=True)) \
                    <= found.start():
                j += 1
            return reply[:j]

    return LivePolicy


# --- the loss ---------------------------------------------------------------------------------------------------

def candidate_logliks(model, ids: list[int], candidates: list[list[int]], device, pad_id: int):
    """l(a) for every candidate reply: the sum of log p(reply tokens | prompt), as a tensor that carries gradients
    when they are enabled. The prompt's KV is computed once and shared by the candidates (as eval's scoring does)."""
    import torch
    prefix = torch.tensor([ids[:-1]], dtype=torch.long, device=device)
    cache = model(input_ids=prefix, use_cache=True).past_key_values if len(ids) > 1 else None
    if cache is not None:
        cache.batch_repeat_interleave(len(candidates))
    width = max(len(c) for c in candidates) + 1
    rows = [[ids[-1]] + c + [pad_id] * (width - 1 - len(c)) for c in candidates]
    mask = [[1] * (len(ids) - 1) + [1] * (len(c) + 1) + [0] * (width - 1 - len(c)) for c in candidates]
    logits = model(input_ids=torch.tensor(rows, device=device), attention_mask=torch.tensor(mask, device=device),
                   past_key_values=cache, use_cache=cache is not None).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for i, cand in enumerate(candidates):
        positions = torch.arange(len(cand), device=device)
        out.append(logp[i, positions, torch.tensor(cand, device=device)].sum())
    return torch.stack(out)


def reply_logprobs(model, ids: list[int], reply: list[int], device, temperature: float):
    """log softmax(logits / T) of each sampled reply token after the prompt (per token, with gradients)."""
    import torch
    row = torch.tensor([ids + reply], dtype=torch.long, device=device)
    logits = model(input_ids=row, use_cache=False).logits[0, len(ids) - 1:len(ids) + len(reply) - 1].float()
    logp = torch.log_softmax(logits / max(temperature, 1e-6), dim=-1)
    return logp.gather(1, torch.tensor(reply, device=device)[:, None])[:, 0]


def sample_parts(sample: dict) -> list[dict]:
    """What one step produced, as parts the loss scores: a score decision, generated tokens, or for think the
    thought's tokens and then the decision (or the generated action)."""
    return sample["parts"] if sample["mode"] == "think" else [sample]


def part_logprobs(model, part: dict, device, pad_id: int, temperature: float) -> tuple:
    """(log-probabilities of the part's units, its distribution or None), one part at a time: the score part's
    decision (log pi(a|s), pi = softmax(l / T) over the admissible replies) and that distribution, or the generated
    tokens' log-probabilities."""
    import torch
    if part["mode"] == "score":
        logits = candidate_logliks(model, part["ids"], part["candidates"], device, pad_id) / max(temperature, 1e-6)
        logpi = torch.log_softmax(logits, dim=-1)
        return logpi[part["chosen"]].reshape(1), logpi
    return reply_logprobs(model, part["ids"], part["reply"], device, temperature), None


def packable(model) -> bool:
    """Whether `packed_logprobs` can run the model: attention that takes a custom 4D mask (sdpa, eager)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) in ("sdpa", "eager")


def packed_logprobs(model, parts: list[dict], device, temperature: float) -> list[tuple]:
    """What `part_logprobs` gives for each part, from one forward pass over all of them.

    Each part is one row: its prompt, then every continuation but its last token (a score part's candidate
    replies, a generated part's reply), each continuation seeing the prompt and itself only (a 4D mask) at the
    positions it has after the prompt. The first token of every continuation is predicted from the prompt's last
    position, as with the shared KV cache of `candidate_logliks`; the prompt is computed once per part. Rows are
    left-padded, so the logits kept (`logits_to_keep`) run from the last prompt token of the longest tail."""
    import torch
    rows, tails = [], []
    for part in parts:
        ids = list(part["ids"])
        tokens, positions, segments, targets = list(ids), list(range(len(ids))), [0] * len(ids), []
        for k, cont in enumerate(part["candidates"] if part["mode"] == "score" else [part["reply"]], 1):
            first = len(tokens)
            tokens += cont[:-1]
            positions += range(len(ids), len(ids) + len(cont) - 1)
            segments += [k] * (len(cont) - 1)
            targets.append(([len(ids) - 1, *range(first, first + len(cont) - 1)], cont))
        rows.append((tokens, positions, segments, targets))
        tails.append(len(tokens) - len(ids) + 1)
    width, keep = max(len(r[0]) for r in rows), max(tails)
    pad = [width - len(r[0]) for r in rows]
    tokens = torch.tensor([[0] * n + r[0] for n, r in zip(pad, rows)], dtype=torch.long, device=device)
    positions = torch.tensor([[0] * n + list(r[1]) for n, r in zip(pad, rows)], dtype=torch.long, device=device)
    segments = torch.tensor([[-1] * n + r[2] for n, r in zip(pad, rows)], dtype=torch.long, device=device)
    index = torch.arange(width, device=device)
    real = segments >= 0
    allowed = (index[None, None, :] <= index[None, :, None]) & real[:, None, :] & real[:, :, None] & (
        (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None]))
    allowed |= torch.eye(width, dtype=torch.bool, device=device)  # a padding position sees itself (no empty row)
    mask = allowed[:, None]
    if model.config._attn_implementation == "eager":  # an additive mask
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    logits = model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=False,
                   logits_to_keep=keep).logits.float()
    out = []
    for b, (part, row) in enumerate(zip(parts, rows)):
        base = width - keep - pad[b]  # row position -> index into the kept logits
        score = part["mode"] == "score"
        logp = torch.log_softmax(logits[b] if score else logits[b] / max(temperature, 1e-6), dim=-1)
        per_cont = [logp[torch.tensor(at, device=device) - base, torch.tensor(cont, device=device)]
                    for at, cont in row[3]]
        if score:
            logpi = torch.log_softmax(torch.stack([t.sum() for t in per_cont]) / max(temperature, 1e-6), dim=-1)
            out.append((logpi[part["chosen"]].reshape(1), logpi))
        else:
            out.append((per_cont[0], None))
    return out


def batch_logprobs(model, samples: list[dict], device, pad_id: int, temperature: float) -> list[list[tuple]]:
    """For each sample, [(its part's unit log-probabilities, its distribution or None)] (see `part_logprobs`):
    one forward pass for all of them where the model can be packed, else one part at a time."""
    parts = [p for s in samples for p in sample_parts(s)]
    if packable(model):
        flat = packed_logprobs(model, parts, device, temperature)
    else:
        flat = [part_logprobs(model, p, device, pad_id, temperature) for p in parts]
    out, i = [], 0
    for s in samples:
        n = len(sample_parts(s))
        out.append(flat[i:i + n])
        i += n
    return out


def action_logprobs(model, sample: dict, device, pad_id: int, temperature: float):
    """(log-probabilities of every unit the step produced, [(its part's log-probabilities, its distribution or
    None)]).

    A score part is one unit, log pi(a|s) with pi = softmax(l / T) over the admissible replies, and carries that
    distribution's log-probabilities (for the exact KL); a generated part is one unit per reply token."""
    import torch
    out = batch_logprobs(model, [sample], device, pad_id, temperature)[0]
    return torch.cat([logp for logp, _ in out]), out


def pack_tokens(sample: dict) -> int:
    """The length of a sample's longest packed row (`packed_logprobs`)."""
    return max(len(p["ids"]) + sum(len(c) - 1 for c in (p["candidates"] if p["mode"] == "score" else [p["reply"]]))
               for p in sample_parts(sample))


def pack_chunks(groups: list[tuple[dict, list[dict]]], budget: int) -> list[list[tuple[dict, list[dict]]]]:
    """Consecutive groups of `same_inputs` in chunks whose packed pass holds at most `budget` tokens (rows x the
    longest row; a group alone may exceed it)."""
    chunks, rows, longest = [], 0, 0
    for g in groups:
        n, width = len(sample_parts(g[0])), pack_tokens(g[0])
        if chunks and chunks[-1] and (rows + n) * max(longest, width) > budget:
            chunks.append([])
            rows, longest = 0, 0
        if not chunks:
            chunks.append([])
        chunks[-1].append(g)
        rows, longest = rows + n, max(longest, width)
    return chunks


def sample_key(sample: dict) -> tuple:
    """What a step's log-probabilities are computed from (prompt ids, candidate replies or sampled tokens, per part),
    without the decision taken: samples with one key share one forward pass."""
    return tuple((p["mode"], tuple(p["ids"]),
                  tuple(map(tuple, p["candidates"])) if p["mode"] == "score" else tuple(p["reply"]))
                 for p in sample_parts(sample))


def same_inputs(samples: list[dict]) -> list[tuple[dict, list[dict]]]:
    """The samples grouped by `sample_key`, in order of first appearance: [(the first of a group, its members)]."""
    groups: dict[tuple, list[dict]] = {}
    for s in samples:
        groups.setdefault(sample_key(s), []).append(s)
    return [(members[0], members) for members in groups.values()]


def chosen_units(parts: list[tuple], sample: dict):
    """A sample's unit log-probabilities from the `parts` of `action_logprobs` over its inputs (perhaps computed for
    another sample with the same inputs): its own decision's log pi for a score part, the tokens for a generated
    one."""
    import torch
    return torch.cat([dist[part["chosen"]].reshape(1) if part["mode"] == "score" else logp
                      for part, (logp, dist) in zip(sample_parts(sample), parts)])


def unit_count(sample: dict) -> int:
    return sum(1 if p["mode"] == "score" else len(p["reply"]) for p in sample_parts(sample))


def clipped_surrogate(logp_new, logp_old, advantage: float, clip: float):
    """PPO's clipped objective as a loss (per unit: action or token), and which units were clipped."""
    import torch
    ratio = torch.exp(logp_new - logp_old)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantage
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float() if advantage else torch.zeros_like(loss)


def group_advantages(rewards: list[float], scale: bool) -> list[float]:
    """GRPO: each episode's reward minus its group's mean, divided by the group's std (population) when `scale`."""
    mean = sum(rewards) / len(rewards)
    centred = [r - mean for r in rewards]
    if not scale:
        return centred
    std = math.sqrt(sum(c * c for c in centred) / len(centred))
    return [c / (std + 1e-6) for c in centred]


def episode_reward(episode: dict, kind: str) -> float:
    success = 1.0 if episode["success"] else 0.0
    if kind == "success":
        return success
    if kind == "score":
        return float(episode["score"])
    return success + float(episode["score"])


def step_tasks(tasks: list[dict], seed: int, step: int, per_step: int) -> list[dict]:
    """The tasks of RL step `step` (1-based): consecutive slices of seeded permutations of the split, one
    permutation per pass. A pure function of (seed, step), so --resume needs no sampler state."""
    out = []
    for k in range((step - 1) * per_step, step * per_step):
        epoch, i = divmod(k, len(tasks))
        order = list(range(len(tasks)))
        random.Random(f"{seed}/rl-tasks/{epoch}").shuffle(order)
        out.append(tasks[order[i]])
    return out


# --- the recipe -------------------------------------------------------------------------------------------------

class RL(Finetune):
    """setup() -> train() -> finish(), with Finetune's checkpoints, resume, metrics and final save."""

    def __init__(self, rl: RLConfig, echo: Callable[[str], None] | None = None):
        self.rl = rl
        super().__init__(self._finetune_config(rl), echo)

    @staticmethod
    def _finetune_config(rl: RLConfig) -> FinetuneConfig:
        """The supervised recipe's options that load, save and resume the model. --model may be a full checkpoint
        (trained whole, or with a fresh LoRA adapter under --lora) or a LoRA adapter (trained on, on its base)."""
        model, adapter = rl.model, None
        if os.path.isfile(os.path.join(rl.model, "adapter_config.json")):
            from eexp.policies.base import PolicyError
            from eexp.policies.hf import TransformersPolicy
            try:
                model, adapter = TransformersPolicy._base_of(rl.model, ""), rl.model
            except PolicyError as e:
                raise TrainingError(str(e)) from None
        return FinetuneConfig(train_files=[], model=model, output=rl.output, lora=rl.lora or bool(adapter),
                              adapter=adapter, lora_rank=rl.lora_rank, lora_alpha=rl.lora_alpha, lora_dropout=0.0,
                              max_steps=rl.max_steps, lr=None, lr_scheduler=rl.lr_scheduler,
                              weight_decay=rl.weight_decay, max_grad_norm=rl.max_grad_norm, seed=rl.seed,
                              save_every=rl.save_every, keep_checkpoints=rl.keep_checkpoints,
                              precision=rl.precision, trust_remote_code=rl.trust_remote_code,
                              export_gguf=rl.export_gguf, quant=rl.quant, resume=rl.resume, quiet=rl.quiet)

    # -- setup --

    def setup(self) -> None:
        import torch
        from eexp.envs.base import make_env
        from eexp.stages.evaluate import EvalSettings, Evaluator, split_tasks
        rl, cfg = self.rl, self.cfg
        self._check_rl_options()
        self.acc, self.world, self.rank, self.main, self.sharded = None, 1, 0, True, False
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda"
                                                and torch.cuda.is_bf16_supported())
        self.model_cfg = self._import_base()
        from eexp.training import check_model_dir, load_model, load_tokenizer
        check_model_dir(self.model_cfg.model)
        self.env = make_env(rl.env, **rl.env_kwargs)
        self.act = rl.act or ("score" if getattr(self.env, "closed_actions", True) else "generate")
        self.tasks = split_tasks(self.env, rl.split, rl.tasks, self.echo)
        self._existed = os.path.exists(cfg.output)
        self._prepare_output()
        self.tokenizer = load_tokenizer(self.model_cfg)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (
            self.tokenizer.eos_token_id or 0)
        torch.manual_seed(rl.seed)
        random.seed(rl.seed)
        self.model = load_model(self.model_cfg, self.device, self.bf16).eval()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.cfg = replace(cfg, lr=rl.default_lr(from_scratch(self.model_cfg.model), cfg.method))
        self.reference = None
        if rl.kl_coef > 0 and not (cfg.method != "full" and not cfg.adapter):
            # A fresh LoRA adapter's reference is its base with the adapter off; otherwise a frozen copy.
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.policy = live_policy_class()(self.model, self.tokenizer, start=rl.model, act=self.act,
                                          max_tokens=rl.max_tokens, device=self.device)
        settings = EvalSettings(env_name=rl.env, policy_spec=rl.model, env_kwargs=dict(rl.env_kwargs),
                                act=self.act, max_tokens=rl.max_tokens, max_steps=rl.episode_steps,
                                temperature=rl.temperature, seed=rl.seed)
        self.evaluator = Evaluator(settings, env=self.env, policy=self.policy)
        self.serializer = self.evaluator.serializer.to_dict()
        self.updates_per_step = rl.ppo_epochs * rl.minibatches
        self.phases = [("rl", rl.max_steps * self.updates_per_step)]  # scheduler length, in optimizer updates
        self.total_steps = rl.max_steps
        self.log_every = 1
        options = {k: v for k, v in asdict(rl).items() if k not in RESUME_FREE}
        tasks = hashlib.blake2b(orjson.dumps([t["id"] for t in self.tasks]), digest_size=16).hexdigest()
        self.fingerprint = {"options": options, "data": tasks}
        self.state = {"phase": "rl", "phase_step": 0, "global_step": 0, "best_val": None, "best_step": None,
                      "fingerprint": self.fingerprint, "episodes": 0, "env_steps": 0, "probe": None}
        self.optimizer = self.scheduler = None
        if rl.resume:
            self.load_checkpoint()
            self.policy.weights_changed()
        if self.optimizer is None:
            self._new_optimizer("rl", self.phases[0][1])

    def _check_rl_options(self) -> None:
        rl = self.rl
        if rl.act is not None and rl.act not in RL_ACT_MODES:
            raise UsageProblem(f"--act {rl.act}: eexp rl acts with {' or '.join(RL_ACT_MODES)} (constrained "
                               "sampling's probabilities are not computed; use score for a closed action space)")
        if rl.reward not in REWARDS:
            raise UsageProblem(f"--reward {rl.reward}: choose from {', '.join(REWARDS)}")
        if rl.group_size < 2:
            raise UsageProblem("--group-size must be at least 2 (advantages are relative to the group)")
        if rl.temperature <= 0:
            raise UsageProblem("--temperature must be above 0: RL samples from the policy (greedy episodes of one "
                               "task are all the same)")

    # -- train --

    def train(self) -> None:
        from eexp.io import progress_bar
        bar = progress_bar(self.rl.quiet, total=self.total_steps, initial=self.state["global_step"], unit="step")
        try:
            while self.state["global_step"] < self.total_steps:
                self._rl_step(bar)
        finally:
            bar.close()

    def rollouts(self, step: int) -> list[tuple[dict, list[dict]]]:
        """The episodes of one RL step, grouped by task: [(episode record, its trace of policy calls)]."""
        from eexp.records import short_hash
        out = []
        for t, task in enumerate(step_tasks(self.tasks, self.rl.seed, step, self.rl.tasks_per_step)):
            for k in range(self.rl.group_size):
                self.policy.trace = []
                episode_id = short_hash("rl", self.rl.seed, step, t, task.get("split", ""), task["id"], k)
                episode, _ = self.evaluator.run(task, episode_id)
                out.append((episode, self.policy.trace))
        self.policy.trace = []
        return out

    def _rl_step(self, bar) -> None:
        rl = self.rl
        step = self.state["global_step"] + 1
        t0 = time.perf_counter()
        episodes = self.rollouts(step)
        rollout_s = time.perf_counter() - t0
        successes = sum(bool(e["success"]) for e, _ in episodes)
        if self.state["probe"] is None:
            self.state["probe"] = {"episodes": len(episodes), "successes": successes,
                                   "success_rate": round(successes / len(episodes), 4)}
            self.echo(f"probe (the first rollout batch, sampled at temperature {rl.temperature}): {successes} of "
                      f"{len(episodes)} episodes succeeded")
            if successes == 0 and not rl.allow_zero_start:
                self._discard_output()
                raise TrainingError(f"{rl.model}: 0 of {len(episodes)} sampled episodes on {rl.env} "
                                    f"{rl.split} succeeded. {ZERO_START_ADVICE}")
        samples = []
        rewards = [episode_reward(e, rl.reward) for e, _ in episodes]
        for g in range(0, len(episodes), rl.group_size):
            advantages = group_advantages(rewards[g:g + rl.group_size], rl.scale_rewards)
            for (episode, trace), adv in zip(episodes[g:g + rl.group_size], advantages):
                if abs(adv) > 1e-8:
                    samples += [{**s, "advantage": adv} for s in trace
                            if s["mode"] == "score" or (s["mode"] == "generate" and s["reply"])
                            or (s["mode"] == "think" and s["parts"])]
        t1 = time.perf_counter()
        stats = self._update(samples, step)
        update_s = time.perf_counter() - t1
        self.policy.weights_changed()
        env_steps = sum(e["steps"] for e, _ in episodes)
        self.state["global_step"] = self.state["phase_step"] = step
        self.state["episodes"] += len(episodes)
        self.state["env_steps"] += env_steps
        row = {"step": step, "phase": "rl", "episodes": self.state["episodes"],
               "success_rate": round(successes / len(episodes), 4),
               "mean_reward": round(sum(rewards) / len(rewards), 6),
               "mean_score": round(sum(float(e["score"]) for e, _ in episodes) / len(episodes), 6),
               "env_steps": env_steps, "samples": len(samples), **stats,
               "lr": self.scheduler.get_last_lr()[0],
               "rollout_s": round(rollout_s, 3), "update_s": round(update_s, 3),
               "episodes_per_s": round(len(episodes) / rollout_s, 3) if rollout_s > 0 else 0.0}
        self._log(row)
        bar.update(1)
        bar.set_postfix(success=f"{row['success_rate']:.2f}", loss=f"{row['loss']:.4f}")
        if step % self.cfg.save_every == 0 and step < self.total_steps:
            self.save_checkpoint()

    def _logprobs(self, model, samples: list[dict]) -> list[list[tuple]]:
        return batch_logprobs(model, samples, self.device, self.pad_id, self.rl.temperature)

    def _reference_logprobs(self, samples: list[dict]) -> list[list[tuple]]:
        if self.reference is not None:
            return self._logprobs(self.reference, samples)
        with self.model.disable_adapter():  # a fresh LoRA adapter: the start is the base without it
            return self._logprobs(self.model, samples)

    def _update(self, samples: list[dict], step: int) -> dict:
        """--ppo-epochs passes of --minibatches optimizer updates over the step's samples."""
        import torch
        rl = self.rl
        totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "units": 0}
        if not samples:
            for _ in range(self.updates_per_step):  # the schedule counts RL steps, signal or not
                self._schedule()
            return {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "updates": 0}
        with torch.no_grad():
            for chunk in pack_chunks(same_inputs(samples), PACK_TOKENS):
                reps = [rep for rep, _ in chunk]
                if self.updates_per_step > 1:  # one on-policy update: the old log-probs are the first pass's own
                    for (_, members), parts in zip(chunk, self._logprobs(self.model, reps)):
                        for s in members:
                            s["old"] = chosen_units(parts, s).detach()
                if rl.kl_coef > 0:
                    for (_, members), parts in zip(chunk, self._reference_logprobs(reps)):
                        ref = [(logp.detach(), dist.detach() if dist is not None else None) for logp, dist in parts]
                        for s in members:
                            s["ref"] = ref
        updates = 0
        for epoch in range(rl.ppo_epochs):
            order = list(range(len(samples)))
            random.Random(f"{rl.seed}/rl-minibatch/{step}/{epoch}").shuffle(order)
            size = math.ceil(len(order) / rl.minibatches)
            for m in range(rl.minibatches):
                chunk = [samples[i] for i in order[m * size:(m + 1) * size]]
                if chunk:
                    self._minibatch(chunk, totals)
                    updates += 1
                self._schedule()
        n = max(totals["units"], 1)
        return {"loss": round(totals["loss"] / n, 6), "kl": round(totals["kl"] / n, 6),
                "clip_frac": round(totals["clip_frac"] / n, 4), "updates": updates}

    def _schedule(self) -> None:
        with warnings.catch_warnings():  # a step without an update still advances the schedule: no warning
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            self.scheduler.step()

    def _minibatch(self, chunk: list[dict], totals: dict) -> None:
        """One optimizer update: the clipped surrogate (+ KL) averaged over every unit (action or token). Samples
        with the same inputs (a group's episodes share their first state, and often later ones) share one forward
        and backward pass; each keeps its own decision and advantage."""
        import torch
        rl = self.rl
        units = sum(unit_count(s) for s in chunk)
        for packed in pack_chunks(same_inputs(chunk), PACK_TOKENS):
            total = 0.0
            for (rep, members), parts in zip(packed, self._logprobs(self.model, [rep for rep, _ in packed])):
                for s in members:
                    logp = chosen_units(parts, s)
                    loss, clipped = clipped_surrogate(logp, s["old"] if "old" in s else logp.detach(),
                                                      s["advantage"], rl.clip)
                    total = total + loss.sum()
                    totals["loss"] += float(loss.detach().sum())
                    totals["clip_frac"] += float(clipped.sum())
                    totals["units"] += len(logp)
                if rl.kl_coef > 0:  # the same inputs, the same distributions: one KL, counted for every member
                    kl = 0.0
                    for (part_logp, dist), (ref_logp, ref_dist) in zip(parts, rep["ref"]):
                        if dist is not None:  # exact KL over the admissible set
                            kl = kl + (dist.exp() * (dist - ref_dist)).sum()
                        else:  # k3 per token
                            d = ref_logp - part_logp
                            kl = kl + (torch.exp(d) - d - 1).sum()
                    total = total + rl.kl_coef * len(members) * kl
                    totals["kl"] += float(kl.detach()) * len(members)
            (total / units).backward()
        torch.nn.utils.clip_grad_norm_(self.params, rl.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _discard_output(self) -> None:
        """A refused start leaves nothing behind: OUT goes if this run made it."""
        if not self._existed:
            shutil.rmtree(self.cfg.output, ignore_errors=True)

    # -- finish --

    def resolved_config(self) -> dict:
        rl = asdict(self.rl)
        for key in ("resume", "quiet"):
            rl.pop(key)
        return {**rl, "act": self.act, "lr": self.cfg.lr, "method": self.cfg.method, "serializer": self.serializer,
                "command": "rl", "start": os.path.abspath(self.rl.model),
                "base_model": self.base_gguf or os.path.abspath(self.cfg.model),
                "from_scratch": from_scratch(self.model_cfg.model), "eexp_version": __version__,
                "precision": "bf16" if self.bf16 else "fp32", "probe": self.state.get("probe"),
                "steps": self.state["global_step"], "episodes": self.state["episodes"],
                "env_steps": self.state["env_steps"]}

    def finish(self) -> None:
        super().finish()
        self.env.close()


def run_rl(rl: RLConfig, echo: Callable[[str], None] | None = None) -> RL:
    run = RL(rl, echo)
    run.setup()
    run.train()
    run.finish()
    return run


__all__ = ["RLConfig", "RL", "run_rl", "group_advantages", "clipped_surrogate", "candidate_logliks",
           "action_logprobs", "step_tasks", "TrainingError", "UsageProblem"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `eexp rl`")
