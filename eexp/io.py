"""JSON Lines in and out: the layer every stage stands on.

Reading names `FILE:LINE` on every problem; writing emits one whole line per record and flushes when asked (after
each input's outputs), so a downstream stage sees records as they are made and an interrupted run never leaves half a
line behind. `prepare_resume` makes an output file safe to append to; `write_atomic` writes a whole file or leaves
the old one. `lock_output` keeps a second run from writing an output this one writes (a Writer takes it on its file).
How a stage runs over them (the `Stage` shape, `StageIO`, --shard, --stats) is eexp.runner.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import secrets
import stat
import sys
import threading
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import orjson

from eexp.errors import EmptyFile, InputError, MissingFile, OutputBusy, WriteError
from eexp.records import KIND_PLURALS, kind_of, type_name

try:
    import fcntl  # POSIX; elsewhere the writer simply cannot cut a torn line back
except ImportError:
    fcntl = None

STDIN_NAME = "<stdin>"
STDIN_PROMPT = "reading records from stdin (Ctrl-D ends; give a FILE to read one)"


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
        path = os.fspath(path)  # a pathlib.Path too (library callers, tests)
        name = STDIN_NAME if path == "-" else path
        if path == "-":
            stream = sys.stdin.buffer
            if sys.stdin.isatty():  # a person at a terminal who gave no FILE would otherwise see a silent wait
                print(f"eexp: {STDIN_PROMPT}", file=sys.stderr, flush=True)
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
                    if seen == 1 and (raw.lstrip().startswith(b"[") or raw.strip() == b"{"):
                        # a JSON array, or pretty-printed objects: one document over many lines, not a record a line
                        convert = "jq -c '.[]'" if raw.lstrip().startswith(b"[") else "jq -c ."
                        tail += (
                            "; this looks like one JSON document, not JSON Lines (one record per line): "
                            f"convert it with `{convert}`"
                        )
                    self.reject(InputError(f"not valid JSON: {e}{tail}", name, lineno))
                    continue
                if not isinstance(obj, dict):
                    hint = ""
                    if seen == 1 and isinstance(obj, list) and obj and all(isinstance(o, dict) for o in obj):
                        # a whole array of records on one line: the same document as above, written compact
                        hint = "; this looks like one JSON document, not JSON Lines: convert it with `jq -c '.[]'`"
                    self.reject(InputError(f"expected a JSON object, got {type_name(obj)}{hint}", name, lineno))
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


# --- one writer per output ---------------------------------------------------------------------------------------
# Two runs writing one file lose or duplicate records (two `mix -o same.jsonl`, two `rollout -o out.jsonl --resume`),
# so every output file a stage writes (-o, a side output) and a finetune's output folder is locked with flock(2) while
# it is written: a second writer is refused at start (OutputBusy, naming the holder's pid). The kernel drops a flock
# when the process that holds it ends, however it ends (kill -9 too): a lock left by a killed run is no lock, and
# the next run simply takes it over; there is no lock file to find stale or to remove. The lock is on the output
# itself (a folder's own descriptor), so nothing is left beside it. A process keeps one locked descriptor per file
# (_HELD): two flocks of one file in one process would refuse each other (prepare_resume's, then the Writer's).


@dataclass
class _Held:
    fd: int
    path: str
    created: bool  # this run made the (empty) file: a run that ends before writing anything removes it again


_HELD: dict[tuple[int, int], _Held] = {}
_HELD_GUARD = threading.Lock()


def lock_output(path: str, folder: bool = False) -> tuple[int, int] | None:
    """Lock output `path` for this process: a file (made, empty, where it is missing) or, with `folder`, a directory.
    Returns the key to give unlock_output, or None where nothing is locked: a device or a fifo (two runs may both
    write -o /dev/null), a path of the other kind or one that cannot be opened (the caller's own open says why), a
    filesystem or system without flock. Raises OutputBusy when another process holds the lock."""
    if fcntl is None:
        return None
    for _ in range(8):  # again when the path is removed or replaced between our open and our lock
        created = False
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError:
            return None
        if st is None:
            if folder:
                return None
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                created = True
            except FileExistsError:
                continue
            except OSError:
                return None
        else:
            if not (stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)):
                return None
            with _HELD_GUARD:
                if (st.st_dev, st.st_ino) in _HELD:
                    return st.st_dev, st.st_ino  # this process holds it already
            fd = _open_to_lock(path)
            if fd is None:
                return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.fstat(fd).st_ino)
            os.close(fd)
            raise OutputBusy(path, holder, folder) from None
        except OSError:  # no locks on this filesystem (ENOLCK): written unlocked, as before
            os.close(fd)
            return None
        mine = os.fstat(fd)
        key = (mine.st_dev, mine.st_ino)
        try:
            there = os.stat(path)
        except OSError:
            there = None
        if there is None or (there.st_dev, there.st_ino) != key:
            os.close(fd)  # we locked a file no longer at `path` (a refused run removed the one it made)
            continue
        with _HELD_GUARD:
            _HELD[key] = _Held(fd, os.path.abspath(path), created)
        return key
    return None


def unlock_output(key: tuple[int, int] | None, discard_empty: bool = False) -> None:
    """Release lock_output's lock. With `discard_empty` (the run ended in an error), a file this run made and left
    empty is removed first, still under the lock: a run refused at start leaves no output behind."""
    if key is None:
        return
    with _HELD_GUARD:
        held = _HELD.pop(key, None)
    if held is None:
        return
    try:
        if discard_empty and held.created:
            with contextlib.suppress(OSError):
                st = os.stat(held.path)
                if (st.st_dev, st.st_ino) == key and st.st_size == 0:
                    os.unlink(held.path)
    finally:
        os.close(held.fd)


def release_output(path: str | None) -> None:
    """Release this process's lock on output `path` where it holds one: a resume planned (plan_resume locks the file
    for the Writer to take over) and then refused before any Writer took it (other settings, a bad input). The
    command's process ends soon after and the kernel would drop it then, but a caller that goes on (a library user,
    a test runner invoking commands in one process) would otherwise keep the file locked against every other
    process for as long as it lives."""
    if path in (None, "-"):
        return
    try:
        st = os.stat(path)
    except OSError:
        return
    unlock_output((st.st_dev, st.st_ino))


def _open_to_lock(path: str) -> int | None:
    """A descriptor of `path` to hold its lock by (flock needs no particular mode: a write-only file too)."""
    for flags in (os.O_RDONLY, os.O_WRONLY):
        try:
            return os.open(path, flags | os.O_CLOEXEC)
        except OSError:
            continue
    return None


def _holder(inode: int) -> int | None:
    """The pid holding a flock on the file with this inode, from Linux's /proc/locks (`1: FLOCK ADVISORY WRITE PID
    MAJ:MIN:INODE 0 EOF`; a waiter's line has `->` after the number); None where it cannot be told."""
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            with contextlib.suppress(ValueError):
                if int(fields[4]) != os.getpid():
                    return int(fields[4])
    return None


class Writer:
    """One whole line per record, flushed at once. `-`/None means stdout.

    The output always ends on a whole line: a write that fails (a full disk) cuts the file back to the last whole
    line and raises WriteError `FILE: cannot write (No space left on device); N whole records kept, continue with
    --resume` (without the advice when `resumable` is False). After that the writer is spent: close() only closes.
    """

    def __init__(
        self, path: str | None = None, append: bool = False, resumable: bool = True, cut_to: int | None = None
    ):
        self.path = None if path in (None, "-") else path
        self.name = self.path or STDOUT_NAME
        self.resumable = resumable and self.path is not None
        self.failed = False
        self.pending: list[bytes] = []
        self.before_first: Callable[[dict], None] | None = None
        self.lock = None
        # A file written anew is emptied, and one resumed cut back to what it keeps (`cut_to`: plan_resume's
        # plan), only when this run writes its first line, or ends without error having written none: a run refused
        # before its first record (a missing input, a file of the wrong kind, other settings) leaves the file as it
        # was.
        self.cut_first_to: int | None = None
        if self.path is None:
            self.stream = sys.stdout.buffer
        else:
            self.lock = lock_output(self.path)  # before the file is emptied: another run may be writing it
            try:
                # unbuffered: each flush writes exactly the pending whole lines, and nothing is left in a buffer
                # that a later close() could write after the file was cut back. Appending: after the file is
                # emptied, lines go at its new end.
                self.stream = open(self.path, "ab", buffering=0)
            except OSError as e:
                unlock_output(self.lock, discard_empty=True)
                raise WriteError(e, self.path) from None
            self.cut_first_to = cut_to if append else 0
        self.whole = self._position()  # the offset just after the last whole line; None where unknown

    def begin(self) -> None:
        """Make the cut now (emptied, or cut back to what a resumed file keeps) if it is still to be made."""
        if self.cut_first_to is not None and not self.failed:
            self._cut_first()

    def _cut_first(self) -> None:
        """Empty a file written anew, or cut a resumed one back, once, before this run's first line (or at a clean
        end without one)."""
        end, self.cut_first_to = self.cut_first_to, None
        try:
            fd = self.stream.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a fifo, a terminal, /dev/stderr: nothing to cut
                return
            os.ftruncate(fd, end)
        except OSError as e:
            self.failed = True
            raise WriteError(e, self.name) from None
        if self.whole is not None:
            self.whole = end

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
        if self.before_first is not None:  # a check of the first record (a resumed file's settings), once
            check, self.before_first = self.before_first, None
            check(record)
        self.pending.append(dumps(record))
        if flush:
            self.flush()

    def flush(self) -> None:
        if self.failed:
            return
        data = b"".join(self.pending)
        self.pending.clear()
        if data and self.cut_first_to is not None:
            self._cut_first()
        try:
            view = memoryview(data)
            while view:  # a raw stream (-o FILE, or an unbuffered stdout) may take part of it
                view = view[self.stream.write(view) or 0 :]
            if self.path is None:
                self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            self._fail(e)
        except BaseException:  # Ctrl-C half-way through a write: the file still ends on a whole line
            if self._holds(len(data)):  # a Ctrl-C just after the write: its lines are whole, and kept
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

    def close(self, discard_empty: bool = False) -> None:
        """Write what is pending, close, and release the lock. `discard_empty`: the run ended in an error, and a file
        it made and wrote nothing into is removed (a run refused at start leaves no output file), one that was
        there is left as it was. Once closed, closing again does nothing (a stage's side outputs are closed with the
        run, and again at its end)."""
        if self.path is not None and self.stream.closed:
            return
        try:
            self.flush()
            if self.cut_first_to is not None and not discard_empty and not self.failed:  # a whole run, no line
                self._cut_first()
        finally:
            if self.path is not None:
                self.stream.close()
                lock, self.lock = self.lock, None
                unlock_output(lock, discard_empty)


@contextlib.contextmanager
def closing(*writers: Writer | None, then: Callable[[BaseException | None], None] | None = None):
    """Close `writers` (None ones skipped), then call `then` with the error the block ended in, or None (it writes
    --stats, which say so), when the block ends. When it ends in an error (a full disk, Ctrl-C), that error is the one
    reported: a second one while closing (the same full disk under --stats) is not allowed to hide it; and an output
    file the run made but wrote nothing into goes again (a run refused at its first record, such as a τ² rollout
    whose user simulator is down, leaves no 0-byte file)."""
    try:
        yield
    except BaseException as error:
        for writer in writers:
            if writer is not None:
                with contextlib.suppress(WriteError):
                    writer.close(discard_empty=True)
        if then is not None:
            with contextlib.suppress(WriteError):
                then(error)
        raise
    for writer in writers:
        if writer is not None:
            writer.close()
    if then is not None:
        then(None)


def make_parent_folders(path: str) -> None:
    """The folders above `path`, made where missing; a file where one of them should be is said as such (not as
    `[Errno 17] File exists`)."""
    parent = os.path.dirname(path)
    if not parent:
        return
    try:
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = parent
        while os.path.dirname(blocking) and not os.path.exists(blocking):
            blocking = os.path.dirname(blocking)
        raise InputError(f"is a file, not a folder: cannot write {path} inside it", blocking) from None
    except OSError as e:
        raise WriteError(e, parent) from None


def refuse_writing_an_input(output: str | None, inputs: Iterable[str]) -> None:
    """An output that is also one of the run's inputs (by its name or by another: a link) would be emptied before it
    is read, and its records lost: refused before anything is opened."""
    if output in (None, "-") or not os.path.exists(output):
        return
    for path in inputs:
        if path not in (None, "-") and os.path.exists(path) and os.path.samefile(output, path):
            raise InputError(
                "is also an input of this run, and writing it would empty it first: write to another file", output
            )


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


def prepare_resume(
    path: str,
    key: Callable[[dict], str] = lambda r: r.get("source_id"),
    kind: str | None = None,
    whole_records: bool = False,
    check: Callable[[dict], None] | None = None,
) -> set[str]:
    """plan_resume, and the cut made at once (a side file rewritten whole: reflect's --rejected)."""
    done, end = plan_resume(path, key, kind, whole_records, check)
    if end is not None:
        try:
            with open(path, "r+b") as f:
                f.truncate(end)
        except OSError as e:
            raise WriteError(e, path) from None
    return done


def plan_resume(
    path: str,
    key: Callable[[dict], str] = lambda r: r.get("source_id"),
    kind: str | None = None,
    whole_records: bool = False,
    check: Callable[[dict], None] | None = None,
) -> tuple[set[str], int | None]:
    """The keys of the inputs an output file already covers, and where to cut it back to before appending (None:
    nothing to cut); nothing is cut here (the Writer does it at its first line, or prepare_resume at once).

    A torn last line (a killed process) is to be cut off. The records of the last input in the file are dropped too,
    since that input may have been cut short between two of its outputs; it is simply done again. Outputs are
    deterministic, so the file ends as an uninterrupted run would have written it. With `whole_records` (a stage
    that writes one record per key: expert's trajectories, eval's episodes) a whole last line is a finished input,
    and is kept: an hour-long episode is not run again at every resume. With `kind` (the kind of record the stage
    writes, see eexp.records), a file holding another kind (another stage's output) is refused untouched; so is one
    a record of which `check` raises for (a file begun with another --shard).
    """
    if not os.path.exists(path):
        return set(), None
    if os.path.isdir(path):
        raise InputError("is a directory, not a JSONL file", path)
    held = _held(path)
    lock = lock_output(path)  # held on into the Writer that appends to it: no other run may cut or extend it meanwhile
    try:
        return _prepare_resume(path, key, kind, whole_records, check)
    except BaseException:
        if not held:
            unlock_output(lock)  # refused: the file is not written after all
        raise


def _held(path: str) -> bool:
    """Whether this process holds lock_output's lock on `path` already."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    with _HELD_GUARD:
        return (st.st_dev, st.st_ino) in _HELD


def _prepare_resume(
    path: str, key: Callable[[dict], str], kind: str | None, whole_records: bool, check: Callable[[dict], None] | None
) -> tuple[set[str], int | None]:
    """plan_resume's work, done under the file's lock."""
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
                raise InputError(
                    "cannot resume: the line is not JSON (fix or remove it, then --resume again)", path, lineno
                ) from None
            if not isinstance(record, dict):
                raise InputError("cannot resume: the line is not a JSON object", path, lineno)
            if kind is not None:
                found = kind_of(record)
                if found != kind:
                    held = KIND_PLURALS.get(found, "records of no kind eexp knows")
                    raise InputError(
                        f"cannot resume: this file holds {held}, not {KIND_PLURALS[kind]} (written by another stage?)",
                        path,
                        lineno,
                    )
            if check is not None:
                check(record)
            keys.append((key(record), offset))
        offset += len(raw)
    if keys and not whole_records:
        last = keys[-1][0]
        while keys and keys[-1][0] == last:
            end = keys.pop()[1]
    return {k for k, _ in keys}, (end if end != len(data) else None)


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
    folder, name = os.path.split(target)
    # A name no one can guess, made by this call: "x" is O_CREAT | O_EXCL, which fails on any file or symlink
    # already there (one planted in a shared folder is never followed). The mode is a plain open's (umask).
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError as e:
        if not isinstance(e, FileExistsError):  # another's file at that name (2^-64) is not ours to remove
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise WriteError(e, path) from None
