"""Where the samples come from: the transformers policy over the weights being trained (`live_policy_class`),
recording the tokens each call produced; the tasks of a step (a pure function of seed and step); episode rewards and
group-relative advantages."""

from __future__ import annotations

import math
import os
import random

import orjson

from eexp.rl.config import ENCODE_CACHE_SIZE

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

