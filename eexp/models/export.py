"""`eexp export`: a transformers checkpoint (optionally with a PEFT LoRA adapter) to one GGUF file for llama.cpp.

llama.cpp's own converters are not on PyPI, so this writes GGUF directly with the `gguf` package, for the two
architectures eexp trains (Qwen2 and Llama, byte-level BPE tokenizers):

- tensor names come from gguf's tensor-name map; llama.cpp's `llama` graph applies rotary embeddings to interleaved
  pairs while transformers' Llama uses halves, so Llama's q/k rows are permuted (as convert_hf_to_gguf.py does);
  llama.cpp runs Qwen2 in the NeoX (halves) layout, so Qwen2 needs no permutation;
- f32, f16 and q8_0 are written by the `gguf` package's quantizers; K-quants (q4_k_m) by llama.cpp's own quantizer
  through llama-cpp-python's `llama_model_quantize`, from an f32 GGUF written first;
- the tokenizer goes in as llama.cpp's "gpt2" BPE model: tokens, token types, merges, the pre-tokenizer name,
  special token ids, whether a BOS/EOS is added (found by asking the tokenizer) and the chat template;
- the model card (eexp.card) is stored under `eexp.*` keys: the checkpoint's card (the serializer the model was
  fine-tuned with, so `eval` renders states the way it was trained; base model, phases) and export's own: version,
  source path and content hash, adapter, quant.

`--lora-only` writes the adapter alone as a GGUF LoRA adapter (llama.cpp's `lora_path`), to be used over a GGUF of
the base model. Every file is written to a temporary name beside the target and renamed at the end.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np

from eexp import __version__
from eexp.card import Card, read_card
from eexp.models.init import ModelError
from eexp.policies.files import content_hash

# model_type in config.json -> gguf architecture name; q/k permutation needed for llama.cpp's rotary layout.
SUPPORTED = {"qwen2": ("QWEN2", False), "llama": ("LLAMA", True)}
QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
LORA_QUANTS = ("f32", "f16", "q8_0")

# Pre-tokenizer regexes llama.cpp knows, by the name it knows them under (llama-vocab.cpp).
_PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+": "llama-bpe",
}


# --- reading the inputs -----------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ModelError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _check_checkpoint(ckpt: Path) -> dict:
    """The checkpoint's config.json, after the checks a user can act on."""
    if not ckpt.is_dir():
        raise ModelError(f"{ckpt}: not a checkpoint directory")
    if not (ckpt / "config.json").is_file():
        raise ModelError(f"{ckpt}: no config.json (not a transformers checkpoint)")
    config = _read_json(ckpt / "config.json")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise ModelError(f"{ckpt}: unsupported architecture {model_type!r} (supported: {', '.join(SUPPORTED)})")
    if not (ckpt / "tokenizer.json").is_file():
        raise ModelError(f"{ckpt}: no tokenizer.json (export needs the model's tokenizer saved beside it; "
                         "save it with tokenizer.save_pretrained)")
    if not _weight_files(ckpt):
        raise ModelError(f"{ckpt}: no .safetensors weights (eexp reads safetensors only)")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise ModelError(f"{ckpt}: rope scaling {rope_type!r} is not supported by eexp export (only plain RoPE)")
    if model_type == "qwen2" and config.get("use_sliding_window"):
        raise ModelError(f"{ckpt}: sliding-window attention is not supported by eexp export")
    return config


def _rope_theta(config: dict) -> float:
    rope = config.get("rope_parameters") or {}
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def _weight_files(ckpt: Path) -> list[Path]:
    """The checkpoint's weights as transformers names them (model.safetensors or model-0000i-of-0000n...)."""
    return sorted(ckpt.glob("model*.safetensors"))


def _weight_shapes(ckpt: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the safetensors headers only."""
    from safetensors import SafetensorError, safe_open

    shapes = {}
    for path in _weight_files(ckpt):
        try:
            with safe_open(str(path), framework="np") as f:
                for name in f.keys():
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        except (SafetensorError, OSError) as e:  # safetensors raises its own error types for a damaged file
            raise ModelError(f"{path}: cannot read the weights ({_first_line(e)}): a truncated or damaged "
                             "file?") from None
    return shapes


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _adapter_config(adapter: Path) -> dict:
    if not _is_adapter(adapter):
        raise ModelError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    config = _read_json(adapter / "adapter_config.json")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ModelError(f"{adapter}: a {config.get('peft_type')} adapter; only LoRA adapters can be exported")
    if config.get("use_dora"):
        raise ModelError(f"{adapter}: DoRA adapters are not supported; merge and export without --lora-only")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ModelError(f"{adapter}: no adapter_model.safetensors (eexp reads safetensors only)")
    return config


def _module_of(key: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` -> `model.layers.0.self_attn.q_proj`."""
    name = key.removeprefix("base_model.model.")
    for marker in (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B"):
        if marker in name:
            return name.split(marker)[0]
    return name


def _check_adapter_fits(adapter: Path, base_shapes: dict[str, tuple[int, ...]], ckpt: Path,
                        lora_only: bool) -> dict[str, dict[str, np.ndarray]]:
    """Read the adapter's LoRA pairs ({module: {"A": .., "B": ..}}) and check each against the base weights.
    Full tensors (modules_to_save) and embedding LoRA are fine to merge, but cannot be a llama.cpp adapter."""
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ModelError(f"{adapter / 'adapter_model.safetensors'}: cannot read ({e})") from None
    pairs: dict[str, dict[str, np.ndarray]] = {}
    misfit = f"adapter {adapter} does not fit base {ckpt}"
    for key, value in tensors.items():
        module = _module_of(key)
        if ".lora_A." in key or ".lora_B." in key:
            pairs.setdefault(module, {})["A" if ".lora_A." in key else "B"] = value.astype(np.float32)
        elif not lora_only:
            continue  # PEFT merges it; PEFT says so if it does not fit
        elif "lora_embedding" in key:
            raise ModelError(f"{adapter}: LoRA on the token embeddings ({module}) cannot be exported as a "
                             "llama.cpp adapter; export the merged model instead (without --lora-only)")
        else:
            raise ModelError(f"{adapter}: holds a full tensor {key} (modules_to_save or added tokens), which a "
                             "llama.cpp LoRA adapter cannot carry; export the merged model instead")
    if not pairs and lora_only:
        raise ModelError(f"{adapter}: no LoRA weights found")
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise ModelError(f"{adapter}: {module} has lora_{'B' if 'A' in pair else 'A'} missing")
        base = base_shapes.get(f"{module}.weight")
        if base is None:
            raise ModelError(f"{misfit}: the base has no weight {module}.weight")
        a, b = pair["A"].shape, pair["B"].shape
        if len(base) != 2 or a[1] != base[1] or b[0] != base[0] or a[0] != b[1]:
            raise ModelError(f"{misfit}: {module} has lora_A {list(a)} and lora_B {list(b)}, but the base weight "
                             f"is {list(base)} (out, in)")
    return pairs


def _lora_scale(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling for one module: alpha / r (alpha / sqrt(r) with rsLoRA), per-module patterns included."""
    import re

    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = value
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


# --- the GGUF contents ------------------------------------------------------------------------------------------

def _arch_name(config: dict) -> str:
    """gguf's architecture string (general.architecture) for a checkpoint's model_type."""
    import gguf
    return gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[SUPPORTED[config["model_type"]][0]]]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of q/k from transformers' rotate-half layout to llama.cpp's interleaved pairs (convert_hf_to_gguf)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_tensors(state: dict[str, np.ndarray], config: dict) -> Iterator[tuple[str, np.ndarray]]:
    """transformers tensors -> (gguf name, float32 array), with llama's q/k permutation."""
    import gguf

    arch_name, permute = SUPPORTED[config["model_type"]]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch_name], config["num_hidden_layers"])
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    tied = config.get("tie_word_embeddings", False)
    for key, value in state.items():
        if key == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd as the output when output.weight is absent
        if key.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelError(f"tensor {key} has no GGUF name for {arch_name.lower()} (an unexpected checkpoint)")
        if permute and key.endswith(("q_proj.weight", "q_proj.bias")):
            value = _permute(value, n_head)
        elif permute and key.endswith(("k_proj.weight", "k_proj.bias")):
            value = _permute(value, n_kv)
        yield name, value


def _tokenizer_metadata(writer, ckpt: Path, vocab_size: int) -> None:
    """tokens, types, merges, pre-tokenizer, special ids, add-BOS/EOS flags and chat template."""
    import gguf
    from transformers import AutoTokenizer

    spec = _read_json(ckpt / "tokenizer.json")
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ModelError(f"{ckpt}: only byte-level BPE tokenizers can be exported (this one is "
                         f"{model.get('type')} without a ByteLevel pre-tokenizer)")
    try:
        tok = AutoTokenizer.from_pretrained(str(ckpt), trust_remote_code=False)
    except Exception as e:
        raise ModelError(f"{ckpt}: cannot load the tokenizer ({e})") from None

    vocab = tok.get_vocab()
    if len(vocab) > vocab_size:
        raise ModelError(f"{ckpt}: the tokenizer has {len(vocab)} tokens but the model only {vocab_size} rows")
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t.special for t in tok.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)

    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"), ckpt)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    # What the tokenizer adds around a text, found by asking it rather than by reading its many config shapes.
    plain = tok("a", add_special_tokens=False).input_ids
    full = tok("a").input_ids
    add_bos = len(full) > len(plain) and full[0] != plain[0]
    add_eos = len(full) > len(plain) and full[-1] != plain[-1]
    if add_bos:
        writer.add_bos_token_id(full[0])
    elif tok.bos_token_id is not None:
        writer.add_bos_token_id(tok.bos_token_id)
    if tok.eos_token_id is None:
        raise ModelError(f"{ckpt}: the tokenizer has no eos token (generation would never stop)")
    writer.add_eos_token_id(tok.eos_token_id)
    if tok.pad_token_id is not None:
        writer.add_pad_token_id(tok.pad_token_id)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template if isinstance(tok.chat_template, str)
                                 else tok.chat_template.get("default", next(iter(tok.chat_template.values()))))


def _pre_tokenizer_name(pre: dict | None, ckpt: Path) -> str:
    """llama.cpp's name for the tokenizer's split regex."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    for step in steps:
        if step.get("type") == "Split":
            pattern = (step.get("pattern") or {}).get("Regex")
            if pattern in _PRE_TOKENIZERS:
                return _PRE_TOKENIZERS[pattern]
            raise ModelError(f"{ckpt}: the tokenizer's split pattern is not one llama.cpp knows (supported: "
                             f"{', '.join(sorted(set(_PRE_TOKENIZERS.values())))}, gpt2)")
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return "gpt-2"
    raise ModelError(f"{ckpt}: the tokenizer has no split pattern llama.cpp can reproduce")


def _model_metadata(writer, config: dict, name: str) -> None:
    hidden, n_head = config["hidden_size"], config["num_attention_heads"]
    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    head_dim = config.get("head_dim") or hidden // n_head
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(config["vocab_size"])


def gguf_card(ckpt: Path, adapter: Path | None, quant: str) -> Card:
    """The GGUF's model card: the card of what is exported (the adapter's, else the checkpoint's: serializer, base
    model, phases, ...) with what export knows added: this eexp's version, the source and its content hash (the
    hash eexp records as meta.model_sha256 when it runs the model exported here, the checkpoint or the adapter over
    its base, so a record of the transformers model and this GGUF join on it), the adapter and the quant type."""
    card = read_card(adapter) if adapter is not None else Card()
    if card == Card():
        card = read_card(ckpt)
    source = [str(adapter), str(ckpt)] if adapter is not None else [str(ckpt)]
    return replace(card, eexp_version=__version__, source=str(ckpt.resolve()), source_sha256=content_hash(source),
                   quant=quant, adapter=str(adapter.resolve()) if adapter is not None else None,
                   adapter_sha256=content_hash([str(adapter)]) if adapter is not None else None)


def _provenance(writer, ckpt: Path, adapter: Path | None, quant: str) -> None:
    for key, value in gguf_card(ckpt, adapter, quant).gguf_fields().items():
        writer.add_string(key, value)


def _tensor_type(name: str, value: np.ndarray, quant: str):
    """The GGUF type of one tensor for a python-written quant: 1-D tensors (norms, biases) stay f32."""
    import gguf

    if value.ndim == 1 or quant == "f32":
        return gguf.GGMLQuantizationType.F32
    if quant == "f16":
        return gguf.GGMLQuantizationType.F16
    return gguf.GGMLQuantizationType.Q8_0


def _check_quant(tensors: list[tuple[str, np.ndarray]], quant: str) -> None:
    """Refuse a quant type whose blocks do not divide a tensor's rows, naming the tensor (llama.cpp would
    silently fall back to another type, which is not what was asked for)."""
    block = {"q8_0": 32, "q4_k_m": 256}.get(quant)
    if block is None:
        return
    for name, value in tensors:
        if value.ndim >= 2 and value.shape[-1] % block:
            raise ModelError(f"--quant {quant} needs rows of a multiple of {block} values, but tensor {name} "
                             f"{list(value.shape)} has rows of {value.shape[-1]}; use "
                             f"{'q8_0 or ' if quant != 'q8_0' and value.shape[-1] % 32 == 0 else ''}f16 or f32")


# --- writing ------------------------------------------------------------------------------------------------------

def _temp_path(out: Path) -> Path:
    """A fresh file beside `out` (same file system, so the final rename is atomic)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    except OSError as e:
        raise ModelError(f"cannot write {out}: {e.strerror}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp makes it private; the GGUF is an ordinary file
    return Path(name)


def _write(out: Path, arch_name: str, fill, tensors: list[tuple[str, np.ndarray]], quant: str) -> None:
    """Write a GGUF with python-side types to a temporary name, then rename it to `out`."""
    import gguf

    tmp = _temp_path(out)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch_name)
        fill(writer)
        for name, value in tensors:
            qtype = _tensor_type(name, value, quant)
            data = gguf.quants.quantize(np.ascontiguousarray(value, dtype=np.float32), qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except OSError as e:
        raise ModelError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _quantize_k(src: Path, out: Path, quant: str) -> None:
    """A K-quant through llama.cpp's own quantizer (llama-cpp-python's binding), to a temporary name first."""
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(f"--quant {quant} needs llama-cpp-python (pip install 'eexp[gguf]')") from None
    import logging

    ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    tmp = _temp_path(out)
    # llama.cpp logs every tensor it converts; keep only its errors (its Python logger gates the C log callback).
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = max(1, min(os.cpu_count() or 1, 8))
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise ModelError(f"llama.cpp could not quantize to {quant} (code {rc}; its errors are above)")
        os.replace(tmp, out)
    finally:
        log.setLevel(level)
        tmp.unlink(missing_ok=True)


def export_gguf(ckpt: str | os.PathLike, out: str | os.PathLike, quant: str = "q8_0",
                adapter: str | os.PathLike | None = None, lora_only: bool = False) -> Path:
    """Export a checkpoint (merged with `adapter` if given) to GGUF at `out`; with `lora_only`, the adapter alone as
    a llama.cpp LoRA adapter. CKPT may itself be an adapter directory: its base is then found from its config.
    Returns the path written. Raises ModelError for anything the user can fix."""
    ckpt, out = Path(ckpt), Path(out)
    adapter = Path(adapter) if adapter is not None else None
    if adapter is None and ckpt.is_dir() and _is_adapter(ckpt):
        adapter = ckpt
        base = _adapter_config(ckpt).get("base_model_name_or_path")
        from eexp.models.import_gguf import adapter_base
        found = adapter_base(ckpt, base)  # a directory, or the import of the GGUF finetune trained from
        if found is None:
            raise ModelError(f"{ckpt}: an adapter whose base model {base!r} is not a local directory; "
                             "give the base as CKPT and this directory as --adapter")
        ckpt = Path(found)
    if quant not in (LORA_QUANTS if lora_only else QUANTS):
        raise ModelError(f"unknown --quant {quant!r} (choose from {', '.join(LORA_QUANTS if lora_only else QUANTS)})")
    if lora_only and adapter is None:
        raise ModelError("--lora-only needs --adapter DIR (the LoRA adapter to export)")
    if out.is_dir():
        raise ModelError(f"{out}: is a directory; give a file name such as model.gguf")
    if not out.parent.is_dir():
        raise ModelError(f"cannot write {out}: directory {out.parent} does not exist")

    if ckpt.is_file() and ckpt.suffix.lower() == ".gguf":  # a GGUF base (finetune --model X.gguf): its import
        from eexp.models.import_gguf import import_gguf
        ckpt = import_gguf(ckpt)
    config = _check_checkpoint(ckpt)
    arch_name = _arch_name(config)
    base_shapes = _weight_shapes(ckpt)
    pairs = adapter_config = None
    if adapter is not None:
        adapter_config = _adapter_config(adapter)
        pairs = _check_adapter_fits(adapter, base_shapes, ckpt, lora_only)
    if lora_only:
        return _export_lora(ckpt, adapter, out, quant, config, adapter_config, pairs, arch_name)

    state = _load_state(ckpt, adapter)
    tensors = list(_gguf_tensors(state, config))
    del state
    _check_quant(tensors, quant)

    def fill(writer):
        import gguf
        _model_metadata(writer, config, (adapter or ckpt).resolve().name)
        _tokenizer_metadata(writer, ckpt, config["vocab_size"])
        _provenance(writer, ckpt, adapter, quant)
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}.get(quant, gguf.LlamaFileType.ALL_F32)
        writer.add_file_type(file_type)
        if quant == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    if quant in ("f32", "f16", "q8_0"):
        _write(out, arch_name, fill, tensors, quant)
        return out
    # K-quants: an f32 GGUF in a temporary directory beside the output, then llama.cpp's quantizer.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmpdir:
        f32 = Path(tmpdir) / "f32.gguf"
        _write(f32, arch_name, fill, tensors, "f32")
        del tensors
        _quantize_k(f32, out, quant)
    return out


def _load_state(ckpt: Path, adapter: Path | None) -> dict[str, np.ndarray]:
    """The model's float32 weights as numpy arrays; with an adapter, merged by PEFT."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from safetensors import SafetensorError

    logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32, trust_remote_code=False,
                                                     use_safetensors=True)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{ckpt}: cannot load the model ({_first_line(e)}): missing or damaged files?") from None
    if adapter is not None:
        from peft import PeftModel
        try:
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        except (ValueError, RuntimeError, KeyError) as e:
            raise ModelError(f"adapter {adapter} does not fit base {ckpt}: {e}") from None
    return {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}


def _export_lora(ckpt: Path, adapter: Path, out: Path, quant: str, config: dict, adapter_config: dict,
                 pairs: dict[str, dict[str, np.ndarray]], arch_name: str) -> Path:
    """The adapter alone, as llama.cpp reads it: `<base tensor>.lora_a` [r, in] and `.lora_b` [out, r], one alpha.

    llama.cpp scales every pair by alpha / r. PEFT's per-module scale (rsLoRA, alpha and rank patterns) is folded
    into lora_b so that alpha / r times lora_b @ lora_a is exactly PEFT's delta for every module."""
    import gguf

    if config.get("tie_word_embeddings") and any(m.endswith("lm_head") for m in pairs):
        raise ModelError(f"{adapter}: LoRA on lm_head of a model with tied embeddings cannot be a llama.cpp "
                         "adapter; export the merged model instead")
    alpha = float(adapter_config.get("lora_alpha", 8))
    arch = SUPPORTED[config["model_type"]]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch[0]], config["num_hidden_layers"])
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    tensors = []
    for module, pair in sorted(pairs.items()):
        a, b = pair["A"], pair["B"]
        rank = a.shape[0]
        b = b * (_lora_scale(adapter_config, module, rank) * rank / alpha)
        if arch[1] and module.endswith("q_proj"):
            b = _permute(b, n_head)   # the permutation acts on output rows, which lora_b holds
        elif arch[1] and module.endswith("k_proj"):
            b = _permute(b, n_kv)
        name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if name is None:
            raise ModelError(f"{adapter}: LoRA on {module} has no llama.cpp tensor to apply to")
        tensors += [(f"{name}.lora_a", a), (f"{name}.lora_b", b)]
    _check_quant(tensors, quant)

    def fill(writer):
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(adapter.resolve().name)
        _provenance(writer, ckpt, adapter, quant)

    _write(out, arch_name, fill, tensors, quant)
    return out
