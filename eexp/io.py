"""JSON Lines in and out: the layer every stage stands on.

Reading names `FILE:LINE` on every problem; writing emits one whole line per record and flushes after each input's
outputs, so a downstream stage sees records as they are made and an interrupted run never leaves half a line behind.
`run_stage` ties reading, validation, sharding, resume, stats and writing together for the stages that map each
input record to zero or more output records.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import orjson

STDIN_NAME = "<stdin>"


class InputError(Exception):
    """Bad input, with where it was found: str() is `FILE:LINE: what is wrong`."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message, self.path, self.line = message, path, line
        where = f"{path}:{line}: " if path and line else f"{path}: " if path else ""
        super().__init__(where + message)


class RecordError(Exception):
    """Raised by a stage for one record it cannot use; the runner adds FILE:LINE and applies --on-error."""


def dumps(record: dict) -> bytes:
    return orjson.dumps(record) + b"\n"


@dataclass
class Line:
    """A parsed input record and where it came from."""

    record: dict
    path: str
    line: int

    def error(self, message: str) -> InputError:
        return InputError(message, self.path, self.line)


@dataclass
class Reader:
    """Reads records from files or stdin (`-`). With on_error="skip" bad lines are counted, not fatal."""

    paths: list[str]
    on_error: str = "fail"
    skipped: int = 0
    warn: Callable[[str], None] = lambda msg: print(f"eexp: {msg}", file=sys.stderr)
    _warned: int = 0

    def reject(self, err: InputError) -> None:
        """Fail on a bad record, or count it and (for the first few) say why."""
        if self.on_error == "fail":
            raise err
        self.skipped += 1
        if self._warned < 5:
            self.warn(f"skipping {err}")
            self._warned += 1

    def __iter__(self) -> Iterator[Line]:
        for path in self.paths or ["-"]:
            yield from self._read_one(path)

    def _read_one(self, path: str) -> Iterator[Line]:
        name = STDIN_NAME if path == "-" else path
        if path == "-":
            stream = sys.stdin.buffer
        else:
            if os.path.isdir(path):
                raise InputError("is a directory, not a JSONL file", path)
            try:
                stream = open(path, "rb")
            except FileNotFoundError:
                raise InputError("no such file", path) from None
            except OSError as e:
                raise InputError(f"cannot read ({e.strerror})", path) from None
        seen = 0
        try:
            for lineno, raw in enumerate(stream, 1):
                if not raw.strip():
                    continue
                seen += 1
                try:
                    if b"\x00" in raw:
                        raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL byte")
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.reject(InputError("binary data, not JSON Lines (not UTF-8 text)", name, lineno))
                    continue
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError as e:
                    tail = "" if raw.endswith(b"\n") else " (the line is cut off: a truncated file?)"
                    self.reject(InputError(f"not valid JSON: {e}{tail}", name, lineno))
                    continue
                if not isinstance(obj, dict):
                    self.reject(InputError(f"expected a JSON object, got {type_name(obj)}", name, lineno))
                    continue
                yield Line(obj, name, lineno)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
        if seen == 0:
            if path == "-":
                self.warn("no records on stdin")
            else:
                raise InputError("empty file (no records)", name)


def type_name(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def read_records(paths: Iterable[str]) -> Iterator[dict]:
    """Plain records from files (fail on the first bad line): for library use and tests."""
    for item in Reader(list(paths)):
        yield item.record


class Writer:
    """One whole line per record, flushed at once. `-`/None means stdout."""

    def __init__(self, path: str | None = None, append: bool = False):
        self.path = None if path in (None, "-") else path
        self.count = 0
        if self.path is None:
            self.stream = sys.stdout.buffer
        else:
            try:
                self.stream = open(self.path, "ab" if append else "wb")
            except OSError as e:
                raise InputError(f"cannot write ({e.strerror})", self.path) from None

    def write(self, record: dict, flush: bool = True) -> None:
        self.stream.write(dumps(record))
        if flush:
            self.stream.flush()
        self.count += 1

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self.path is not None:
            self.stream.close()


def prepare_resume(path: str, key: Callable[[dict], str] = lambda r: r.get("source_id")) -> set[str]:
    """Make an output file safe to append to, and return the keys of the inputs it already covers.

    A torn last line (a killed process) is cut off. The records of the last input in the file are dropped too, since
    that input may have been cut short between two of its outputs; it is simply done again. Outputs are
    deterministic, so the file ends as an uninterrupted run would have written it.
    """
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1  # everything after the last newline is a torn line
    keys: list[tuple[str, int]] = []  # (key, byte offset where its line starts)
    offset = 0
    for raw in data[:end].splitlines(keepends=True):
        if raw.strip():
            try:
                k = key(orjson.loads(raw))
            except orjson.JSONDecodeError:
                raise InputError("cannot resume: the file has a line that is not JSON", path) from None
            keys.append((k, offset))
        offset += len(raw)
    if keys:
        last = keys[-1][0]
        while keys and keys[-1][0] == last:
            end = keys.pop()[1]
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return {k for k, _ in keys}


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 2/8), got {spec!r}") from None
    if n < 1 or not 1 <= i <= n:
        raise ValueError(f"--shard {spec}: I must be between 1 and N (here 1 to {n})")
    return i, n


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic across machines and Python versions (no hash randomization)."""
    if shard is None:
        return True
    i, n = shard
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n == i - 1


def shard_key(record: dict) -> str:
    """Records of one trajectory share a key, so a trajectory stays whole in one shard."""
    if "trajectory_id" in record:
        return str(record["trajectory_id"])
    meta = record.get("meta") or {}
    if meta.get("trajectory_id"):
        return str(meta["trajectory_id"])
    if "steps" in record:
        return str(record.get("id"))
    return str(record.get("source_id") or record.get("id"))


@dataclass
class Stats:
    """What `--stats FILE` writes: the DESIGN.md counts plus stage-specific ones."""

    records_in: int = 0
    records_out: int = 0
    skipped: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def as_dict(self) -> dict:
        return {"records_in": self.records_in, "records_out": self.records_out, "skipped": self.skipped,
                "seconds": round(time.perf_counter() - self.started, 3), **self.counts}

    def write(self, path: str | None) -> None:
        if path:
            write_atomic(path, orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")


def write_atomic(path: str, data: bytes) -> None:
    """Write to a temporary name beside the target, then rename: readers never see half a file."""
    if os.path.exists(path) and not os.path.isfile(path):  # /dev/stderr, a fifo: nothing to rename
        with open(path, "wb") as f:
            f.write(data)
        return
    path = os.path.realpath(path)  # replace the file a symlink points at, not the symlink
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def run_stage(
    reader: Reader,
    process: Callable[[dict], Iterable[dict]],
    writer: Writer,
    stats: Stats,
    *,
    validate: Callable[[dict], str | None] | None = None,
    shard: tuple[int, int] | None = None,
    done: set[str] | None = None,
    input_key: Callable[[dict], str] = lambda r: r.get("id"),
    progress=None,
) -> None:
    """Feed each input record through `process` and write what it yields.

    validate(record) returns an error message for a record this stage cannot take; `process` raises RecordError for
    the same reason later. Both become `FILE:LINE: message` and follow --on-error. Inputs whose key is in `done`
    (from prepare_resume) are skipped.
    """
    for item in reader:
        stats.records_in += 1
        if progress is not None:
            progress.update(1)
        record = item.record
        if validate is not None:
            problem = validate(record)
            if problem:
                reader.reject(item.error(problem))
                continue
        if shard is not None and not in_shard(shard_key(record), shard):
            continue
        if done and input_key(record) in done:
            stats.add("resumed")
            continue
        try:
            for out in process(record):
                writer.write(out, flush=False)
                stats.records_out += 1
        except RecordError as e:
            reader.reject(item.error(str(e)))
        writer.flush()  # every input's outputs reach the next stage as soon as they are all made
    stats.skipped = reader.skipped
