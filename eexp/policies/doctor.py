"""`eexp doctor`: does a GGUF see conversations exactly as its training tokenizer does?

One conversation is rendered through the transformers tokenizer (its chat template, the single source of truth)
and through the GGUF (its stored template, tokenized by llama.cpp). Any difference in tokens, in BOS (none, one,
never two) or in EOS (the end-of-turn token must stop generation on both sides) is reported: each is a known way
for an exported model to lose its training (template drift, double BOS, a model that never stops).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from eexp.errors import PolicyError
from eexp.policies.gguf_loader import system_report
from eexp.policies.llama import LlamaCppPolicy, local_tokenizer
from eexp.prompts import POLICY_SYSTEM, format_action

# One multi-turn conversation with the things that drift: non-ASCII text, brackets, runs of spaces and newlines,
# an assistant turn in the action format and a generation prompt after it.
CONVERSATION = [
    {"role": "system", "content": POLICY_SYSTEM},
    {
        "role": "user",
        "content": "Task: buy a café table under $40\n\nCurrent observation:\n[Search]  "
        "results: 3 items\n\tItem B07 — 'Oak table' (€35)\n\nAdmissible actions:\n"
        "search[oak table]\nclick[B07]",
    },
    {"role": "assistant", "content": format_action("click[B07]", "B07 costs 35, under 40.")},
    {"role": "user", "content": "Current observation:\nOak table, 35 euros.  Buy now?"},
]
PLAIN_TEXTS = ["hello world", "  two  spaces\nand a newline", "café — naïve 東京 🙂", "click[B07] search[x y]"]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'DIFF'}  {self.name}: {self.detail}"


def find_tokenizer(gguf_path: str, tokenizer: str | None, metadata: dict) -> str:
    """The training tokenizer: --tokenizer, or the checkpoint the GGUF was exported from (`eexp.source`)."""
    if tokenizer:
        return tokenizer
    source = metadata.get("eexp.source")
    if source and os.path.isdir(source):
        return source
    raise PolicyError(
        f"{gguf_path}: cannot tell which tokenizer it was made from "
        f"({'eexp.source ' + repr(source) + ' is not a directory' if source else 'no eexp.source'}); "
        f"give the checkpoint with --tokenizer DIR"
    )


def _first_diff(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def _show(ids: list[int], i: int, piece) -> str:
    window = ids[max(0, i - 2) : i + 3]
    return "[" + ", ".join(f"{t}:{piece(t)!r}" for t in window) + "]"


def doctor(gguf_path: str, tokenizer_dir: str | None = None, n_threads: int = 0) -> tuple[list[Check], dict]:
    """The checks and a summary ({gguf, tokenizer, ...}). Raises PolicyError when either side cannot be loaded."""

    args = {"n_ctx": "1024"}
    if n_threads:
        args["n_threads"] = str(n_threads)
    gguf = LlamaCppPolicy(gguf_path, args)
    llm = gguf.llm
    tok_dir = find_tokenizer(gguf_path, tokenizer_dir, llm.metadata)
    hf = local_tokenizer(tok_dir)
    if not hf.chat_template:
        raise PolicyError(f"{tok_dir}: the tokenizer has no chat template")

    def hf_piece(t):
        return hf.convert_ids_to_tokens(t)

    def gguf_piece(t):
        return llm._model.token_get_text(t)

    checks: list[Check] = []

    # 1. the chat template, rendered and tokenized on each side
    for label, messages, gen in (
        ("prompt (generation prompt)", CONVERSATION, True),
        ("training turns (no generation prompt)", CONVERSATION[:3], False),
    ):
        a = list(
            hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True, return_dict=True)["input_ids"]
        )
        b = gguf.encode_chat(messages, add_generation_prompt=gen)
        if a == b:
            checks.append(Check(f"tokens, {label}", True, f"{len(a)} tokens identical"))
        else:
            i = _first_diff(a, b)
            text_a = hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
            text_b = gguf.render(messages, gen)
            why = (
                "the templates render different text"
                if text_a != text_b
                else "same text, tokenized differently (pre-tokenizer or merges)"
            )
            checks.append(
                Check(
                    f"tokens, {label}",
                    False,
                    f"{len(a)} vs {len(b)} tokens, first difference at {i} ({why}): "
                    f"transformers {_show(a, i, hf_piece)} vs gguf {_show(b, i, gguf_piece)}",
                )
            )

    # 2. plain text through both tokenizers (no template, no special tokens)
    bad = []
    for text in PLAIN_TEXTS:
        a = hf.encode(text, add_special_tokens=False)
        b = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if a != b:
            bad.append(f"{text!r}: {a} vs {b}")
    checks.append(Check("tokens, plain text", not bad, "; ".join(bad) or f"{len(PLAIN_TEXTS)} texts identical"))

    # 3. BOS: the same token, added (or not) the same way, and never twice in a rendered prompt
    hf_bos = hf.bos_token_id
    hf_adds = bool(hf("x")["input_ids"][:1] == [hf_bos]) if hf_bos is not None else False
    g_bos = llm.token_bos()
    g_adds = bool(llm._model.add_bos_token()) and g_bos >= 0
    rendered = gguf.encode_chat(CONVERSATION)
    double = g_bos >= 0 and rendered[:2] == [g_bos, g_bos]
    same = hf_adds == g_adds and (not hf_adds or hf_bos == g_bos)
    checks.append(
        Check(
            "BOS",
            same and not double,
            f"transformers adds {hf_piece(hf_bos) if hf_adds else 'none'}, gguf adds "
            f"{gguf_piece(g_bos) if g_adds else 'none'}"
            + ("; the rendered prompt starts with two BOS" if double else ""),
        )
    )

    # 4. EOS: the same token; and the token that ends an assistant turn stops generation on both sides
    hf_eos = hf.eos_token_id
    g_eos = llm.token_eos()
    checks.append(
        Check(
            "EOS",
            hf_eos == g_eos,
            f"transformers {hf_piece(hf_eos) if hf_eos is not None else None} ({hf_eos}), "
            f"gguf {gguf_piece(g_eos) if g_eos >= 0 else None} ({g_eos})",
        )
    )
    prompt = gguf.encode_chat(CONVERSATION[:2])
    turn = gguf.encode_chat(CONVERSATION[:3], add_generation_prompt=False)[len(prompt) :]
    ends = [t for t in turn if gguf.is_stop(t)]
    if not ends:
        checks.append(
            Check(
                "end of turn",
                False,
                "an assistant turn contains no token that stops generation in llama.cpp: the model would never stop",
            )
        )
    else:
        end = ends[0]
        hf_stops = ({hf_eos} if hf_eos is not None else set()) | _generation_eos(tok_dir)
        checks.append(
            Check(
                "end of turn",
                end in hf_stops,
                f"an assistant turn ends with {gguf_piece(end)} ({end}), which is "
                f"{'' if end in hf_stops else 'not '}an EOS of the transformers model",
            )
        )

    report = system_report()
    summary = {
        "gguf": gguf_path,
        "tokenizer": tok_dir,
        "architecture": gguf.architecture,
        "cpu_flags": report["cpu_flags"],
        "buffers": llm.eexp_buffers.describe(),
        "llama_cpp": report["llama_cpp"],
        "ok": all(c.ok for c in checks),
    }
    gguf.close()
    return checks, summary


def _generation_eos(directory: str) -> set[int]:
    """eos_token_id of generation_config.json (an int or a list), which transformers' generate stops on."""
    try:
        with open(os.path.join(directory, "generation_config.json")) as f:
            eos = json.load(f).get("eos_token_id")
    except (OSError, ValueError):
        return set()
    return set(eos) if isinstance(eos, list) else {eos} if isinstance(eos, int) else set()
