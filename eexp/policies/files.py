"""Model files: content hashes for `meta`, and the serializer settings stored with a model.

A checkpoint directory records them under `serializer` in its config.yaml (written by init-model / finetune);
a GGUF under the metadata key `eexp.serializer` as compact JSON (written by export).
"""

from __future__ import annotations

import hashlib
import json
import os

import yaml

from eexp.policies.base import PolicyError

GGUF_SERIALIZER_KEY = "eexp.serializer"
_HASHES: dict[tuple, str] = {}


def model_files(path: str) -> list[str]:
    """The files that make a model: the file itself, or a directory's weights, configs and tokenizer."""
    if os.path.isfile(path):
        return [path]
    keep = (".safetensors", ".json", ".gguf", ".model", ".txt", ".jinja")
    return sorted(os.path.join(path, f) for f in os.listdir(path)
                  if f.endswith(keep) and os.path.isfile(os.path.join(path, f)))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer(path: str) -> bool:
    """A directory that holds a tokenizer of its own (an adapter may, or may rely on its base's)."""
    return any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES)


def content_hash(paths: list[str]) -> str:
    """sha256 over the model files of every path (names and bytes), cached per process by size and mtime."""
    files = [f for p in paths for f in model_files(p)]
    key = tuple((f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files)
    if key not in _HASHES:
        h = hashlib.sha256()
        for f in files:
            h.update(os.path.basename(f).encode() + b"\0")
            with open(f, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 22), b""):
                    h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def read_checkpoint_serializer(directory: str | None) -> dict | None:
    """config.yaml's `serializer` mapping, or None when the checkpoint records none."""
    if not directory:
        return None
    path = os.path.join(directory, "config.yaml")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise PolicyError(f"{path}: cannot read ({e})") from None
    value = data.get("serializer") if isinstance(data, dict) else None
    return value if isinstance(value, dict) else None


def parse_gguf_serializer(value: str | None, where: str) -> dict | None:
    if not value:
        return None
    try:
        data = json.loads(value)
    except json.JSONDecodeError as e:
        raise PolicyError(f"{where}: metadata {GGUF_SERIALIZER_KEY} is not JSON ({e})") from None
    return data if isinstance(data, dict) else None
