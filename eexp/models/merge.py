"""`eexp merge`: a LoRA adapter and its base -> one merged Hugging Face checkpoint folder, for servers that take a
plain model (`vllm serve OUT`, SGLang, TGI) and for SkyRL's hand-off ("merge first").

The base is loaded in fp32 on the CPU, the adapter applied and folded into its weights there (PEFT's
merge_and_unload: W + B A x alpha / r, in fp32), and only then are the weights cast to the saved dtype (bf16 by
default: what vLLM serves). OUT gets model.safetensors (sharded when large), config.json (its dtype the saved one),
generation_config.json, the tokenizer with its chat template (the adapter's own tokenizer where it has one, else the
base's), and card.yaml: the adapter's card (serializer settings, phases) with what the merge adds (command merge, the
adapter and its hash, the saved precision). The folder is written under a temporary name beside OUT and renamed when
complete. Safetensors only; the base's model code only with trust_remote_code.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from eexp import __version__
from eexp.card import read_card, write_card
from eexp.errors import ModelError, PolicyError, first_line
from eexp.fields import setting
from eexp.files import content_hash, has_tokenizer, hub_id, unsafe_adapter
from eexp.io import make_parent_folders
from eexp.models.adapter import base_of

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass
class MergeSettings:
    """Every option of `eexp merge`, with its default and help (the command's options are made from them)."""

    adapter: str  # the LoRA adapter folder (the command's argument)
    output: str = setting(
        None, "The folder to write (it must not exist, or be empty).", required=True, short="-o", metavar="OUT"
    )
    base: str | None = setting(
        None,
        "The base model (a folder or a Hugging Face Hub id). Default: the one the "
        "adapter names (adapter_config.json), as the policies find it.",
        metavar="CKPT",
    )
    dtype: str = setting(
        "bf16",
        "Weights as saved: bf16 (what vLLM and SGLang serve), fp16, or fp32 (the merge "
        "itself is computed in fp32 either way).",
        choices=list(DTYPES),
    )
    trust_remote_code: bool = setting(False, "Allow model code from the base's folder or repository.")


def merge_adapter(settings: MergeSettings, echo: Callable[[str], None] | None = None) -> Path:
    """Write the merged folder; returns its path."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    echo = echo or (lambda msg: None)
    adapter, target = settings.adapter, Path(settings.output)
    if not os.path.exists(adapter):
        raise ModelError(f"{adapter}: no such file or directory")
    if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        raise ModelError(
            f"{adapter}: not a LoRA adapter directory (no adapter_config.json); a full checkpoint needs no merge"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ModelError(f"{target}: already exists and is not an empty directory")
    try:
        base = base_of(adapter, settings.base or "", settings.trust_remote_code, override_with="--base DIR")
    except PolicyError as e:
        raise ModelError(str(e)) from None
    tokenizer_dir = adapter if has_tokenizer(adapter) else base
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=settings.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=torch.float32, use_safetensors=True, trust_remote_code=settings.trust_remote_code
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise ModelError(f"{base}: cannot load the base model ({first_line(e)})") from None
    if not tokenizer.chat_template:
        raise ModelError(f"{tokenizer_dir}: the tokenizer has no chat template; a served model needs one")
    from peft import PeftModel

    if why := unsafe_adapter(str(adapter)):
        raise ModelError(f"{adapter}: {why}")
    try:
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise ModelError(f"{adapter}: the adapter does not load onto {base} ({first_line(e)})") from None
    dtype = getattr(torch, DTYPES[settings.dtype])
    merged = merged.to(dtype)
    merged.config.dtype = dtype
    card = read_card(adapter)
    base_name = settings.base if settings.base and hub_id(settings.base) else (card.base_model or os.path.abspath(base))
    card = dataclasses.replace(
        card,
        command="merge",
        eexp_version=__version__,
        base_model=base_name,
        base_sha256=card.base_sha256 or content_hash([base]),
        adapter=os.path.abspath(adapter),
        adapter_sha256=content_hash([adapter]),
        precision=settings.dtype,
    )
    make_parent_folders(str(target))
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        tmp.chmod(0o755)
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_card(tmp, card)
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except OSError as e:
        raise ModelError(f"{target}: cannot write the merged model ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    echo(f"merged {adapter} into {base} ({settings.dtype})")
    return target
