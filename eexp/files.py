"""Model files: content hashes for `meta` (the one hash definition, cached on disk by size and mtime), the
serializer settings stored with a model, read from its model card (eexp.card: card.yaml in a checkpoint folder,
`eexp.*` metadata in a GGUF), and models named by a Hugging Face Hub id (`ORG/NAME[@REVISION]`), found through the
Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Mapping

from eexp.cache import cache_root
from eexp.card import Card, read_card
from eexp.errors import HubError

_HASHES: dict[tuple, str] = {}


def model_files(path: str) -> list[str]:
    """The files that make a model: the file itself, or a directory's weights, configs and tokenizer."""
    if os.path.isfile(path):
        return [path]
    keep = (".safetensors", ".json", ".gguf", ".model", ".txt", ".jinja")
    return sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith(keep) and os.path.isfile(os.path.join(path, f))
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def unsafe_adapter(folder: str) -> str | None:
    """Why a LoRA adapter folder is not loaded, or None: eexp reads safetensors only, and PEFT, given a folder without
    adapter_model.safetensors, unpickles adapter_model.bin."""
    if not os.path.isfile(os.path.join(folder, "adapter_model.safetensors")):
        return "no adapter_model.safetensors (eexp reads safetensors only)"
    return None


def has_tokenizer(path: str) -> bool:
    """A directory that holds a tokenizer of its own (an adapter may, or may rely on its base's)."""
    return any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES)


def content_hash(paths: list[str]) -> str:
    """sha256 over the model files of every path (names and bytes). Computed once: remembered in this process and in
    $EEXP_CACHE/hashes, keyed by every file's absolute path, size and mtime, so the N workers of `eval -j N` and
    every later run read an 8B model's 15 GB once, not once per process (a file rewritten in place changes its
    mtime, and so the key)."""
    files = [f for p in paths for f in model_files(p)]
    key = tuple((os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files)
    if key not in _HASHES:
        stored = _hash_cache_file(key)
        try:
            with open(stored) as f:
                cached = f.read().strip()
        except OSError:
            cached = ""
        if re.fullmatch(r"[0-9a-f]{64}", cached):
            _HASHES[key] = cached
        else:
            h = hashlib.sha256()
            for f in files:
                h.update(os.path.basename(f).encode() + b"\0")
                with open(f, "rb") as stream:
                    for block in iter(lambda: stream.read(1 << 22), b""):
                        h.update(block)
            _HASHES[key] = h.hexdigest()
            _store_hash(stored, _HASHES[key])
    return _HASHES[key]


def _hash_cache_file(key: tuple) -> str:
    name = hashlib.blake2b(repr(key).encode(), digest_size=20).hexdigest()
    return os.path.join(cache_root(), "hashes", name)


def _store_hash(path: str, value: str) -> None:
    """Best effort (a read-only cache only costs the next process a re-read): a temporary name, then a rename."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hash-", dir=os.path.dirname(path))
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


def read_checkpoint_serializer(directory: str | None) -> dict | None:
    """The serializer settings of a checkpoint folder's card, or None when it records none."""
    return read_card(directory).serializer


def gguf_serializer(metadata: Mapping[str, str], where: str) -> dict | None:
    """The serializer settings of a GGUF's card (its `eexp.*` metadata), or None when it records none."""
    return Card.from_gguf(metadata, where).serializer


# --- models named by a Hugging Face Hub id ----------------------------------------------------------------------

HUB_ID = re.compile(
    r"(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<revision>[A-Za-z0-9_./-]+))?"
)
# What eexp takes from a Hub repository: safetensors weights, configs, tokenizer and chat template files. Never a
# pickle (*.bin, *.pt, *.pth); model code (*.py) only with trust_remote_code.
HUB_FILES = ["*.safetensors", "*.json", "*.txt", "*.jinja", "tokenizer.model", "*.tiktoken"]


@dataclass(frozen=True)
class HubModel:
    id: str  # ORG/NAME
    revision: str  # the commit the files come from (the snapshot's name in the cache)
    path: str  # the snapshot folder in the Hugging Face cache


def hub_id(spec: str | None) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when `spec` names a Hub model (`ORG/NAME` or `ORG/NAME@REVISION`) rather than a
    local file or directory, else None. A path that exists here is always the path, and so is one whose first folder
    exists here (`runs/sft-final` with a `runs/` beside it: a mistyped run, not a Hub id to look up and send out)."""
    if not spec or os.path.exists(spec) or spec.lower().endswith(".gguf"):
        return None
    if os.path.isdir(spec.split("/", 1)[0]):
        return None
    found = HUB_ID.fullmatch(spec)
    if not found or spec.startswith((".", "/", "~")):
        return None
    return found["id"], found["revision"]


def resolve_hub_model(spec: str, *, trust_remote_code: bool = False) -> HubModel:
    """The snapshot folder of a Hub model in the Hugging Face cache ($HF_HOME/hub), downloaded first when it is not
    there and the Hub can be reached (HF_HUB_OFFLINE=1: the cache only). A model the cache holds is used as it is,
    without asking the Hub whether its branch moved (huggingface_hub asks by default, on every load): a run makes no
    connection it does not need, and the same id gives the same weights until the user updates them (`hf download
    ORG/NAME`) or names another revision (ORG/NAME@REVISION). Safetensors only; model code only with
    `trust_remote_code`."""
    parsed = hub_id(spec)
    if parsed is None:
        raise HubError(f"{spec}: not a Hugging Face Hub id (ORG/NAME or ORG/NAME@REVISION)")
    repo, revision = parsed
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise HubError(f"{spec}: a Hub id needs huggingface_hub (pip install 'eexp[train]')") from None
    patterns = HUB_FILES + (["*.py"] if trust_remote_code else [])
    try:
        path = _in_cache(snapshot_download, repo, revision, patterns, LocalEntryNotFoundError)
        if path is None:
            path = snapshot_download(repo, revision=revision, allow_patterns=patterns)
    except GatedRepoError:
        raise HubError(
            f"{spec}: a gated repository; accept its terms on huggingface.co and log in "
            "(`hf auth login`), or download it once and pass the folder"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(f"{spec}: no such model on the Hugging Face Hub (nor a local path here)") from None
    except RevisionNotFoundError:
        raise HubError(f"{spec}: the repository has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise HubError(
            f"{spec}: no such local path, and not in the Hugging Face cache ({HF_HUB_CACHE}) while "
            f"{why}; download it once (`hf download {repo}`) or pass a model folder"
        ) from None
    except (OSError, ValueError) as e:
        raise HubError(
            f"{spec}: cannot fetch it from the Hugging Face Hub ({type(e).__name__}: "
            f"{(str(e).strip().splitlines() or [''])[0]})"
        ) from None
    names = os.listdir(path)
    if not any(n.endswith(".safetensors") for n in names):
        raise HubError(
            f"{spec}: the repository has no safetensors weights (eexp loads safetensors only, never pickled .bin files)"
        )
    if not trust_remote_code and _needs_remote_code(path):
        raise HubError(
            f"{spec}: the model's config asks for its own code (auto_map); allow it only if you trust "
            "the repository (--trust-remote-code, or --policy-arg trust_remote_code=true)"
        )
    return HubModel(repo, os.path.basename(os.path.normpath(path)), path)


def _in_cache(snapshot_download, repo: str, revision: str | None, patterns: list[str], missing: type) -> str | None:
    """The cached snapshot of `repo` at `revision` (its branch as the cache last saw it), or None where the cache
    has none with safetensors weights (never downloaded, or only part of it: the Hub is asked then)."""
    try:
        path = snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True)
    except missing:
        return None
    names = os.listdir(path)
    if not any(n.endswith(".safetensors") for n in names):
        return None
    if "*.py" in patterns and _needs_remote_code(path) and not any(n.endswith(".py") for n in names):
        return None  # cached without the model code it now may run: fetched with it
    return path


def _needs_remote_code(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "config.json")) as f:
            return "auto_map" in json.load(f)
    except (OSError, ValueError):
        return False
