"""`eexp export`: a transformers checkpoint (optionally with a PEFT LoRA adapter) to one GGUF file for llama.cpp.

The conversion is llama.cpp's own (`convert_hf_to_gguf.py`'s `conversion/` package and `convert_lora_to_gguf.py`),
taken from the sdist of the installed llama-cpp-python (eexp.models.llama_converter), so every architecture that
llama.cpp converts exports, written the way the llama.cpp that runs it expects (tensor names and layouts,
hyperparameters, RoPE scaling, sliding windows, the tokenizer). eexp keeps what is its own:

- the checks a user can act on, as one error line each: a missing tokenizer or weights, an architecture the
  converter does not know, an adapter that does not fit its base, a quant type the widths cannot take;
- merging a LoRA adapter (by PEFT, in memory: the converter reads the merged tensors instead of the base file);
  `--lora-only` writes the adapter alone through `convert_lora_to_gguf.py`, with PEFT's per-module scaling (rsLoRA,
  alpha and rank patterns) folded into lora_b first, since llama.cpp scales every pair by one alpha / rank;
- whether a BOS or EOS is added, where the tokenizer's config does not say (found by asking the tokenizer);
- the pre-tokenizer of eexp's own tokenizers: llama.cpp recognizes a BPE tokenizer by hashing the ids it gives for a
  fixed text, which a tokenizer trained by `eexp init-model` (or any retrained BPE) never matches. When the hash is
  unknown, the converter is told llama.cpp's name for the tokenizer's split regex (qwen2, llama-bpe, gpt-2), if it is
  one llama.cpp implements and the tokenizer has no normalizer other than NFC (as Qwen2's: llama.cpp does no NFC step,
  so the two agree on NFC text, nearly all text); otherwise the converter's own error stands;
- the model card (eexp.card) under `eexp.*` keys: the checkpoint's card (the serializer the model was fine-tuned
  with, so `eval` renders states the way it was trained; base model, phases) and export's own fields: version,
  source path and content hash, adapter, quant;
- quant types: f32, f16 and q8_0 are written by the converter; K-quants (q4_k_m) by llama.cpp's own quantizer
  through llama-cpp-python's `llama_model_quantize`, from an f32 GGUF written first;
- every file is written to a temporary name beside the target and renamed at the end.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import runpy
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from eexp import __version__
from eexp.card import Card, read_card
from eexp.errors import ModelError, UsageProblem, first_line
from eexp.files import content_hash
from eexp.io import refuse_writing_an_input
from eexp.models.import_gguf import adapter_base, import_gguf
from eexp.models.llama_converter import converter_dir, llama_cpp_version

QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
LORA_QUANTS = ("f32", "f16", "q8_0")

# Pre-tokenizer regexes llama.cpp knows, by the name it knows them under (llama-vocab.cpp).
_PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+": "qwen2",
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


def _architecture(config: dict) -> str | None:
    """The transformers class the checkpoint names (config.json `architectures`), which the converter goes by."""
    names = config.get("architectures") or []
    return names[0] if names else None


def _check_checkpoint(ckpt: Path) -> dict:
    """The checkpoint's config.json, after the checks a user can act on (the architecture is checked against the
    converter by `_model_class`)."""
    if not ckpt.is_dir():
        raise ModelError(f"{ckpt}: not a checkpoint directory")
    if not (ckpt / "config.json").is_file():
        raise ModelError(f"{ckpt}: no config.json (not a transformers checkpoint)")
    config = _read_json(ckpt / "config.json")
    if _architecture(config) is None:
        raise ModelError(f"{ckpt}/config.json: no `architectures` (which transformers class the model is)")
    if not (ckpt / "tokenizer.json").is_file() and not (ckpt / "tokenizer.model").is_file():
        raise ModelError(
            f"{ckpt}: no tokenizer.json (export needs the model's tokenizer saved beside it; "
            "save it with tokenizer.save_pretrained)"
        )
    if not _weight_files(ckpt):
        raise ModelError(f"{ckpt}: no .safetensors weights (eexp reads safetensors only)")
    return config


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
            raise ModelError(
                f"{path}: cannot read the weights ({first_line(e)}): a truncated or damaged file?"
            ) from None
    return shapes


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


def _check_adapter_fits(adapter: Path, base_shapes: dict[str, tuple[int, ...]], ckpt: Path, lora_only: bool) -> dict:
    """Read the adapter's tensors and check each LoRA pair against the base weights; return all tensors.
    Full tensors (modules_to_save) and embedding LoRA are fine to merge, but cannot be a llama.cpp adapter."""
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ModelError(f"{adapter / 'adapter_model.safetensors'}: cannot read ({e})") from None
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    misfit = f"adapter {adapter} does not fit base {ckpt}"
    for key, value in tensors.items():
        module = _module_of(key)
        if ".lora_A." in key or ".lora_B." in key:
            pairs.setdefault(module, {})["A" if ".lora_A." in key else "B"] = value.shape
        elif not lora_only:
            continue  # PEFT merges it; PEFT says so if it does not fit
        elif "lora_embedding" in key:
            raise ModelError(
                f"{adapter}: LoRA on the token embeddings ({module}) cannot be exported as a "
                "llama.cpp adapter; export the merged model instead (without --lora-only)"
            )
        else:
            raise ModelError(
                f"{adapter}: holds a full tensor {key} (modules_to_save or added tokens), which a "
                "llama.cpp LoRA adapter cannot carry; export the merged model instead"
            )
    if not pairs and lora_only:
        raise ModelError(f"{adapter}: no LoRA weights found")
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise ModelError(f"{adapter}: {module} has lora_{'B' if 'A' in pair else 'A'} missing")
        base = base_shapes.get(f"{module}.weight")
        if base is None:
            raise ModelError(f"{misfit}: the base has no weight {module}.weight")
        a, b = pair["A"], pair["B"]
        if len(base) != 2 or a[1] != base[1] or b[0] != base[0] or a[0] != b[1]:
            raise ModelError(
                f"{misfit}: {module} has lora_A {list(a)} and lora_B {list(b)}, but the base weight "
                f"is {list(base)} (out, in)"
            )
    return tensors


def _lora_scale(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling for one module: alpha / r (alpha / sqrt(r) with rsLoRA), per-module patterns included."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = value
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


# --- what eexp adds to the converter ---------------------------------------------------------------------------


def _pre_tokenizer_name(pre: dict | None, ckpt: Path) -> str:
    """llama.cpp's name for the tokenizer's split regex."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    for step in steps:
        if step.get("type") == "Split":
            pattern = (step.get("pattern") or {}).get("Regex")
            if pattern in _PRE_TOKENIZERS:
                return _PRE_TOKENIZERS[pattern]
            raise ModelError(
                f"{ckpt}: the tokenizer's split pattern is not one llama.cpp knows (supported: "
                f"{', '.join(sorted(set(_PRE_TOKENIZERS.values())))}, gpt2)"
            )
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return "gpt-2"
    raise ModelError(f"{ckpt}: the tokenizer has no split pattern llama.cpp can reproduce")


def known_pre_tokenizer(ckpt: Path) -> str:
    """The llama.cpp pre-tokenizer of a byte-level BPE tokenizer.json whose ids llama.cpp's hash table does not know
    (eexp's own tokenizers): named from its split regex. ModelError when it cannot be named safely."""
    spec = _read_json(ckpt / "tokenizer.json")
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ModelError(
            f"{ckpt}: llama.cpp's converter does not recognize this tokenizer (a {model.get('type')} "
            "tokenizer without a byte-level pre-tokenizer)"
        )
    normalizer = spec.get("normalizer")
    # NFC, as in Qwen2's own tokenizer, is allowed: llama.cpp skips it, and the two agree on NFC text
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise ModelError(
            f"{ckpt}: llama.cpp's converter does not recognize this tokenizer, and it has a "
            f"{normalizer.get('type')} normalizer, which no llama.cpp pre-tokenizer reproduces"
        )
    return _pre_tokenizer_name(spec.get("pre_tokenizer"), ckpt)


def gguf_card(ckpt: Path, adapter: Path | None, quant: str) -> Card:
    """The GGUF's model card: the card of what is exported (the adapter's, else the checkpoint's: serializer, base
    model, phases, ...) with what export knows added: this eexp's version, the source and its content hash (the
    hash eexp records as meta.model_sha256 when it runs the model exported here, the checkpoint or the adapter over
    its base, so a record of the transformers model and this GGUF join on it), the adapter and the quant type."""
    card = read_card(adapter) if adapter is not None else Card()
    if card == Card():
        card = read_card(ckpt)
    source = [str(adapter), str(ckpt)] if adapter is not None else [str(ckpt)]
    return replace(
        card,
        eexp_version=__version__,
        source=str(ckpt.resolve()),
        source_sha256=content_hash(source),
        quant=quant,
        adapter=str(adapter.resolve()) if adapter is not None else None,
        adapter_sha256=content_hash([str(adapter)]) if adapter is not None else None,
    )


def _check_quant(shapes: dict[str, tuple[int, ...]], quant: str) -> None:
    """Refuse a quant type whose blocks do not divide a matrix's rows, naming the tensor (the converter and
    llama.cpp's quantizer would silently fall back to another type, which is not what was asked for)."""
    block = {"q8_0": 32, "q4_k_m": 256}.get(quant)
    if block is None:
        return
    for name, shape in shapes.items():
        if len(shape) >= 2 and shape[-1] % block:
            raise ModelError(
                f"--quant {quant} needs rows of a multiple of {block} values, but tensor {name} "
                f"{list(shape)} has rows of {shape[-1]}; use "
                f"{'q8_0 or ' if quant != 'q8_0' and shape[-1] % 32 == 0 else ''}f16 or f32"
            )


class _ErrorLog(logging.Handler):
    """The converter's error lines, kept for the one-line message eexp shows when it fails."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _converter(ckpt: Path, name: str, fields: dict[str, str]):
    """llama.cpp's `conversion` package, importable, with what eexp adds for the length of one export: the model card
    keys (written with the rest of the metadata, adapters included), the name, the pre-tokenizer fallback, no
    progress bar, and quiet logging (its errors are collected). Yields (conversion, the error log, the converter
    folder)."""
    folder = converter_dir()  # or one line saying how to install it (which reaches PyPI: a person's step)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    no_local = os.environ.get("NO_LOCAL_GGUF")
    os.environ["NO_LOCAL_GGUF"] = "1"  # the installed gguf (llama.cpp's gguf-py), never a copy beside the scripts
    try:
        import conversion
        from conversion.base import TextModel
    except ImportError as e:
        raise ModelError(f"cannot load llama.cpp's converter from {folder} ({first_line(e)})") from None
    finally:
        if no_local is None:
            del os.environ["NO_LOCAL_GGUF"]

    import gguf

    prepare, pre = TextModel.prepare_metadata, TextModel.get_vocab_base_pre
    write_tensors = gguf.GGUFWriter.write_tensors_to_file

    def prepare_metadata(self, vocab_only):
        self.model_name = name
        prepare(self, vocab_only)
        _add_special_flags(self.gguf_writer, ckpt, getattr(self, "eexp_tokenizer", None))
        for key, value in fields.items():
            self.gguf_writer.add_string(key, value)

    def get_vocab_base_pre(self, tokenizer):
        self.eexp_tokenizer = tokenizer  # the converter's own load of it, for _add_special_flags
        try:
            return pre(self, tokenizer)
        except NotImplementedError:  # an unknown hash: name the pre-tokenizer from the split regex, if it can be
            return known_pre_tokenizer(ckpt)

    errors = _ErrorLog()
    loggers = [logging.getLogger(n) for n in ("hf-to-gguf", "lora-to-gguf", "gguf", "gguf.gguf_writer")]
    levels = [lg.level for lg in loggers]
    root_guard = logging.NullHandler()  # the LoRA script's logging.basicConfig must not configure eexp's root
    logging.getLogger().addHandler(root_guard)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
        lg.addHandler(errors)
    TextModel.prepare_metadata, TextModel.get_vocab_base_pre = prepare_metadata, get_vocab_base_pre
    # the converter draws a progress bar per file; eexp draws none (its stderr is for messages)
    gguf.GGUFWriter.write_tensors_to_file = lambda self, progress=False: write_tensors(self, progress=False)
    try:
        yield conversion, errors, folder
    finally:
        TextModel.prepare_metadata, TextModel.get_vocab_base_pre = prepare, pre
        gguf.GGUFWriter.write_tensors_to_file = write_tensors
        logging.getLogger().removeHandler(root_guard)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
            lg.removeHandler(errors)


def _add_special_flags(writer, ckpt: Path, tok=None) -> None:
    """Whether a BOS or an EOS is added, where the converter found no say in the tokenizer's config (eexp's own
    tokenizers add none; llama.cpp's default for a llama-bpe vocabulary would add a BOS): found by asking the
    tokenizer, rather than by reading its many config shapes."""
    keys = {key for kv in writer.kv_data for key in kv}
    if "tokenizer.ggml.model" not in keys:  # an adapter: no tokenizer
        return
    wanted = [k for k in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token") if k not in keys]
    if not wanted:
        return
    if tok is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(ckpt), trust_remote_code=False)
    plain, full = tok("a", add_special_tokens=False).input_ids, tok("a").input_ids
    added = len(full) > len(plain)
    if "tokenizer.ggml.add_bos_token" in wanted:
        writer.add_add_bos_token(added and full[0] != plain[0])
    if "tokenizer.ggml.add_eos_token" in wanted:
        writer.add_add_eos_token(added and full[-1] != plain[-1])


def _model_class(conversion, ckpt: Path, config: dict):
    arch = _architecture(config)
    try:
        return conversion.get_model_class(arch)
    except NotImplementedError:
        raise ModelError(
            f"{ckpt}: unsupported architecture {arch!r}: llama.cpp's converter (llama-cpp-python "
            f"{llama_cpp_version()}) does not know it"
        ) from None


def _failed(ckpt: Path, out: Path, errors: _ErrorLog, e: BaseException) -> ModelError:
    if isinstance(e, ModelError):
        return e
    if isinstance(e, OSError):
        why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        return ModelError(f"cannot write {out}: {why}")
    detail = errors.lines[-1] if errors.lines else first_line(e)
    return ModelError(f"{ckpt}: llama.cpp's converter failed ({type(e).__name__}: {detail})")


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


def _convert_model(ckpt: Path, out: Path, quant: str, name: str, fields: dict[str, str], merged: dict | None) -> None:
    """convert_hf_to_gguf's conversion of `ckpt` (its tensors replaced by `merged` when given) to `out`, through a
    temporary name."""
    import gguf
    import torch

    config = _read_json(ckpt / "config.json")
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[quant]
    with _converter(ckpt, name, fields) as (conversion, errors, _):
        model_class = _model_class(conversion, ckpt, config)
        tmp = _temp_path(out)
        try:
            with torch.inference_mode():
                model = model_class(ckpt, ftype, tmp, eager=merged is not None)
                if merged is not None:  # the merged weights, under the base file's tensor names
                    model.model_tensors = dict(
                        filter(None, (model.filter_tensors((key, lambda t=t: t)) for key, t in merged.items()))
                    )
                model.write()
            os.replace(tmp, out)
        except (Exception, SystemExit) as e:
            raise _failed(ckpt, out, errors, e) from None
        finally:
            tmp.unlink(missing_ok=True)


def _convert_lora(ckpt: Path, adapter: Path, out: Path, quant: str, name: str, fields: dict[str, str]) -> None:
    """convert_lora_to_gguf.py over `adapter` (PEFT's scaling already folded in) with `ckpt` as the base."""
    with _converter(ckpt, name, fields) as (conversion, errors, folder):
        _model_class(conversion, ckpt, _read_json(ckpt / "config.json"))
        tmp = _temp_path(out)
        argv, no_local = sys.argv, os.environ.get("NO_LOCAL_GGUF")
        os.environ["NO_LOCAL_GGUF"] = "1"
        sys.argv = [
            "convert_lora_to_gguf.py",
            "--base",
            str(ckpt),
            "--outfile",
            str(tmp),
            "--outtype",
            quant,
            str(adapter),
        ]
        try:
            runpy.run_path(str(folder / "convert_lora_to_gguf.py"), run_name="__main__")
            os.replace(tmp, out)
        except (Exception, SystemExit) as e:
            raise _failed(ckpt, out, errors, e) from None
        finally:
            sys.argv = argv
            if no_local is None:
                del os.environ["NO_LOCAL_GGUF"]
            tmp.unlink(missing_ok=True)


def _quantize_k(src: Path, out: Path, quant: str) -> None:
    """A K-quant through llama.cpp's own quantizer (llama-cpp-python's binding), to a temporary name first."""
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(f"--quant {quant} needs llama-cpp-python (pip install 'eexp[gguf]')") from None

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


def export_gguf(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    quant: str = "q8_0",
    adapter: str | os.PathLike | None = None,
    lora_only: bool = False,
) -> Path:
    """Export a checkpoint (merged with `adapter` if given) to GGUF at `out`; with `lora_only`, the adapter alone as
    a llama.cpp LoRA adapter. CKPT may itself be an adapter directory: its base is then found from its config.
    Returns the path written. Raises ModelError for anything the user can fix."""
    ckpt, out = Path(ckpt), Path(out)
    adapter = Path(adapter) if adapter is not None else None
    for given in (ckpt, adapter):  # a mistyped name, said as every command says a missing input
        if given is not None and not given.exists():
            raise ModelError(f"{given}: no such file or directory")
    if adapter is None and ckpt.is_dir() and _is_adapter(ckpt):
        adapter = ckpt
        base = _adapter_config(ckpt).get("base_model_name_or_path")
        found = adapter_base(ckpt, base)  # a directory, or the import of the GGUF finetune trained from
        if found is None:
            raise ModelError(
                f"{ckpt}: an adapter whose base model {base!r} is not a local directory; "
                "give the base as CKPT and this directory as --adapter"
            )
        ckpt = Path(found)
    if quant not in (LORA_QUANTS if lora_only else QUANTS):
        raise ModelError(f"unknown --quant {quant!r} (choose from {', '.join(LORA_QUANTS if lora_only else QUANTS)})")
    if lora_only and adapter is None:
        raise UsageProblem("--lora-only needs --adapter DIR, or an adapter as CKPT (the LoRA adapter to export)")
    if out.is_dir():
        raise ModelError(f"{out}: is a directory; give a file name such as model.gguf")
    if not out.parent.is_dir():
        why = "is a file, not a folder" if out.parent.exists() else "does not exist"
        raise ModelError(f"cannot write {out}: directory {out.parent} {why}")
    # a file the export reads (CKPT's weights, the adapter's), given as OUT: written over, the model would be lost
    read = [
        p
        for folder in (ckpt, adapter)
        if folder is not None
        for p in (folder.iterdir() if folder.is_dir() else [folder])
    ]
    refuse_writing_an_input(str(out), [str(p) for p in read])

    if ckpt.is_file() and ckpt.suffix.lower() == ".gguf":  # a GGUF base (finetune --model X.gguf): its import
        ckpt = import_gguf(ckpt)
    config = _check_checkpoint(ckpt)
    base_shapes = _weight_shapes(ckpt)
    adapter_tensors = adapter_config = None
    if adapter is not None:
        adapter_config = _adapter_config(adapter)
        adapter_tensors = _check_adapter_fits(adapter, base_shapes, ckpt, lora_only)
    fields = gguf_card(ckpt, adapter, quant).gguf_fields()
    name = (adapter or ckpt).resolve().name
    if lora_only:
        if config.get("tie_word_embeddings") and any(_module_of(k).endswith("lm_head") for k in adapter_tensors):
            raise ModelError(
                f"{adapter}: LoRA on lm_head of a model with tied embeddings cannot be a llama.cpp "
                "adapter; export the merged model instead"
            )
        _check_quant({k: v.shape for k, v in adapter_tensors.items()}, quant)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmpdir:
            lora = _single_alpha_adapter(adapter, adapter_config, adapter_tensors, Path(tmpdir))
            _convert_lora(ckpt, lora, out, quant, name, fields)
        return out

    _check_quant(base_shapes, quant)
    merged = _merged_state(ckpt, adapter, set(base_shapes)) if adapter is not None else None
    if quant in ("f32", "f16", "q8_0"):
        _convert_model(ckpt, out, quant, name, fields, merged)
        return out
    # K-quants: an f32 GGUF in a temporary directory beside the output, then llama.cpp's quantizer.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmpdir:
        f32 = Path(tmpdir) / "f32.gguf"
        _convert_model(ckpt, f32, "f32", name, fields, merged)
        del merged
        _quantize_k(f32, out, quant)
    return out


def _merged_state(ckpt: Path, adapter: Path, names: set[str]) -> dict:
    """The base's weights with the adapter merged by PEFT (float32 torch tensors), under the names the base's
    safetensors use (a tied output is not repeated)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(ckpt), dtype=torch.float32, trust_remote_code=False, use_safetensors=True
        )
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{ckpt}: cannot load the model ({first_line(e)}): missing or damaged files?") from None
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"adapter {adapter} does not fit base {ckpt}: {e}") from None
    state = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items() if k in names}
    missing = sorted(names - set(state))
    if missing:
        raise ModelError(f"{ckpt}: the merged model has no tensor {missing[0]} of the base file")
    return state


def _single_alpha_adapter(adapter: Path, config: dict, tensors: dict, tmpdir: Path) -> Path:
    """The adapter as llama.cpp applies it: every pair scaled by one alpha / rank. PEFT's per-module scale (rsLoRA,
    alpha and rank patterns) is folded into lora_b, so that alpha / r times lora_b @ lora_a is exactly PEFT's delta
    for every module. The adapter itself when nothing needs folding; else a copy in `tmpdir`."""
    from safetensors.numpy import save_file

    alpha = float(config.get("lora_alpha", 8))
    folded, changed = {}, False
    for key, value in tensors.items():
        if ".lora_B." in key:
            rank = value.shape[1]
            factor = _lora_scale(config, _module_of(key), rank) * rank / alpha
            if factor != 1.0:
                value, changed = (value.astype(np.float32) * np.float32(factor)), True
        folded[key] = value
    if not changed:
        return adapter
    target = tmpdir / "adapter"
    target.mkdir()
    save_file(folded, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
    (target / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": alpha}))
    return target
