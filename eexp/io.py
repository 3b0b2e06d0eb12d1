"""JSON Lines in and out: the layer every stage stands on.

Reading names `FILE:LINE` on every problem; writing emits one whole line per record and flushes after each input's
outputs, so a downstream stage sees records as they are made and an interrupted run never leaves half a line behind.
`run_stage` ties reading, validation, sharding, resume, stats and writing together for the stages that map each
input record to zero or more output records; `StageIO` holds one run's inputs, output and options and runs a stage
either over input records (`run`) or over items the command makes itself, such as an environment's tasks
(`run_source`: expert, eval).

Every stage has one shape (`Stage`): called with one record it yields that record's outputs, `finish()` yields what
it still holds after the last one, `close()` releases what it holds; it reports counts through the
`count(name, n)` it was given (`StageIO.count`). A plain function of one record is a stage with nothing to finish.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import stat
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import orjson
from tqdm import tqdm

from eexp.errors import EmptyFile, InputError, MissingFile, PolicyError, UsageProblem, WriteError
from eexp.records import KIND_PLURALS, kind_of, type_name

try:
    import fcntl  # POSIX; elsewhere the writer simply cannot cut a torn line back
except ImportError:
    fcntl = None

STDIN_NAME = "<stdin>"


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


def _lines(stream, name: str) -> Iterator[bytes]:
    """The stream's lines; a .gz file that is not gzip data is an InputError, not a traceback."""
    try:
        yield from stream
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise InputError(f"not a readable gzip file ({e})", name) from None


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
        path = os.fspath(path)   # a pathlib.Path too (library callers, tests)
        name = STDIN_NAME if path == "-" else path
        if path == "-":
            stream = sys.stdin.buffer
        else:
            if os.path.isdir(path):
                raise InputError("is a directory, not a JSONL file", path)
            try:
                # FILE.jsonl.gz is read as it is (compressed results kept in a repository, eval --compare's input)
                stream = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
            except FileNotFoundError:
                raise MissingFile(path) from None
            except OSError as e:
                raise InputError(f"cannot read ({e.strerror})", path) from None
        seen = 0
        try:
            for lineno, raw in enumerate(_lines(stream, name), 1):
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
                raise EmptyFile(name)


def read_records(paths: Iterable[str]) -> Iterator[dict]:
    """Plain records from files (fail on the first bad line): for library use and tests."""
    for item in Reader(list(paths)):
        yield item.record


STDOUT_NAME = "<stdout>"


class Writer:
    """One whole line per record, flushed at once. `-`/None means stdout.

    The output always ends on a whole line: a write that fails (a full disk) cuts the file back to the last whole
    line and raises WriteError `FILE: cannot write (No space left on device); N whole records kept, continue with
    --resume` (without the advice when `resumable` is False). After that the writer is spent: close() only closes.
    """

    def __init__(self, path: str | None = None, append: bool = False, resumable: bool = True):
        self.path = None if path in (None, "-") else path
        self.name = self.path or STDOUT_NAME
        self.resumable = resumable and self.path is not None
        self.failed = False
        self.pending: list[bytes] = []
        if self.path is None:
            self.stream = sys.stdout.buffer
        else:
            try:
                # unbuffered: each flush writes exactly the pending whole lines, and nothing is left in a buffer
                # that a later close() could write after the file was cut back
                self.stream = open(self.path, "ab" if append else "wb", buffering=0)
            except OSError as e:
                raise WriteError(e, self.path) from None
        self.whole = self._position()  # the offset just after the last whole line; None where unknown

    def _position(self) -> int | None:
        """Where the next line starts, for a regular file (stdout redirected to a file included)."""
        if fcntl is None:
            return None
        try:
            fd = self.stream.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            if self.path is None:
                self.stream.flush()  # what was printed before counts as written
                if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:  # `>`: where the shell left us
                    return os.lseek(fd, 0, os.SEEK_CUR)
            return os.lseek(fd, 0, os.SEEK_END)  # -o FILE, or stdout appending (`>>`)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return None

    def write(self, record: dict, flush: bool = True) -> None:
        self.pending.append(dumps(record))
        if flush:
            self.flush()

    def flush(self) -> None:
        if self.failed:
            return
        data = b"".join(self.pending)
        self.pending.clear()
        try:
            view = memoryview(data)
            while view:  # a raw stream (-o FILE, or an unbuffered stdout) may take part of it
                view = view[self.stream.write(view) or 0:]
            if self.path is None:
                self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            self._fail(e)
        except BaseException:  # Ctrl-C half-way through a write: the file still ends on a whole line
            if self._holds(len(data)):   # a Ctrl-C just after the write: its lines are whole, and kept
                self.whole += len(data)
            else:
                self._cut()
            raise
        if self.whole is not None:
            self.whole += len(data)

    def _holds(self, n: int) -> bool:
        """Whether a file (-o FILE) holds all of the last `n` bytes written, up to the end: the interrupt came after
        the write had returned (its return value not yet seen), so there is nothing to cut."""
        if self.path is None or self.whole is None:
            return False
        try:
            return os.lseek(self.stream.fileno(), 0, os.SEEK_CUR) == self.whole + n
        except (OSError, ValueError):
            return False

    def _cut(self) -> int | None:
        """Cut the file back to its last whole line and return how many lines it holds (None if it cannot be
        cut). The writer writes nothing more, and what is still buffered for stdout goes nowhere."""
        self.failed = True
        kept = None
        if self.whole is not None:
            try:
                os.ftruncate(self.stream.fileno(), self.whole)
                # the writer's own descriptor is write-only: count on the file opened afresh
                kept = _count_lines(self.path or f"/dev/fd/{self.stream.fileno()}", self.whole)
            except (OSError, ValueError):
                pass
        if self.path is None:
            _discard_stdout()  # or the interpreter writes it at exit, after the cut (or fails again)
        return kept

    def _fail(self, err: OSError) -> None:
        """Cut the file back to its last whole line and say so in one line."""
        kept = self._cut()
        note = ""
        if kept is not None:
            note = f"; {kept} whole record{'' if kept == 1 else 's'} kept"
            if self.resumable:
                note += ", continue with --resume"
        raise WriteError(err, self.name, note) from None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self.path is not None:
                self.stream.close()


@contextlib.contextmanager
def closing(*writers: Writer | None, then: Callable[[], None] | None = None):
    """Close `writers` (None ones skipped), then call `then` (write --stats), when the block ends. When it ends in an
    error (a full disk, Ctrl-C), that error is the one reported: a second one while closing (the same full disk
    under --stats) is not allowed to hide it."""
    try:
        yield
    except BaseException:
        for writer in writers:
            if writer is not None:
                with contextlib.suppress(WriteError):
                    writer.close()
        if then is not None:
            with contextlib.suppress(WriteError):
                then()
        raise
    for writer in writers:
        if writer is not None:
            writer.close()
    if then is not None:
        then()


def _count_lines(path: str, end: int) -> int:
    """The lines in the first `end` bytes of a file."""
    n, left = 0, end
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(1 << 20, left))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def _discard_stdout() -> None:
    """After a failed write to stdout, what is still buffered for it must not reach the file at exit (after the cut,
    or as a second error): stdout goes to /dev/null."""
    try:
        fd = sys.stdout.fileno()
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


def prepare_resume(path: str, key: Callable[[dict], str] = lambda r: r.get("source_id"),
                   kind: str | None = None) -> set[str]:
    """Make an output file safe to append to, and return the keys of the inputs it already covers.

    A torn last line (a killed process) is cut off. The records of the last input in the file are dropped too, since
    that input may have been cut short between two of its outputs; it is simply done again. Outputs are
    deterministic, so the file ends as an uninterrupted run would have written it. With `kind` (the kind of record
    the stage writes, see eexp.records), a file holding another kind (another stage's output) is refused untouched.
    """
    if not os.path.exists(path):
        return set()
    if os.path.isdir(path):
        raise InputError("is a directory, not a JSONL file", path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", path) from None
    end = data.rfind(b"\n") + 1  # everything after the last newline is a torn line
    keys: list[tuple[str, int]] = []  # (key, byte offset where its line starts)
    offset = 0
    for lineno, raw in enumerate(data[:end].splitlines(keepends=True), 1):
        if raw.strip():
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise InputError("cannot resume: the file has a line that is not JSON", path) from None
            if not isinstance(record, dict):
                raise InputError("cannot resume: the line is not a JSON object", path, lineno)
            if kind is not None:
                found = kind_of(record)
                if found != kind:
                    held = KIND_PLURALS.get(found, "records of no kind eexp knows")
                    raise InputError(f"cannot resume: this file holds {held}, not {KIND_PLURALS[kind]} (written "
                                     "by another stage?)", path, lineno)
            keys.append((key(record), offset))
        offset += len(raw)
    if keys:
        last = keys[-1][0]
        while keys and keys[-1][0] == last:
            end = keys.pop()[1]
    if end != len(data):
        try:
            with open(path, "r+b") as f:
                f.truncate(end)
        except OSError as e:
            raise WriteError(e, path) from None
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
    """Write to a temporary name beside the target, then rename: readers never see half a file. A failure (a full
    disk, a read-only folder, a directory in the way) leaves the target as it was and raises WriteError."""
    if os.path.isdir(path):
        raise InputError("is a directory, not a file to write", path)
    try:
        if os.path.exists(path) and not os.path.isfile(path):  # /dev/stderr, a fifo: nothing to rename
            with open(path, "wb") as f:
                f.write(data)
            return
    except BrokenPipeError:
        raise
    except OSError as e:
        raise WriteError(e, path) from None
    target = os.path.realpath(path)  # replace the file a symlink points at, not the symlink
    tmp = f"{target}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise WriteError(e, path) from None


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


class Stage:
    """The one shape of a stage: records in, records out.

    `stage(record)` yields the outputs of one input record (as soon as they are made, or later: a stage with work in
    worker processes yields what is done so far), `finish()` yields what it still holds after the last input, and
    `close()` releases what it started (environments, workers). Counts go to the `count(name, n)` it was built with
    (`StageIO.count`), and end up in --stats. A plain function of one record is a stage with nothing to finish or
    close; a subclass overrides what it needs."""

    def __call__(self, record: dict) -> Iterable[dict]:
        raise NotImplementedError

    def finish(self) -> Iterable[dict]:
        return ()

    def close(self) -> None:
        pass


def _finish(stage) -> Iterable[dict]:
    finish = getattr(stage, "finish", None)
    return finish() if finish is not None else ()


def _close(stage) -> None:
    close = getattr(stage, "close", None)
    if close is not None:
        close()


class StageIO:
    """One stage run: its inputs, output, --resume, --shard, --on-error, --stats and -q, and the runners.

    `run(stage)` feeds the input records through a stage; `run_source(stage, items)` feeds items the command made
    itself (an environment's tasks) through a stage that reads no input (expert, eval). Both write every output
    as one whole line, skip what --resume finds done, close the stage, and write --stats when they end (also on an
    error: the error in flight is the one reported)."""

    def __init__(self, inputs: Iterable[str] = (), output: str | None = "-", resume: bool = False,
                 shard: tuple[int, int] | None = None, on_error: str = "fail", stats: str | None = None,
                 quiet: bool = False, resumable: bool = True):
        if resume and output in (None, "-"):
            raise UsageProblem("--resume needs -o FILE (it continues an output file)")
        if stats and os.path.isdir(stats):  # found now, not after the whole run
            raise InputError("is a directory, not a file to write", stats)
        self.inputs = list(inputs) or ["-"]
        self.output, self.resume, self.shard, self.quiet = output, resume, shard, quiet
        self.on_error = on_error
        self.resumable = resumable  # whether a failed write advises --resume (a command without it: no)
        self.stats_path = stats
        self.reader = Reader(self.inputs, on_error=on_error)
        self.readers = [self.reader]
        self.stats = Stats()
        self.side: list[Writer] = []
        self._end_counts: list[Callable[[], dict[str, int]]] = []
        self._done: set[str] | None = None

    def count(self, name: str, n: int = 1) -> None:
        self.stats.add(name, n)

    def count_at_end(self, counts: Callable[[], dict[str, int]]) -> None:
        """Counts known only when the run ends (a policy's requests): read and set just before --stats is
        written."""
        self._end_counts.append(counts)

    def done(self, key: Callable[[dict], str] = lambda r: r.get("source_id"), kind: str | None = None) -> set[str]:
        """With --resume, the keys (by `key` of each output record) -o FILE already holds, after making the file
        safe to append to (once per run: later calls return the same set); without it, nothing."""
        if not self.resume:
            return set()
        if self._done is None:
            self._done = prepare_resume(self.output, key, kind=kind)
        return self._done

    def read(self, paths: Iterable[str] | None = None,
             validate: Callable[[dict], str | None] | None = None) -> Iterator[dict]:
        """The records of `paths` (default: the inputs), each counted in records_in; one `validate` finds a problem
        with is rejected as FILE:LINE (fatal, or counted with --on-error skip)."""
        reader = self.reader if paths is None else Reader(list(paths), on_error=self.on_error)
        if reader not in self.readers:
            self.readers.append(reader)
        for item in reader:
            self.stats.records_in += 1
            problem = validate(item.record) if validate is not None else None
            if problem:
                reader.reject(item.error(problem))
                continue
            yield item.record

    def side_output(self, path: str | None, *, resume: bool | None = None) -> Writer | None:
        """A second output file a stage writes beside -o (eval's --trajectories, reflect's --rejected): appended to
        under --resume, closed with the run. None for no path."""
        if not path:
            return None
        writer = Writer(path, append=self.resume if resume is None else resume)
        self.side.append(writer)
        return writer

    def run(self, stage: Callable[[dict], Iterable[dict]], validate=None, input_key=lambda r: r.get("id"),
            output_key=lambda r: r.get("source_id"), unit: str = "rec", output_kind: str | None = None) -> None:
        """Map every input record through `stage` and write its outputs, then what `stage.finish()` still holds.
        `output_kind` is the kind of record the stage writes: --resume refuses a file of another kind."""
        try:
            done = self.done(output_key, output_kind)
            writer = self._writer()
            with self.closing(writer), progress_bar(self.quiet, unit=unit) as bar:
                try:
                    run_stage(self.reader, stage, writer, self.stats, validate=validate, shard=self.shard,
                              done=done, input_key=input_key, progress=bar)
                except (InputError, PolicyError):
                    # A bad input line, or a policy that cannot go on (its server gone), stops the run where a
                    # serial run stops: the outputs of the lines before it, still in flight in a stage with
                    # --concurrency or -j, are written first. (A WriteError goes straight out: nothing more can be
                    # written.)
                    self._write_all(writer, _finish(stage))
                    raise
                self._write_all(writer, _finish(stage))
        finally:
            _close(stage)

    def run_source(self, stage: Callable[[dict], Iterable[dict]], items: Iterable[dict], *,
                   key: Callable[[dict], str], shard_key: Callable[[dict], str] | None = None,
                   output_kind: str | None = None, unit: str = "rec") -> None:
        """Run a stage that reads no input over `items` the command made (an environment's tasks): each item counts
        as one input (records_in); with --shard only the items whose `shard_key` falls in this slice are run; with
        --resume an item whose `key` (the id of the record it gives) -o FILE already holds is skipped and counted
        as resumed. Outputs are written as the stage yields them."""
        try:
            items = [item for item in items if shard_key is None or in_shard(shard_key(item), self.shard)]
            done = self.done(lambda r: r.get("id"), output_kind)
            writer = self._writer()
            with self.closing(writer), progress_bar(self.quiet, total=len(items), unit=unit) as bar:
                for item in items:
                    self.stats.records_in += 1
                    bar.update(1)
                    if key(item) in done:
                        self.count("resumed")
                        continue
                    self._write_all(writer, stage(item))
                self._write_all(writer, _finish(stage))
        finally:
            _close(stage)

    def write(self, records: Iterable[dict]) -> None:
        """Write records made from inputs read with `read` (mix), each a whole line as it comes, then --stats."""
        writer = self._writer()
        with self.closing(writer):
            for record in records:
                self._write_all(writer, (record,))

    def _writer(self) -> Writer:
        return Writer(self.output, append=bool(self.resume), resumable=self.resumable)

    def _write_all(self, writer: Writer, records: Iterable[dict]) -> None:
        for out in records:
            writer.write(out, flush=False)
            self.stats.records_out += 1
        writer.flush()

    def closing(self, *writers: Writer | None):
        """Close `writers` and the side outputs, then write --stats, when the block ends; an error in flight is the
        one reported."""
        return closing(*writers, then=self._end)

    def _end(self) -> None:
        try:
            for writer in self.side:
                writer.close()
        finally:
            self.report()

    def report(self) -> None:
        """Say how many bad records were skipped, and write --stats."""
        for counts in self._end_counts:
            self.stats.counts.update(counts())
        self.stats.skipped = sum(r.skipped for r in self.readers)
        if self.stats.skipped:
            self.reader.warn(f"skipped {self.stats.skipped} bad record(s)")
        self.stats.write(self.stats_path)


def progress_bar(quiet: bool, **kwargs):
    """A tqdm bar on stderr, only for a person watching (stderr is a terminal) and never with -q."""
    return tqdm(disable=quiet or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True, **kwargs)
