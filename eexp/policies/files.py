"""Model files: content hashes for `meta` (the one hash definition), and the serializer settings stored with a
model, read from its model card (eexp.card: card.yaml in a checkpoint folder, `eexp.*` metadata in a GGUF).
"""

from __future__ import annotations

import hashlib
import os
from typing import Mapping

from eexp.card import Card, read_card

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
    """The serializer settings of a checkpoint folder's card, or None when it records none."""
    return read_card(directory).serializer


def gguf_serializer(metadata: Mapping[str, str], where: str) -> dict | None:
    """The serializer settings of a GGUF's card (its `eexp.*` metadata), or None when it records none."""
    return Card.from_gguf(metadata, where).serializer

