"""mix: a seeded, streaming interleave of example files, with weights as sampling ratios.

At each draw a file is chosen with probability weight / (sum of the weights of the files not yet run out); a file that
runs out drops out, so every record of every file is used exactly once (without --limit). Memory is bounded by the
shuffle buffer, plus 16 bytes per record with --dedup.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from itertools import chain, islice
from typing import Callable, Iterable, Iterator

import orjson

from eexp.records import EXAMPLE_META, example_meta


def parse_source(spec: str) -> tuple[str, float]:
    """`FILE:W` -> (FILE, W); a file without `:W` has weight 1. `-` and `-:W` mean stdin."""
    path, sep, weight = spec.rpartition(":")
    if sep and path:
        try:
            w = float(weight)
        except ValueError:
            if os.path.exists(path) and not os.path.exists(spec):  # a mistyped weight, not a file named so
                raise ValueError(f"{spec}: the weight {weight!r} is not a number") from None
            return spec, 1.0  # a colon that is part of the file name
        if not (w > 0 and math.isfinite(w)):
            raise ValueError(f"{spec}: the weight must be a finite number above 0")
        return path, w
    return spec, 1.0


def interleave(sources: list[tuple[Iterator[dict], float]], rng: random.Random) -> Iterator[dict]:
    active = [(iter(it), w) for it, w in sources]
    while active:
        pick = rng.random() * sum(w for _, w in active)
        for i, (it, w) in enumerate(active):
            pick -= w
            if pick < 0 or i == len(active) - 1:
                break
        try:
            yield next(it)
        except StopIteration:
            del active[i]


def shuffled(records: Iterable[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Bounded-memory shuffle: keep `size` records, emit a random one as each new one arrives."""
    buffer: list[dict] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = record
    rng.shuffle(buffer)
    yield from buffer


def messages_digest(record: dict) -> bytes:
    return hashlib.blake2b(orjson.dumps(record["messages"], option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def deduplicated(records: Iterable[dict], count: Callable[[str], None]) -> Iterator[dict]:
    seen: set[bytes] = set()
    for record in records:
        digest = messages_digest(record)
        if digest in seen:
            count("duplicates")
            continue
        seen.add(digest)
        yield record


def normalized(record: dict) -> dict:
    """Examples from any producer get eexp's fixed meta keys and types, so `datasets` can load the mix."""
    meta = record.get("meta") or {}
    if not isinstance(meta, dict):
        return {**record, "meta": example_meta(extra={"meta": meta})}
    if meta.keys() == EXAMPLE_META.keys() and all(type(meta[k]) is t for k, t in EXAMPLE_META.items()):
        return record  # already eexp's shape: the common case
    return {**record, "meta": example_meta(**meta)}


def mix(
    sources: list[tuple[Iterator[dict], float]],
    *,
    seed: int = 0,
    concat: bool = False,
    shuffle_buffer: int = 0,
    dedup: bool = False,
    limit: int | None = None,
    count: Callable[[str], None] = lambda name: None,
) -> Iterator[dict]:
    rng = random.Random(seed)
    stream: Iterable[dict] = chain.from_iterable(it for it, _ in sources) if concat else interleave(sources, rng)
    stream = map(normalized, stream)
    if dedup:
        stream = deduplicated(stream, count)
    if shuffle_buffer > 0:
        stream = shuffled(stream, shuffle_buffer, rng)
    return islice(stream, limit) if limit is not None else iter(stream)
