"""Training data: chat-template masks (which tokens are trained), the budgeted shortening of long examples, reading
example files and the validation split."""

from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from eexp.errors import UsageProblem
from eexp.io import Reader
from eexp.policies.chat import longest_thought
from eexp.prompts import fit_messages
from eexp.records import expect
from eexp.training.chat_template import encode_or_reject
from eexp.training.config import FinetuneConfig


@dataclass
class Encoded:
    """One tokenized example. weights[t] is the loss weight of predicting token t (0: not trained)."""

    ids: list[int]
    weights: list[float]
    truncated: bool = False
    system_tokens: int = 0  # where the system prompt ends
    last_target: int = 0  # where the last trained span starts

    @property
    def n_targets(self) -> int:
        return sum(1 for w in self.weights if w)

    @property
    def length(self) -> int:
        """Tokens (what batches are grouped by)."""
        return len(self.ids)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def target_spans(tokenizer, messages: list[dict]) -> tuple[str, int, list[tuple[int, int, float]]]:
    """(rendered text, end of the system prompt, [(start, end, weight)] character spans to train on).

    The spans come from rendering the conversation prefix by prefix with the model's own template: an assistant
    turn's target is what `messages[:i+1]` adds to `messages[:i]` + the generation prompt. This needs no
    `{% generation %}` tags and keeps the end-of-turn token (`<|im_end|>`, `<|eot_id|>`, EOS) inside the target;
    whitespace the template puts after it is left out (nothing to learn there).
    """
    full = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        weight = m.get("weight", 1)
        if m["role"] != "assistant" or not weight:
            continue
        start = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        end = full if i == len(messages) - 1 else render(tokenizer, messages[: i + 1])
        if not (end.startswith(start) and full.startswith(end)):
            raise ValueError(
                f"the chat template does not render messages[{i}] as an extension of the turns before "
                "it, so the assistant turn cannot be located (a template that rewrites history?)"
            )
        stop = len(end.rstrip()) if end[len(start) :].strip() else len(end)
        spans.append((len(start), stop, float(weight)))
    system_end = 0
    if messages[0]["role"] == "system":
        try:
            head = render(tokenizer, messages[:1])
            system_end = len(head) if full.startswith(head) else 0
        except Exception:  # a template that refuses a system-only conversation: no protected system prompt
            system_end = 0
    return full, system_end, spans


def encode(tokenizer, messages: list[dict], max_length: int, truncate: bool = True) -> Encoded:
    """Token ids and per-token loss weights; raises ValueError (with a reason) for an example that cannot be used.

    An over-long example is shortened as inference shortens a prompt that does not fit its context
    (`eexp.prompts.fit_messages`: a multi-turn conversation's oldest turns, never those of its last state; then the
    state's oldest history steps, then its current observation; never the task), so the model trains on long states
    as it will see them. Only if that is not enough (a task or a system prompt that
    alone is over the limit, or messages that are not a rendered state) are tokens cut from the left, keeping the
    system prompt when possible. The last target is never cut.
    """
    return _fit(tokenizer, messages, _encode(tokenizer, messages), max_length, truncate)


def encode_many(tokenizer, conversations: list[list[dict]], max_length: int, truncate: bool = True) -> list:
    """`encode` of each conversation, the same Encoded, or the exception `encode` raises for it, in its place.

    Faster than one `encode` a conversation: each distinct piece of text is tokenized once (a system prompt, or a
    short target such as "Nothing happens.", recurs across thousands of examples), and all of them in one batched
    call, which a fast tokenizer spreads over its threads. Encoding is most of a fine-tune's setup on a large file
    (bench/bench_encode.py). An over-long conversation is shortened one by one, as `encode` does."""
    layouts = []
    for messages in conversations:
        try:
            layouts.append(_layout(tokenizer, messages))
        except Exception as e:  # raised where `encode` raises it: the caller decides, record by record
            layouts.append(e)
    distinct = list(dict.fromkeys(p for lay in layouts if isinstance(lay, list) for p, _, _ in lay))
    ids = dict(zip(distinct, tokenizer(distinct, add_special_tokens=False)["input_ids"])) if distinct else {}
    results = []
    for messages, lay in zip(conversations, layouts):
        try:
            if not isinstance(lay, list):
                raise lay
            results.append(_fit(tokenizer, messages, _assemble(lay, ids.__getitem__), max_length, truncate))
        except Exception as e:
            results.append(e)
    return results


def _fit(tokenizer, messages: list[dict], enc: Encoded, max_length: int, truncate: bool) -> Encoded:
    """`enc` (the encoding of `messages`), shortened as `encode` says when it is over `max_length`."""
    if len(enc.ids) <= max_length:
        return enc
    if not truncate:
        raise ValueError(f"{len(enc.ids)} tokens, over --max-length {max_length} (--no-truncate)")
    fitted, _ = fit_messages(messages, lambda m: len(_encode(tokenizer, m).ids), max_length)
    enc = _encode(tokenizer, fitted)
    enc.truncated = True
    return enc if len(enc.ids) <= max_length else _cut_left(enc, max_length)


def encode_pair(
    tokenizer, prompt: list[dict], chosen: list[dict], rejected: list[dict], max_length: int, truncate: bool = True
) -> tuple[Encoded, Encoded]:
    """The chosen and the rejected conversation (the prompt, then each side's assistant turns), encoded as `encode`
    encodes one, with one prompt: an over-long pair has its prompt shortened once, by what the longer side needs, so
    both sides are scored on the same context (and, as a last resort, cut by the same tokens from the left)."""

    def both(messages: list[dict]) -> tuple[Encoded, Encoded]:
        return _encode(tokenizer, messages + chosen), _encode(tokenizer, messages + rejected)

    pair = both(prompt)
    longest = max(len(e.ids) for e in pair)
    if longest <= max_length:
        return pair
    if not truncate:
        raise ValueError(f"{longest} tokens, over --max-length {max_length} (--no-truncate)")
    fitted, _ = fit_messages(prompt, lambda m: max(len(e.ids) for e in both(m)), max_length)
    pair = both(fitted)
    excess = max(len(e.ids) for e in pair) - max_length
    if excess > 0:  # the same prompt tokens go from both sides
        pair = tuple(_cut_left(e, len(e.ids) - excess) for e in pair)
    for e in pair:
        e.truncated = True
    return pair


def _encode(tokenizer, messages: list[dict]) -> Encoded:
    """Each piece between span boundaries is tokenized on its own, as at inference, where the prompt is tokenized and
    the answer generated after it."""
    return _assemble(_layout(tokenizer, messages), lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])


def _layout(tokenizer, messages: list[dict]) -> list[tuple[str, float, bool]]:
    """The rendered conversation cut where the loss weight changes and where the system prompt ends: (piece, its
    weight, whether the system prompt ends with it), in order."""
    text, system_end, spans = target_spans(tokenizer, messages)
    if not spans:
        raise ValueError("no assistant turn with weight != 0 (nothing to learn)")
    cuts = sorted({0, system_end, len(text), *(s for s, _, _ in spans), *(e for _, e, _ in spans)})
    return [
        (text[a:b], next((w for s, e, w in spans if s <= a and b <= e), 0.0), b == system_end)
        for a, b in zip(cuts, cuts[1:])
    ]


def _assemble(layout: list[tuple[str, float, bool]], token_ids: Callable[[str], list[int]]) -> Encoded:
    """The Encoded of a layout, each piece's ids from `token_ids`. `system_tokens` and `last_target` say where the
    system prompt ends and the last trained span starts."""
    ids: list[int] = []
    weights: list[float] = []
    system_tokens = 0
    last_target = 0
    for text, w, ends_system in layout:
        piece = token_ids(text)
        if w:
            last_target = len(ids)
        ids += piece
        weights += [w] * len(piece)
        if ends_system:
            system_tokens = len(ids)
    # Nothing after the last trained token is learned from: drop it.
    end = max(i for i, w in enumerate(weights) if w) + 1
    ids, weights = ids[:end], weights[:end]
    weights[0] = 0.0  # the first token is never predicted
    return Encoded(ids, weights, system_tokens=system_tokens, last_target=last_target)


def _cut_left(enc: Encoded, max_length: int) -> Encoded:
    """The last resort: drop tokens after the system prompt (then the system prompt too), never the last target."""
    ids, weights = enc.ids, enc.weights
    excess = len(ids) - max_length
    if excess <= enc.last_target - enc.system_tokens:
        keep = list(range(enc.system_tokens)) + list(range(enc.system_tokens + excess, len(ids)))
    elif excess <= enc.last_target:
        keep = list(range(excess, len(ids)))
    else:
        raise ValueError(
            f"the last assistant turn alone is {len(ids) - enc.last_target} tokens, over --max-length "
            f"{max_length}; raise --max-length (targets are never cut)"
        )
    ids = [ids[i] for i in keep]
    weights = [weights[i] for i in keep]
    weights[0] = 0.0
    return Encoded(ids, weights, truncated=True)


@dataclass
class Dataset:
    name: str
    examples: list[Encoded]
    truncated: int = 0
    skipped: int = 0
    serializers: Counter = field(default_factory=Counter)
    longest_thought: int = 0  # tokens of the longest `Thought: ...` target (the model card's thought_tokens)

    @property
    def tokens(self) -> int:
        return sum(e.length for e in self.examples)


def read_examples(paths: list[str], on_error: str, warn: Callable[[str], None]) -> tuple[list, Reader]:
    """Valid training-example records with where they came from; bad ones fail or are skipped (--on-error)."""
    reader = Reader(list(paths), on_error=on_error, warn=warn)
    check = expect("example")
    items = []
    for item in reader:
        problem = check(item.record)
        if problem is None and not any(
            m["role"] == "assistant" and m.get("weight", 1) for m in item.record["messages"]
        ):
            problem = "messages: every assistant turn has weight 0 (nothing to learn)"
        if problem:
            reader.reject(item.error(problem))
            continue
        items.append(item)
    return items, reader


# Conversations encoded together by encode_many: enough for its batched tokenizer call to pay, few enough that the
# distinct pieces' ids held beside the dataset stay small.
ENCODE_CHUNK = 1024


def encode_items(name: str, items, reader: Reader, tokenizer, cfg: FinetuneConfig) -> Dataset:
    data = Dataset(name, [])
    encoded = []
    for i, item in enumerate(items):
        if i % ENCODE_CHUNK == 0:
            chunk = [later.record["messages"] for later in items[i : i + ENCODE_CHUNK]]
            encoded = encode_many(tokenizer, chunk, cfg.max_length, cfg.truncate)
        result = encoded[i % ENCODE_CHUNK]
        enc = encode_or_reject(lambda: _returned(result), item, reader, cfg.model, "example")
        if enc is None:
            continue
        data.examples.append(enc)
        data.truncated += enc.truncated
        data.longest_thought = max(
            data.longest_thought,
            longest_thought(
                item.record["messages"], lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
            ),
        )
        serializer = (item.record.get("meta") or {}).get("serializer")
        if serializer:
            data.serializers[serializer] += 1
    data.skipped = reader.skipped
    if data.examples:
        warn_without_end_of_turn(tokenizer, data.examples[0], cfg.model)
    return data


def _returned(result):
    """An encode_many result as `encode` would give it: the Encoded returned, the exception raised."""
    if isinstance(result, Exception):
        raise result
    return result


def warn_without_end_of_turn(tokenizer, example: Encoded, model: str) -> None:
    """Say so when the template's assistant turn ends on no special token: the model would not learn to stop."""
    last = example.ids[max(i for i, w in enumerate(example.weights) if w)]
    if last not in set(tokenizer.all_special_ids) | {tokenizer.eos_token_id}:
        print(
            f"eexp: warning: {model}: the chat template ends an assistant turn without an end-of-turn or EOS "
            "token, so the model will not learn to stop",
            file=sys.stderr,
        )


def split_validation(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded split by trajectory (meta.trajectory_id, else source_id): steps of one trajectory share states, so
    they stay on one side and the validation loss is not measured on near-copies of training examples."""

    def group(item):
        meta = item.record.get("meta") or {}
        return str(meta.get("trajectory_id") or item.record.get("source_id") or item.record["id"])

    groups = sorted({group(i) for i in items})
    random.Random(f"val/{seed}").shuffle(groups)
    n_val = max(1, round(fraction * len(groups)))
    if n_val >= len(groups):
        raise UsageProblem(f"--val-fraction {fraction} leaves no training data ({len(groups)} trajectories)")
    held = set(groups[:n_val])
    return [i for i in items if group(i) not in held], [i for i in items if group(i) in held]
