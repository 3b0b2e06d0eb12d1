"""The assistant-only training mask and the policies' prompts on the chat templates of the families users bring
(issue 34, point 3): Qwen3's (`<think>` blocks; the reasoning of earlier turns dropped from the history) and
Gemma-3's (no system role: the system prompt goes into the first user turn; `model` instead of `assistant`; a BOS
written by the template). The templates are written here from the models' published tokenizer configurations (the
tool-call branches of Qwen3's left out), on eexp's tiny tokenizer with the families' special tokens added.

What is asserted for each: the tokens trained (weight > 0) are exactly the assistant's reply and its end of turn, as
the template renders them; everything before the reply is, token for token, the prompt that a policy builds for
that state (transformers' `apply_chat_template` with the generation prompt, and eexp's own rendering of a GGUF's
template), so a model is trained on the prompts it will be asked with.
"""

from __future__ import annotations

import pytest

from eexp.training.data import encode, encode_many

# Qwen3 (Qwen/Qwen3-*'s tokenizer_config.json chat_template, without its tool-call branches).
QWEN3 = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' and message.content is string and "
    "not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}"
    "{%- endif %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- else %}{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + "
    "content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# Gemma-3 (google/gemma-3-*-it's tokenizer_config.json chat_template, text content only).
GEMMA3 = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

STATE = [
    {"role": "system", "content": "You act in a text environment. Answer with `Action: <action>`."},
    {"role": "user", "content": "Task: buy a red shirt.\nObservation: [1] red shirt, $24.99"},
]


@pytest.fixture(scope="module")
def tokenizers(tiny_checkpoint):
    """eexp's tiny tokenizer dressed as each family: its special tokens and its template."""
    from transformers import AutoTokenizer

    base = tiny_checkpoint
    qwen3 = AutoTokenizer.from_pretrained(base)
    qwen3.add_tokens(["<think>", "</think>"])  # Qwen3's are added tokens, not special ones
    qwen3.chat_template = QWEN3
    gemma3 = AutoTokenizer.from_pretrained(base)
    gemma3.add_special_tokens(
        {"bos_token": "<bos>", "eos_token": "<end_of_turn>", "additional_special_tokens": ["<start_of_turn>"]}
    )
    gemma3.chat_template = GEMMA3
    return {"qwen3": qwen3, "gemma3": gemma3}


def _trained(tok, enc) -> list[str]:
    """The trained spans, decoded, one string per run of trained tokens."""
    runs, current = [], []
    for i, w in zip(enc.ids, enc.weights):
        if w:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r) for r in runs]


def _prompt_ids(tok, messages) -> list[int]:
    """What a transformers policy feeds for this state (eexp.policies.hf encode_chat)."""
    return list(
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )


def _gguf_prompt_text(tok, messages) -> str:
    """What a GGUF policy renders for this state (eexp.policies.llama: the GGUF's template, its special tokens)."""
    from eexp.policies.chat import render_chat_template

    special = {k: v for k, v in (("bos_token", tok.bos_token), ("eos_token", tok.eos_token)) if v}
    return render_chat_template(tok.chat_template, messages, add_generation_prompt=True, **special)


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_one_state_trains_the_reply_on_the_prompt_a_policy_builds(family, tokenizers):
    tok = tokenizers[family]
    messages = STATE + [{"role": "assistant", "content": "Action: click[1]"}]
    enc = encode(tok, messages, max_length=512)
    first = enc.weights.index(1.0)
    if family == "qwen3":  # the last turn always carries a (here empty) thought block
        assert _trained(tok, enc) == ["<think>\n\n</think>\n\nAction: click[1]<|im_end|>"]
    else:  # no end-of-turn newline, role `model`
        assert _trained(tok, enc) == ["Action: click[1]<end_of_turn>"]
    prompt = _prompt_ids(tok, STATE)
    assert enc.ids[:first] == prompt
    assert tok.decode(prompt) == _gguf_prompt_text(tok, STATE)
    if family == "gemma3":
        text = tok.decode(prompt)
        assert text.startswith("<bos><start_of_turn>user\n" + STATE[0]["content"] + "\n\n" + STATE[1]["content"])
        assert text.endswith("<start_of_turn>model\n") and "system" not in text
        assert enc.ids.count(tok.bos_token_id) == 1  # the template's BOS, not a second one from the tokenizer
        assert enc.system_tokens == 1  # no system turn of its own: only the BOS precedes the first user turn


def test_qwen3_reasoning_of_the_last_turn_is_trained(tokenizers):
    tok = tokenizers["qwen3"]
    reply = "<think>\nThe red shirt is the first result.\n</think>\n\nAction: click[1]"
    enc = encode(tok, STATE + [{"role": "assistant", "content": reply}], max_length=512)
    assert _trained(tok, enc) == [reply + "<|im_end|>"]
    from eexp.prompts import parse_reply

    assert parse_reply(reply)[0] == "click[1]"  # the action is read past the think block


def test_qwen3_earlier_reasoning_is_dropped_from_history(tokenizers):
    """Qwen3 drops the reasoning of turns before the last user message. Training on such a turn as it was
    generated cannot be expressed in one rendering: eexp refuses rather than mask the wrong text, and with that turn
    marked `weight: 0` trains the last turn on the history as Qwen3 shows it (no earlier reasoning anywhere)."""
    tok = tokenizers["qwen3"]
    turns = [
        {"role": "user", "content": "Task: buy a red shirt.\nObservation: search page"},
        {"role": "assistant", "content": "<think>\nSearch first.\n</think>\n\nAction: search[red shirt]"},
        {"role": "user", "content": "Observation: [1] red shirt, $24.99"},
        {"role": "assistant", "content": "<think>\nThe first result fits.\n</think>\n\nAction: click[1]"},
    ]
    with pytest.raises(ValueError, match="rewrites history"):
        encode(tok, turns, max_length=512)
    turns[1]["weight"] = 0
    enc = encode(tok, turns, max_length=512)
    assert _trained(tok, enc) == ["<think>\nThe first result fits.\n</think>\n\nAction: click[1]<|im_end|>"]
    text = tok.decode(enc.ids)
    assert "Search first." not in text and "<|im_start|>assistant\nAction: search[red shirt]<|im_end|>" in text
    first = enc.weights.index(1.0)
    assert enc.ids[:first] == _prompt_ids(tok, [{k: v for k, v in m.items() if k != "weight"} for m in turns[:3]])


def test_gemma3_multi_turn_trains_every_model_turn(tokenizers):
    tok = tokenizers["gemma3"]
    turns = [
        *STATE,
        {"role": "assistant", "content": "Action: search[red shirt]"},
        {"role": "user", "content": "Observation: [1] red shirt, $24.99"},
        {"role": "assistant", "content": "Action: click[1]\n"},
    ]  # the template trims content
    enc = encode(tok, turns, max_length=512)
    assert _trained(tok, enc) == ["Action: search[red shirt]<end_of_turn>", "Action: click[1]<end_of_turn>"]
    first_of_last = max(i for i, w in enumerate(enc.weights) if w and not enc.weights[i - 1])
    assert enc.ids[:first_of_last] == _prompt_ids(tok, turns[:4])
    with pytest.raises(Exception, match="alternate"):  # the template's own rule: no two user turns in a row
        encode(
            tok,
            [*STATE, {"role": "user", "content": "again"}, {"role": "assistant", "content": "Action: x"}],
            max_length=512,
        )


def _each_alone(tok, conversations, max_length, truncate=True) -> list:
    results = []
    for messages in conversations:
        try:
            results.append(encode(tok, messages, max_length, truncate))
        except Exception as e:
            results.append(e)
    return results


def _same(a, b) -> bool:
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    return a == b


@pytest.mark.parametrize("family", ["chatml", "qwen3", "gemma3"])
def test_encoding_many_at_once_gives_each_what_encoding_it_alone_gives(family, tokenizers, tiny_checkpoint):
    """finetune encodes its files through encode_many (each distinct piece tokenized once, in one batched call):
    the same ids, weights and offsets as `encode` one conversation at a time, and the same error in the place of
    a conversation that cannot be encoded (nothing to learn, a template's own refusal, history rewritten), with
    shortened over-long ones and pieces shared between conversations (the system prompt, a repeated reply)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint) if family == "chatml" else tokenizers[family]
    long_state = [STATE[0], {"role": "user", "content": "Task: buy a red shirt.\nObservation: " + "[1] shirt " * 60}]
    conversations = [
        STATE + [{"role": "assistant", "content": "Action: click[1]"}],
        STATE + [{"role": "assistant", "content": "Action: click[1]"}],  # the same again: every piece repeats
        STATE + [{"role": "assistant", "content": "Action: back"}],
        STATE + [{"role": "assistant", "content": "Action: x", "weight": 0}],  # nothing to learn
        long_state + [{"role": "assistant", "content": "Action: click[1]"}],  # over the short limit below
        [
            *STATE,
            {"role": "assistant", "content": "Action: search[red shirt]", "weight": 0.5},
            {"role": "user", "content": "Observation: [1] red shirt, $24.99"},
            {"role": "assistant", "content": "Action: click[1]"},
        ],
        [*STATE, {"role": "user", "content": "again"}, {"role": "assistant", "content": "Action: x"}],  # gemma3: no
        [
            {"role": "user", "content": "Task: buy a red shirt."},
            {"role": "assistant", "content": "<think>\nSearch.\n</think>\n\nAction: search[red shirt]"},
            {"role": "user", "content": "Observation: [1] red shirt"},
            {"role": "assistant", "content": "Action: click[1]"},
        ],  # qwen3: the first turn's reasoning is dropped from the history
    ]
    for max_length, truncate in ((512, True), (60, True), (60, False)):
        alone = _each_alone(tok, conversations, max_length, truncate)
        many = encode_many(tok, conversations, max_length, truncate)
        assert len(many) == len(conversations)
        assert all(_same(a, b) for a, b in zip(alone, many)), (family, max_length, truncate)
    kinds = [type(r).__name__ for r in _each_alone(tok, conversations, 60)]
    assert kinds.count("Encoded") >= 5 and "ValueError" in kinds  # the comparison covered both
    assert any(r.truncated for r in encode_many(tok, conversations, 60) if not isinstance(r, Exception))


@pytest.mark.parametrize("family", ["chatml", "qwen3", "gemma3"])
def test_a_policy_tokenizes_candidate_turns_as_it_tokenizes_each_whole(family, tokenizers, tiny_checkpoint):
    """--act score's candidates: TransformersPolicy.encode_turns tokenizes the shared prompt once and each turn's
    rest after the prompt's last added token, and gives the ids of each turn tokenized whole, on each family's
    template (the reply's own special-looking text, spaces and accents included); a split point the tokenizer does
    not split at is caught by the check and every turn is tokenized whole from then on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eexp.policies.hf import TransformersPolicy

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint) if family == "chatml" else tokenizers[family]
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    policy = TransformersPolicy.from_model(model, tok, spec=str(tiny_checkpoint), device="cpu")
    replies = ["Action: click[1]", "Action: back", " Action:  spaced ", 'Action: say "<|im_end|>"', "Action: café", "x"]
    prompts = [
        STATE,
        [*STATE, {"role": "assistant", "content": "Action: search[red shirt]"}, {"role": "user", "content": "Obs: 1"}],
    ]
    assert policy._split_tokens  # the fast path is on for these tokenizers
    for prompt in prompts:
        whole = [
            policy.encode_chat(prompt + [{"role": "assistant", "content": r}], add_generation_prompt=False)
            for r in replies
        ]
        assert policy.encode_turns(prompt, replies) == whole
    policy._split_tokens = ("Tas",)  # inside a word of the prompt: no tokenizer splits there
    assert policy.encode_turns(STATE, replies) == [
        policy.encode_chat(STATE + [{"role": "assistant", "content": r}], add_generation_prompt=False) for r in replies
    ]
    assert policy._split_tokens == ()
