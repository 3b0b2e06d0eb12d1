"""`eexp init-model`: a small transformers checkpoint from scratch, with no network.

A byte-level BPE tokenizer is trained with `tokenizers` on the given corpus (plain text, or the text fields of
eexp's JSONL records), a ChatML chat template and special tokens are attached, and a randomly initialized Qwen2 or
Llama model of a fixed size is saved next to it (safetensors). These models know nothing; they exist so that tests
and CPU demos can run the whole loop (finetune -> export -> llama.cpp) offline and fast.

Tokenizer conventions (the GGUF export writes the same ones, so llama.cpp and transformers agree):
- special tokens: `<|endoftext|>` (id 0, padding), `<|im_start|>` (1), `<|im_end|>` (2, end of a turn = eos);
- no BOS token is added, for either architecture (as Qwen2 does): a sequence starts with its first real token;
- text is NFC-normalized, then split with Qwen2's regex and mapped to bytes: exactly Qwen2's tokenizer, which
  transformers substitutes for any `qwen2` checkpoint anyway. llama.cpp's "qwen2" pre-tokenizer does the same
  split but no NFC step, so the two agree on all NFC text (what nearly all text is), as with real Qwen2 GGUFs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import yaml

from eexp import __version__
from eexp.card import Card, write_card
from eexp.errors import ModelError
from eexp.io import Reader, make_parent_folders
from eexp.models.pretrain import PretrainSettings
from eexp.models.pretrain import pretrain as pretrain_lm
from eexp.prompts import Serializer, format_action, format_observation

ARCHITECTURES = ("qwen2", "llama")

PAD_TOKEN, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]

# ChatML. Kept to plain Jinja (no transformers-only tags) so llama-cpp-python's Jinja2 formatter renders it too.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2's pre-tokenizer regex (llama.cpp: LLAMA_VOCAB_PRE_TYPE_QWEN2): digits one by one, words with a leading
# non-letter, punctuation runs, newlines apart.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class Size:
    vocab: int  # BPE target; the real vocabulary can be smaller on a small corpus
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    context: int


# Widths: multiples of 32 (q8_0 blocks) for tiny, of 256 (K-quant super-blocks) for small, so `small` takes every
# quant type and `tiny` every type but the K-quants.
SIZES = {
    "tiny": Size(vocab=1024, hidden=64, intermediate=128, layers=2, heads=2, kv_heads=1, context=2048),
    "small": Size(vocab=4096, hidden=256, intermediate=768, layers=4, heads=4, kv_heads=2, context=4096),
}

# Used when no corpus is given, so `eexp init-model OUT` works alone, and always added to the corpus: the prompt text
# eexp itself writes, made by eexp.prompts (so it is never a stale copy of the prompts), plus a little of the language
# of text environments.
_EXAMPLE_STATE = {
    "goal": "buy a red cotton shirt under 30 dollars",
    "history": [
        {"observation": "You are on the search page.", "action": "search[red cotton shirt]"},
        {"observation": "Results: [1] red cotton shirt, $24.99 [2] blue wool sweater, $45.00", "action": "click[1]"},
        {"observation": "Red cotton shirt. Price: $24.99. Sizes: small, medium, large.", "action": "click[small]"},
        {"observation": "You selected size small. Buttons: buy now, back.", "action": "click[back]"},
    ],
    "observation": "Results: [1] red cotton shirt, $24.99 [2] blue wool sweater, $45.00",
    "admissible": ["search[red shirt]", "click[1]", "click[2]", "click[back]", "click[buy now]"],
}
_ENVIRONMENT_TEXT = """\
Task: put a clean apple in the fridge.
Observation: You are in the kitchen. You see a counter, a sink 1, a fridge 1 and a table 1. On the table is an apple.
Action: take apple from table 1
Observation: You pick up the apple from the table 1.
Action: go to sink 1
Action: clean apple with sink 1
Observation: You clean the apple using the sink 1.
Action: go to fridge 1
Action: open fridge 1
Observation: You open the fridge 1. The fridge 1 is empty.
Action: put apple in/on fridge 1
Observation: Nothing happens. That action is not valid here.
Reflection: Opening the fridge first was right; taking the apple before cleaning it would have failed the task.
Numbers 0 1 2 3 4 5 6 7 8 9 10 25 100 2025, and symbols: ( ) [ ] { } < > : ; , . ! ? ' " - _ / \\ | @ # $ % & * + =
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
"""


def _builtin_text() -> str:
    """The system prompts, a state rendered by the default Serializer (every section, and the line for the one of
    its four history steps it leaves out), the reply formats, then the environment text."""
    system, user = Serializer().policy_messages(_EXAMPLE_STATE)
    world_system = Serializer().world_model_messages(_EXAMPLE_STATE, "click[1]", rendered=user["content"])[0]
    texts = [
        system["content"],
        user["content"],
        world_system["content"],
        format_action("click[1]", "The first result is red, cotton and under 30 dollars, so I open it."),
        format_observation("Red cotton shirt. Price: $24.99. Sizes: small, medium, large."),
    ]
    return "\n".join(texts) + "\n" + _ENVIRONMENT_TEXT


BUILTIN_TEXT = _builtin_text()

# JSONL record keys whose string values are text a model will read or write (trajectories, branches, outcomes,
# examples, episodes).
TEXT_KEYS = {
    "observation",
    "action",
    "goal",
    "final_observation",
    "next_observation",
    "content",
    "admissible",
    "actions",
    "observations",
    "reflection",
    "prefix",
}


def _strings(value, keep: bool) -> Iterator[str]:
    """The text in a JSON value: strings found under TEXT_KEYS (at any depth)."""
    if isinstance(value, str):
        if keep:
            yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, keep)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, keep or key in TEXT_KEYS)


def corpus_texts(sources: Iterable[str]) -> Iterator[str]:
    """Texts from files: a `.jsonl` (or `.jsonl.gz`) file gives its records' text fields, read as every stage reads
    records (a line that is not a JSON object is `FILE:LINE: what is wrong`); any other file gives its records' text
    fields when every line is a JSON object, else its lines."""
    for source in sources:
        path = Path(source)
        if not path.is_file():
            raise ModelError(f"{source}: no such corpus file")
        if source.endswith((".jsonl", ".jsonl.gz")):
            for item in Reader([source]):
                yield from _strings(item.record, False)
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ModelError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        records = []
        for line in lines:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                records = None
                break
        if records and all(isinstance(r, dict) for r in records):
            for record in records:
                yield from _strings(record, False)
        else:
            yield from lines


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE `tokenizers.Tokenizer` with the special tokens at ids 0, 1, 2."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Always include the built-in text so the prompt words eexp writes are single tokens even on a tiny corpus.
    tok.train_from_iterator(list(texts) + BUILTIN_TEXT.splitlines(), trainer=trainer)
    return tok


def _fast_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
        model_max_length=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(arch: str, size: Size, vocab: int):
    common = dict(
        vocab_size=vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.context,
        bos_token_id=None,
        eos_token_id=SPECIAL_TOKENS.index(IM_END),
        pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        rms_norm_eps=1e-6,
    )
    if arch == "qwen2":
        from transformers import Qwen2Config

        # Tied input/output embeddings, as the small Qwen2 models have.
        return Qwen2Config(tie_word_embeddings=True, **common)
    from transformers import LlamaConfig

    return LlamaConfig(tie_word_embeddings=False, **common)


def init_model(
    out_dir: str | os.PathLike,
    arch: str = "qwen2",
    size: str = "tiny",
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    pretrain: Iterable[str] | None = None,
    pretrain_settings=None,
    progress=None,
) -> Path:
    """Write a fresh checkpoint directory: model (safetensors), config, tokenizer with chat template,
    `config.yaml` recording how it was made (arch, size, seed, corpus, sizes, special tokens) and the model card
    (`card.yaml`: init-model, the eexp version, from_scratch). Returns the directory. Same inputs and seed, same
    weights.

    With `pretrain` (corpus files, as for `corpus`), the tokenizer is trained on them too and the model is then
    pretrained on their text as a language model (`eexp.models.pretrain`, `pretrain_settings`); the record of it
    goes into config.yaml and the card under `pretrain`."""
    if arch not in ARCHITECTURES:
        raise ModelError(f"unsupported architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})")
    if size not in SIZES:
        raise ModelError(f"unknown size {size!r} (sizes: {', '.join(SIZES)})")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out}: is a file; init-model writes a new folder")
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out}: already exists and is not empty")
    import torch
    from transformers import AutoModelForCausalLM

    spec = SIZES[size]
    corpus = list(corpus or [])
    pretrain = list(pretrain or [])
    pretrain_texts = list(corpus_texts(pretrain))
    tok = train_tokenizer(list(corpus_texts(corpus)) + pretrain_texts, spec.vocab)
    fast = _fast_tokenizer(tok)
    config = _config(arch, spec, len(fast))

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    pretrained = None
    if pretrain:
        settings = pretrain_settings or PretrainSettings(seed=seed)
        try:
            pretrained = pretrain_lm(model, fast, pretrain_texts, settings, progress)
        except ValueError as e:
            raise ModelError(f"--pretrain: {e}") from None
        pretrained = {"corpus": [c if Path(c).is_file() else "<text>" for c in pretrain], **pretrained}

    make_parent_folders(str(out))
    # Build beside the target and rename, so a failed run never leaves a half checkpoint behind.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        fast.save_pretrained(tmp)
        resolved = {
            "eexp_version": __version__,
            "command": "init-model",
            "arch": arch,
            "size": size,
            "seed": seed,
            "corpus": [c if Path(c).is_file() else "<text>" for c in corpus],
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(fast),
            "bos": None,
            "eos": IM_END,
            "pad": PAD_TOKEN,
        }
        if pretrained:
            resolved["pretrain"] = pretrained
        (tmp / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        write_card(tmp, Card(command="init-model", eexp_version=__version__, from_scratch=True, pretrain=pretrained))
        if out.exists():
            if not out.is_dir() or any(out.iterdir()):
                raise ModelError(f"{out}: already exists and is not empty")
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
