"""The llama.cpp backend (llama-cpp-python): a GGUF file, the cheap default for rollouts.

Prompts are rendered with the chat template stored in the GGUF (or, with `--policy-arg tokenizer=DIR`, with the
training tokenizer itself) and passed to llama.cpp as token ids: llama-cpp-python adds no BOS to an id prompt, so the
template alone decides whether there is one (never two). K samples are K calls issued back to back on one context,
each with its own `seed=`; llama.cpp keeps the longest matching prefix of the KV cache, so the shared prompt is
evaluated once. Constrained actions use a GBNF grammar of the admissible replies; scoring reads the logits of every
candidate token (the context is created with `logits_all` for `--act score` and `--act think`, whose action is scored).
"""

from __future__ import annotations

import os
import weakref

import numpy as np

from eexp.card import Card
from eexp.errors import PolicyError
from eexp.files import content_hash, gguf_serializer
from eexp.policies.args import take_args
from eexp.policies.base import MAX_TOKENS, Policy
from eexp.policies.chat import ModelPolicy, log_softmax, render_chat_template
from eexp.policies.gguf_loader import open_gguf

SCHEMA = {
    "n_ctx": (int, 0),  # context size (0: the model's, at most 4096)
    "n_threads": (int, 0),  # CPU threads (0: llama.cpp's default)
    "n_gpu_layers": (int, -1),  # layers on the GPU where llama.cpp was built with one (-1: all)
    "n_batch": (int, 512),  # prompt tokens evaluated per llama.cpp batch (llama-cpp-python's default)
    "tokenizer": (str, ""),  # render with this transformers tokenizer instead of the GGUF's template
    "lora_path": (str, ""),  # a GGUF LoRA adapter (eexp export --lora-only)
    "extra_bufts": (str, "auto"),  # weight repacking into extra CPU buffer types: auto (off on AMX CPUs), on, off
    "verbose": (bool, False),
}
# The args that change what the model sees or computes, which records say where they are not the default
# (describe()'s policy_args): the context clips the prompt, the tokenizer renders it, layers on the GPU are computed
# by other kernels. An adapter (lora_path) is in model_sha256; threads, the prompt batch and verbosity change only
# speed or logs; extra_bufts is always said.
OUTPUT_ARGS = ("n_ctx", "tokenizer", "n_gpu_layers")
# The context when --policy-arg n_ctx is not given: the model's own, but at most this many tokens, since the KV cache
# of a long-context model at its full length would take GBs; 4096 holds a state rendered with the default Serializer
# settings (a few thousand characters at most) and a reply of the default --max-tokens (MAX_TOKENS, 256).
DEFAULT_MAX_CTX = 4096
# Compiled GBNF grammars kept, one per distinct admissible list: branch asks K samples of one state and eval revisits
# states, so a list is compiled once; past this many the cache starts again, bounding memory over a long run.
GRAMMAR_CACHE_SIZE = 64
# Tokens of room past the longest reply's bytes under a grammar: the grammar forces at most a token a byte, and these
# cover the end-of-turn tokens the model emits after it.
GRAMMAR_EXTRA_TOKENS = 4


def read_gguf_header(path: str) -> dict:
    """Architecture and a few keys from the GGUF header, before llama.cpp touches the file, so a corrupt file or
    an unknown architecture gets a clear error instead of a crash."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise PolicyError(f"{path}: not a GGUF file (bad magic {magic!r}; truncated or corrupt?)")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
        field = reader.fields.get("general.architecture")
        arch = field.contents() if field is not None else ""
        field = reader.fields.get(f"{arch}.context_length")
        n_ctx_train = int(field.contents()) if field is not None else 0
    except ImportError:
        arch, n_ctx_train = "", 0
    except Exception as e:  # the gguf package raises plain ValueError/IndexError on a damaged file
        raise PolicyError(f"{path}: cannot read the GGUF header ({e}); the file is corrupt or truncated") from None
    return {"architecture": arch, "n_ctx_train": n_ctx_train}


def local_tokenizer(folder: str):
    """The transformers tokenizer of a checkpoint folder on this machine. Never a name looked up on the Hub (a
    mistyped folder was asked of huggingface.co, retried for 50 s), never a folder's own code (transformers would
    ask on stdin, which carries the records)."""
    if not os.path.isdir(folder):
        raise PolicyError(f"{folder}: no such folder (give the checkpoint folder that holds the training tokenizer)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as e:
        raise PolicyError(f"{folder}: cannot load the tokenizer ({e})") from None


class LlamaCppPolicy(ModelPolicy):
    backend = "llama.cpp"

    def __init__(self, path: str, args: dict | None = None, *, act=None, max_tokens=MAX_TOKENS, top_p=1.0):
        super().__init__(act, max_tokens, top_p)
        opts = take_args(args, SCHEMA, self.backend)
        try:
            import llama_cpp
        except ImportError:
            raise PolicyError("GGUF policies need llama-cpp-python: pip install 'eexp[gguf]'") from None
        self.llama_cpp = llama_cpp
        self.opts = opts
        self.spec, self.name = path, os.path.basename(path)
        header = read_gguf_header(path)
        # the model's own context by default, at most DEFAULT_MAX_CTX (a long-context model would get a huge KV)
        n_ctx = opts["n_ctx"] or min(header["n_ctx_train"] or DEFAULT_MAX_CTX, DEFAULT_MAX_CTX)
        try:
            llm = open_gguf(
                path,
                extra_bufts=opts["extra_bufts"],
                n_ctx=n_ctx,
                n_threads=opts["n_threads"] or None,
                n_gpu_layers=opts["n_gpu_layers"] if llama_cpp.llama_supports_gpu_offload() else 0,
                n_batch=opts["n_batch"],
                logits_all=act in ("score", "think"),
                lora_path=opts["lora_path"] or None,
                verbose=opts["verbose"],
            )
        except (ValueError, RuntimeError) as e:
            arch = header["architecture"] or "unknown"
            raise PolicyError(
                f"{path}: llama.cpp cannot load this model (architecture {arch!r}: {e}); "
                f"an architecture this llama.cpp build does not support, or a damaged file"
            ) from None
        self.llm = llm
        # close at interpreter exit, before module teardown (llama-cpp-python's __del__ fails after it)
        self._finalizer = weakref.finalize(self, llm.close)
        self.architecture = header["architecture"]
        self.hf_tokenizer = None
        if opts["tokenizer"]:
            self.hf_tokenizer = local_tokenizer(opts["tokenizer"])
        self.template = llm.metadata.get("tokenizer.chat_template", "")
        if not self.template and self.hf_tokenizer is None:
            raise PolicyError(
                f"{path}: the GGUF has no chat template (tokenizer.chat_template); re-export it, or "
                f"render with the training tokenizer: --policy-arg tokenizer=CHECKPOINT_DIR"
            )
        self.sha256 = content_hash([path] + ([opts["lora_path"]] if opts["lora_path"] else []))
        self._grammars: dict[tuple, object] = {}

    # hooks ------------------------------------------------------------------------------------------------------
    def special_tokens(self) -> dict[str, str]:
        """bos_token / eos_token as the template sees them (transformers passes the same names)."""
        model, out = self.llm._model, {}
        for name, tok in (("bos_token", self.llm.token_bos()), ("eos_token", self.llm.token_eos())):
            if tok is not None and tok >= 0:
                out[name] = model.token_get_text(tok)
        return out

    def render(self, messages, add_generation_prompt=True) -> str:
        return render_chat_template(
            self.template, messages, add_generation_prompt=add_generation_prompt, **self.special_tokens()
        )

    def encode_chat(self, messages, add_generation_prompt=True):
        if self.hf_tokenizer is not None:
            out = self.hf_tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
            )
            return list(out["input_ids"])
        # special=True: control tokens written by the template (<|im_start|>) are parsed as themselves;
        # add_bos=False: a BOS is there only if the template wrote one, as with transformers.
        return self.llm.tokenize(
            self.render(messages, add_generation_prompt).encode("utf-8"), add_bos=False, special=True
        )

    def context_size(self):
        return self.llm.n_ctx()

    def is_stop(self, token):
        return bool(self.llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def serializer_settings(self):
        return gguf_serializer(self.llm.metadata, self.spec)  # from the model card in its eexp.* metadata

    def trained_thought_tokens(self):
        return Card.from_gguf(self.llm.metadata, self.spec).thought_tokens

    def describe(self):
        # n_gpu_layers only where this llama.cpp build offloads (else every layer runs on the CPU whatever it says)
        offloads = self.llama_cpp.llama_supports_gpu_offload()
        given = {
            key: self.opts[key]
            for key in OUTPUT_ARGS
            if self.opts[key] != SCHEMA[key][1] and (key != "n_gpu_layers" or offloads)
        }
        return {
            "model": self.name,
            "model_sha256": self.sha256,
            "backend": self.backend,
            "extra_bufts": self.llm.eexp_buffers.use_extra_bufts,
            **({"policy_args": given} if given else {}),
        }

    def _complete(self, ids, *, seed, temperature, top_p, max_tokens, grammar=None):
        # top_k=0 and min_p=0 turn llama.cpp's extra default samplers off: temperature and top-p mean what they
        # mean in transformers. An explicit seed on every call (llama-cpp-python otherwise chains seeds).
        out = self.llm.create_completion(
            prompt=list(ids),
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            seed=seed,
            grammar=grammar,
        )
        choice = out["choices"][0]
        return choice["text"], choice.get("finish_reason") or "stop"

    def _generate_ids(self, ids, *, seed, temperature, top_p, max_tokens):
        return self._complete(ids, seed=seed, temperature=temperature, top_p=top_p, max_tokens=max_tokens)

    def _constrained_ids(self, ids, candidates, replies, *, seed, temperature):
        key = tuple(replies)
        if key not in self._grammars:
            from llama_cpp import LlamaGrammar

            if len(self._grammars) > GRAMMAR_CACHE_SIZE:
                self._grammars.clear()
            self._grammars[key] = LlamaGrammar.from_string(choice_grammar(replies), verbose=False)
        longest = max(len(r.encode("utf-8")) for r in replies) + GRAMMAR_EXTRA_TOKENS
        return self._complete(
            ids, seed=seed, temperature=temperature, top_p=1.0, max_tokens=longest, grammar=self._grammars[key]
        )

    def _last_logits(self) -> np.ndarray:
        """Logits of the last evaluated token (a context without logits_all keeps only those)."""
        llm = self.llm
        if llm._logits_all:
            return llm.scores[llm.n_tokens - 1].copy()
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()

    def _logliks(self, ids, candidates):
        """Evaluate the prompt once (reusing what the context already holds), then each candidate after it: in
        one batch per candidate with logits_all (--act score, think), token by token otherwise (e.g. `rank`)."""
        llm = self.llm
        n = llm.longest_token_prefix(llm._input_ids.tolist(), ids)
        llm.n_tokens = min(n, len(ids) - 1)  # eval() drops the KV past n_tokens; re-evaluate at least one token
        llm.eval(ids[llm.n_tokens :])
        p = len(ids)
        first = self._last_logits()
        out = []
        for cand in candidates:
            llm.n_tokens = p
            rows = [first]
            if llm._logits_all:
                if len(cand) > 1:
                    llm.eval(cand[:-1])
                    rows.extend(llm.scores[p : p + len(cand) - 1])
            else:
                for tok in cand[:-1]:
                    llm.eval([tok])
                    rows.append(self._last_logits())
            logp = log_softmax(np.vstack(rows))
            out.append(float(logp[np.arange(len(cand)), cand].sum()))
        return out

    def close(self):
        if getattr(self, "llm", None) is not None:
            self._finalizer()
            self.llm = None


def gbnf_literal(text: str) -> str:
    """A GBNF string literal: backslash, quote and control characters escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def choice_grammar(replies: list[str]) -> str:
    """A grammar that accepts exactly one of the replies (llama.cpp then allows only end of turn)."""
    return "root ::= " + " | ".join(gbnf_literal(r) for r in dict.fromkeys(replies)) + "\n"


def load_gguf(spec: str, args: dict, *, act: str | None, max_tokens: int, top_p: float) -> Policy:
    """`--policy model.gguf` (the entry point `gguf` of `eexp.policies`)."""
    if not os.path.isfile(spec):
        raise PolicyError(f"{spec}: no such GGUF file")
    return LlamaCppPolicy(spec, args, act=act, max_tokens=max_tokens, top_p=top_p)
