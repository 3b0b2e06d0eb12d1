"""The transformers backend: a checkpoint directory, a Hugging Face Hub id (ORG/NAME[@REVISION], found through the
Hugging Face cache: eexp.files.resolve_hub_model), or a PEFT adapter directory whose base is named in its
adapter_config.json (a folder, or a Hub id and its revision). CUDA in bf16 where there is a GPU, CPU in fp32
otherwise; safetensors only; trust_remote_code only when asked (`--policy-arg trust_remote_code=true`).

The prompt's KV cache is computed once per state and copied for each of the K samples and for the batch of
candidate replies that score mode ranks.
"""

from __future__ import annotations

import copy
import inspect
import os

from eexp.card import read_card
from eexp.errors import HubError, PolicyError, first_line
from eexp.files import (
    content_hash,
    has_tokenizer,
    hub_id,
    read_checkpoint_serializer,
    resolve_hub_model,
    unsafe_adapter,
)
from eexp.models.adapter import base_of
from eexp.policies.args import take_args
from eexp.policies.base import MAX_TOKENS, Policy
from eexp.policies.chat import ModelPolicy

SCHEMA = {
    "device": (str, "auto"),  # auto | cpu | cuda | cuda:N
    "dtype": (str, "auto"),  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    "trust_remote_code": (bool, False),
    "n_ctx": (int, 0),  # context size (0: the model's max_position_embeddings)
    "base": (str, ""),  # an adapter's base checkpoint, overriding adapter_config.json
    "batch_size": (int, 32),  # candidate replies scored per forward pass
    "n_threads": (int, 0),  # torch CPU threads (0: torch's default)
}
# The args that change what the model sees or computes, which records say where they are not the default
# (describe()'s policy_args): the device (other kernels, and auto's dtype), the dtype, the context that clips the
# prompt, a checkpoint's own code. An adapter's base is in model_sha256; the batch of scored replies and the threads
# change only speed.
OUTPUT_ARGS = ("device", "dtype", "n_ctx", "trust_remote_code")


def output_args(opts: dict, device_type: str, dtype: str) -> dict:
    """The OUTPUT_ARGS a record names (describe()'s policy_args): those set to other than their defaults; and where
    a device was given, or auto chose one that is not the CPU, the device's kind (cuda:0 and cuda:1 compute alike)
    and the dtype it runs (auto's follows the device: bf16 on a GPU). A default run on the CPU names none, as it
    always has, so a GPU's episodes never share ids with the CPU's."""
    given = {key: opts[key] for key in OUTPUT_ARGS if opts[key] != SCHEMA[key][1]}
    if "device" in given or device_type != "cpu":
        given.update(device=device_type, dtype=dtype)
    return given


class TransformersPolicy(ModelPolicy):
    backend = "transformers"
    hub = None  # a Hub model: its id, revision and snapshot folder (eexp.files.HubModel)
    given: dict = {}  # the OUTPUT_ARGS set to other than their defaults, for describe() (none: from_model)

    def __init__(self, path: str, args: dict | None = None, *, act=None, max_tokens=MAX_TOKENS, top_p=1.0):
        super().__init__(act, max_tokens, top_p)
        opts = take_args(args, SCHEMA, self.backend)
        import torch
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # stderr is for eexp's own progress and warnings

        if opts["n_threads"] > 0:
            torch.set_num_threads(opts["n_threads"])
        self.spec = path
        self.name = os.path.basename(os.path.normpath(path))
        self.hub = None
        if hub_id(path):  # the folder is the snapshot in the Hugging Face cache; records name the id and revision
            try:
                self.hub = resolve_hub_model(path, trust_remote_code=opts["trust_remote_code"])
            except HubError as e:
                raise PolicyError(str(e)) from None
            self.name, path = self.hub.id, self.hub.path
        self.adapter = path if os.path.isfile(os.path.join(path, "adapter_config.json")) else None
        base = base_of(path, opts["base"], opts["trust_remote_code"]) if self.adapter else path
        self.base = base
        device = opts["device"]
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = opts["dtype"]
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        if dtype not in ("float32", "bfloat16", "float16"):
            raise PolicyError(f"--policy-arg dtype={dtype}: expected auto, float32, bfloat16 or float16")
        self.device = torch.device(device)
        self.given = output_args(opts, self.device.type, dtype)
        trust = opts["trust_remote_code"]
        tokenizer_dir = path if self.adapter and has_tokenizer(path) else base
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust)
            model = AutoModelForCausalLM.from_pretrained(
                base, dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=trust
            )
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            raise PolicyError(
                f"{base}: cannot load the checkpoint ({first_line(e)}); missing or corrupt files?"
            ) from None
        if not self.tokenizer.chat_template:
            raise PolicyError(
                f"{tokenizer_dir}: the tokenizer has no chat template (eexp renders every prompt "
                f"with the model's own template)"
            )
        if self.adapter:
            if why := unsafe_adapter(path):
                raise PolicyError(f"{path}: {why}")
            try:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, path).merge_and_unload()
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
                raise PolicyError(f"{path}: the adapter does not load onto {base} ({first_line(e)})") from None
        self._attach(model.to(self.device).eval(), self.tokenizer, self.device, opts["n_ctx"], opts["batch_size"])
        self.sha256 = content_hash([p for p in (self.adapter, base) if p])

    @classmethod
    def from_model(
        cls,
        model,
        tokenizer,
        *,
        spec: str,
        device,
        act=None,
        max_tokens=MAX_TOKENS,
        top_p=1.0,
        n_ctx: int = 0,
        batch_size: int = SCHEMA["batch_size"][1],
        sha256: str = "",
    ):
        """A policy over a model already in memory (the weights `eexp rl` trains, which its episodes are played
        with), as loading `spec` would give: the same prompts, stop tokens, context size and serializer settings
        (read from `spec`'s card), with nothing loaded and the model's mode (train or eval) left as it is.
        `sha256` is what records name as the model's hash (none for weights that change)."""
        policy = cls.__new__(cls)
        ModelPolicy.__init__(policy, act, max_tokens, top_p)
        policy.spec = spec
        policy.name = os.path.basename(os.path.normpath(spec))
        policy.hub = None
        policy.adapter, policy.base = None, spec
        policy._attach(model, tokenizer, device, n_ctx, batch_size)
        policy.sha256 = sha256
        return policy

    def _attach(self, model, tokenizer, device, n_ctx: int, batch_size: int) -> None:
        """The model and tokenizer to act with, and what follows from them: context size (n_ctx, or the model's
        max_position_embeddings), stop tokens (the generation config's and the tokenizer's end of sequence), pad."""
        import torch

        self.model, self.tokenizer, self.device, self.torch = model, tokenizer, device, torch
        self.n_ctx = n_ctx or int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.batch_size = max(1, batch_size)
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.stop_ids = sorted(set(eos))
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.stop_ids[0] if self.stop_ids else 0)
        )
        self._cache_key: tuple | None = None
        self._cache = None
        self._cache_arg = cache_argument(model)
        # the added tokens a text is split at as written (encode_turns): a fast tokenizer's, minus those that strip
        # the whitespace beside them, are normalized or must stand as a word
        added = getattr(tokenizer, "added_tokens_decoder", {}) if getattr(tokenizer, "is_fast", False) else {}
        self._split_tokens = tuple(
            t.content
            for t in added.values()
            if not (t.lstrip or t.rstrip or t.normalized or t.single_word) and t.content
        )

    # hooks ------------------------------------------------------------------------------------------------------
    def encode_chat(self, messages, add_generation_prompt=True):
        out = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
        )
        return list(out["input_ids"])

    def encode_turns(self, messages, replies):
        """encode_chat of `messages` followed by each reply as an assistant turn, the same ids as a call each, for
        about the price of one call: --act score ranks every admissible action (10 to 60 a step), and tokenizing each
        turn whole was a third of an ALFWorld evaluation of the tiny model. A fast tokenizer splits a text at its
        added tokens before it normalizes or tokenizes anything, so the ids up to such a token (one that strips no
        whitespace and is matched as written) are those of the text up to it, whatever follows. The turns' texts
        share the prompt: the first turn is tokenized whole, the rest of each after the last such token in the shared
        text, in one batched call. That the first turn's rest gives the tail of its whole ids is checked every time;
        where it does not, every turn is tokenized whole from then on."""
        turns = [messages + [{"role": "assistant", "content": r}] for r in replies]
        whole = [self.encode_chat(t, add_generation_prompt=False) for t in turns[:1]]
        if len(turns) < 2 or not self._split_tokens:
            return whole + [self.encode_chat(t, add_generation_prompt=False) for t in turns[1:]]
        texts = [self.tokenizer.apply_chat_template(t, add_generation_prompt=False, tokenize=False) for t in turns]
        shared = os.path.commonprefix(texts)
        cut = max((shared.rfind(t) + len(t) for t in self._split_tokens if t in shared), default=0)
        tails = self.tokenizer([text[cut:] for text in texts], add_special_tokens=False)["input_ids"] if cut else []
        head = len(whole[0]) - len(tails[0]) if tails else -1
        if head < 0 or whole[0][head:] != list(tails[0]):
            if cut:  # the tokenizer does not split there after all: whole turns from now on
                self._split_tokens = ()
            return whole + [self.encode_chat(t, add_generation_prompt=False) for t in turns[1:]]
        return whole + [whole[0][:head] + list(tail) for tail in tails[1:]]

    def context_size(self):
        return self.n_ctx

    def is_stop(self, token):
        return token in self.stop_ids

    def serializer_settings(self):
        return read_checkpoint_serializer(self.adapter or self.base) or (
            read_checkpoint_serializer(self.base) if self.adapter else None
        )

    def trained_thought_tokens(self):
        return read_card(self.adapter or self.base).thought_tokens

    def describe(self):
        hub = {"model_revision": self.hub.revision} if self.hub else {}
        given = {"policy_args": dict(self.given)} if self.given else {}
        return {"model": self.name, "model_sha256": self.sha256, "backend": self.backend, **hub, **given}

    # the KV cache of the prompt, shared by every call on one state ----------------------------------------------
    def _prefix_cache(self, ids: list[int]):
        """The KV cache of ids[:-1] (the last prompt token is fed with the generation, whose first logits it
        gives). Kept for the last state, copied for each use."""
        key = tuple(ids[:-1])
        if key != self._cache_key:
            self._cache = None
            if key:
                with self.torch.no_grad():
                    out = self.model(input_ids=self._tensor([list(key)]), use_cache=True)
                self._cache = getattr(out, self._cache_arg)
            self._cache_key = key
        return copy.deepcopy(self._cache) if self._cache is not None else None

    def _tensor(self, rows):
        return self.torch.tensor(rows, dtype=self.torch.long, device=self.device)

    def _run_generate(self, ids, **kwargs):
        """The reply's text after `ids`, and why it ended ("stop" or "length"); kwargs: `_new_ids`'."""
        new = self._new_ids(ids, **kwargs)
        finish = "stop" if new and self.is_stop(new[-1]) else "length"
        return self.tokenizer.decode(new, skip_special_tokens=True), finish

    def _new_ids(self, ids, *, seed, temperature, top_p, max_tokens, allowed=None) -> list[int]:
        """The ids `generate` adds after `ids` (the stop token included when it stopped on one)."""
        torch = self.torch
        kwargs = dict(
            max_new_tokens=max_tokens,
            eos_token_id=self.stop_ids or None,
            pad_token_id=self.pad_id,
            do_sample=temperature > 0,
            repetition_penalty=1.0,
            # training sets the model's config to use_cache=False (eexp/training/model.py), and RL generates with
            # the model it trains: generate must go on from the prompt's cache passed in, whichever config it reads
            use_cache=True,
            **{self._cache_arg: self._prefix_cache(ids)},
        )
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)  # no default top-k: T and top-p only
        else:
            kwargs.update(temperature=None, top_p=None)
        if allowed is not None:
            kwargs["prefix_allowed_tokens_fn"] = allowed
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type), torch.no_grad():
            torch.manual_seed(seed)  # the call's own seed: the same seed gives the same sample
            out = self.model.generate(
                input_ids=self._tensor([ids]), attention_mask=self._tensor([[1] * len(ids)]), **kwargs
            )
        return out[0, len(ids) :].tolist()

    def _generate_ids(self, ids, *, seed, temperature, top_p, max_tokens):
        return self._run_generate(ids, seed=seed, temperature=temperature, top_p=top_p, max_tokens=max_tokens)

    def _constrained_ids(self, ids, candidates, replies, *, seed, temperature):
        """Prefix-constrained decoding over the token trie of the candidate replies: every step may only extend
        some candidate, so the result is always one of them."""
        trie: dict = {}
        for cand in candidates:
            node = trie
            for tok in cand:
                node = node.setdefault(tok, {})
        prompt_len = len(ids)
        fallback = self.stop_ids[:1] or [self.pad_id]

        def allowed(batch_id, input_ids):
            node = trie
            for tok in input_ids[prompt_len:].tolist():
                node = node.get(tok)
                if node is None:
                    return fallback
            return list(node) or fallback

        longest = max(len(c) for c in candidates)
        return self._run_generate(
            ids, seed=seed, temperature=temperature, top_p=1.0, max_tokens=longest, allowed=allowed
        )

    def _logliks(self, ids, candidates):
        """Sum of log p(reply tokens | prompt) for each candidate, in batches over one copy of the prompt's KV."""
        torch = self.torch
        out: list[float] = []
        for start in range(0, len(candidates), self.batch_size):
            chunk = candidates[start : start + self.batch_size]
            width = max(len(c) for c in chunk) + 1
            rows = [[ids[-1]] + c + [self.pad_id] * (width - 1 - len(c)) for c in chunk]
            mask = [[1] * (len(ids) - 1) + [1] * (len(c) + 1) + [0] * (width - 1 - len(c)) for c in chunk]
            cache = self._prefix_cache(ids)
            if cache is not None:
                cache.batch_repeat_interleave(len(chunk))
            with torch.no_grad():
                logits = self.model(
                    input_ids=self._tensor(rows),
                    attention_mask=self._tensor(mask),
                    **{self._cache_arg: cache},
                    use_cache=cache is not None,
                ).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for i, cand in enumerate(chunk):
                positions = torch.arange(len(cand), device=self.device)
                targets = torch.tensor(cand, device=self.device)
                out.append(float(logp[i, positions, targets].sum()))
        return out

    def close(self):
        self._cache = None


def cache_argument(model) -> str:
    """How the installed transformers names a model's KV cache, as an argument of forward() and generate() and as a
    field of their outputs: `cache` where transformers renamed it (5.x: the old name still works, with a
    FutureWarning and a deprecation line on stderr in every process), `past_key_values` before."""
    inner = getattr(model, "module", model)  # a wrapped model (DDP, FSDP) forwards to its module
    if hasattr(inner, "get_base_model"):  # a PEFT model (rl's LoRA) passes the argument on to its base
        inner = inner.get_base_model()
    try:
        params = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def load_checkpoint(spec: str, args: dict, *, act: str | None, max_tokens: int, top_p: float) -> Policy:
    """`--policy DIR` (a transformers checkpoint or a PEFT adapter) and `--policy ORG/NAME[@REVISION]` (the entry
    point `checkpoint` of `eexp.policies`)."""
    if (
        hub_id(spec)
        or os.path.isfile(os.path.join(spec, "adapter_config.json"))
        or os.path.isfile(os.path.join(spec, "config.json"))
    ):
        return TransformersPolicy(spec, args, act=act, max_tokens=max_tokens, top_p=top_p)
    raise PolicyError(
        f"{spec}: a directory, but neither a transformers checkpoint (config.json) nor a PEFT "
        f"adapter (adapter_config.json)"
    )
