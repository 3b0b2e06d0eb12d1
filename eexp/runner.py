"""The stage runner: how a stage's records go from its inputs to its output.

`run_stage` ties reading, validation, sharding, resume, stats and writing together for the stages that map each
input record to zero or more output records; `StageIO` holds one run's inputs, output and options and runs a stage
either over input records (`run`) or over items the command makes itself, such as an environment's tasks
(`run_source`: expert, eval). With them: which records a `--shard I/N` runs (`parse_shard`, `in_shard`, `shard_key`),
the counts `--stats FILE` writes (`Stats`), and the progress bar on stderr (`progress_bar`, which finetune and rl
show too). Reading and writing the records themselves is eexp.io.

Every stage has one shape (`Stage`): called with one record it yields that record's outputs, `finish()` yields what
it still holds after the last one, `close()` releases what it holds; it reports counts through the
`count(name, n)` it was given (`StageIO.count`). A plain function of one record is a stage with nothing to finish.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import orjson
from tqdm import tqdm

from eexp.errors import InputError, PolicyError, Terminated, UsageProblem, WriteError, first_line
from eexp.io import Reader, Writer, closing, plan_resume, refuse_writing_an_input, release_output, write_atomic
from eexp.records import run_settings


class RecordError(Exception):
    """Raised by a stage for one record it cannot use; the runner adds FILE:LINE and applies --on-error."""


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
    # why the run stopped before its end (the error it exits with), so counts of a part are not read as a whole run's
    failed: str | None = None

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def as_dict(self) -> dict:
        return {
            "records_in": self.records_in,
            "records_out": self.records_out,
            "skipped": self.skipped,
            "seconds": round(time.perf_counter() - self.started, 3),
            **self.counts,
            **({"failed": self.failed} if self.failed else {}),
        }

    def write(self, path: str | None) -> None:
        if path:
            write_atomic(path, orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")


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
    same_input: SameInput | None = None,
) -> None:
    """Feed each input record through `process` and write what it yields.

    validate(record) returns an error message for a record this stage cannot take; `process` raises RecordError for
    the same reason later. Both become `FILE:LINE: message` and follow --on-error. Inputs whose key is in `done`
    (from prepare_resume) are skipped, each checked by `same_input` first where there is one.
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
            if same_input is not None:
                same_input.skipped(record)
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
    close; a subclass overrides what it needs.

    A stage that chooses from all of its input (`holds_whole_input`: curate) writes nothing when the input fails part
    of the way, where a streaming stage writes what it still holds: a choice from part of the pool would pass for a
    choice from all of it."""

    holds_whole_input = False

    def __call__(self, record: dict) -> Iterable[dict]:
        raise NotImplementedError

    def finish(self) -> Iterable[dict]:
        return ()

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class MadeFrom:
    """How a stage's output record shows the input record it was made from, for --resume (SameInput): `input(record)`
    and `output(record)` each give (the input's id, what of the input the record shows), the same for an input and
    the output made from it. `MadeFrom.alike(f)`: an output that keeps its input's id and `f` of its content
    (rollout: an outcome is its branch record with the results added). `many`: an input gives several outputs, and
    `input(record)` gives the list of what each of them shows, in their order (world-model-eval: a prediction per
    transition of an outcome)."""

    input: Callable[[dict], tuple[str, Any]]
    output: Callable[[dict], tuple[str, Any]]
    many: bool = False

    @classmethod
    def alike(cls, shown: Callable[[dict], Any]) -> MadeFrom:
        def both(record: dict) -> tuple[str, Any]:
            return str(record.get("id")), shown(record)

        return cls(both, both)


class SameInput:
    """--resume's check that -o FILE was begun from this input, for a stage that writes an input's records together,
    in input order (rollout one per branch record, reflect one per outcome or none, world-model-eval one per
    transition), each showing which input it was made from (MadeFrom).

    The settings a file's records carry (run_settings) cannot tell two inputs made with the same settings: a rollout
    part begun from one expert file's branches and continued from another's (the same tasks, other states) would
    hold both. So each kept record is remembered by its input's id, and the continuation is refused, before it
    writes anything, where an input it skips has no kept record or another one (`skipped`), or where it is about to
    write while kept records are still unmatched by the inputs before (`before_write`): the file is not a beginning
    of this input's outputs."""

    def __init__(self, output: str, made_from: MadeFrom):
        self.output, self.made_from = output, made_from
        # input id -> (its kept records' resume key, the digest of what each shows of it, in the file's order)
        self.kept: dict[str, tuple[Any, list[bytes]]] = {}
        self.matched: set[str] = set()  # the input ids skipped so far, each matching its kept records

    def keep(self, record: dict, key: Any) -> None:
        input_id, shown = self.made_from.output(record)
        self.kept.setdefault(input_id, (key, []))[1].append(_digest(shown))

    def only(self, done: set[str]) -> None:
        """Forget the records of the inputs the resume does again (the last one's, cut from the file)."""
        self.kept = {rid: kept for rid, kept in self.kept.items() if kept[0] in done}

    def skipped(self, record: dict) -> None:
        input_id, shown = self.made_from.input(record)
        kept = self.kept.get(input_id)
        if kept is None:
            self._refuse(f"it holds records of {record.get('source_id')} but none of {input_id}")
        if kept[1] != [_digest(one) for one in (shown if self.made_from.many else [shown])]:
            its = "its records of {} were" if self.made_from.many else "its record of {} was"
            self._refuse(f"{its.format(input_id)} made from another input record than this one")
        self.matched.add(input_id)

    def before_write(self) -> None:
        unmatched = sum(len(kept[1]) for input_id, kept in self.kept.items() if input_id not in self.matched)
        if unmatched:
            records = sum(len(kept[1]) for kept in self.kept.values())
            self._refuse(f"{unmatched} of its {records} records are of inputs that this input does not begin with")

    def _refuse(self, said: str) -> None:
        raise UsageProblem(
            f"--resume: {self.output} was begun from another input ({said}): resume it with the input it was begun "
            "from, or write to another file"
        )


def _digest(value: Any) -> bytes:
    return hashlib.blake2b(orjson.dumps(value, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


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
    error: the error in flight is the one reported; not when the output cannot be opened or resumed at all)."""

    def __init__(
        self,
        inputs: Iterable[str] = (),
        output: str | None = "-",
        resume: bool = False,
        shard: tuple[int, int] | None = None,
        on_error: str = "fail",
        stats: str | None = None,
        quiet: bool = False,
        resumable: bool = True,
    ):
        if resume and output in (None, "-"):
            raise UsageProblem("--resume needs -o FILE (it continues an output file)")
        if stats and os.path.isdir(stats):  # found now, not after the whole run
            raise InputError("is a directory, not a file to write", stats)
        self.inputs = list(inputs) or ["-"]
        refuse_writing_an_input(output, self.inputs)
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
        self._cut_to: int | None = None  # where a resumed -o FILE is cut back to at this run's first line
        self._resumed_settings: dict | None = None  # a resumed file's run_settings, until checked against ours
        self._same_input: SameInput | None = None  # with `run`'s made_from: whether the file is this input's
        self._output_writer_made = False  # whether a Writer took over the lock a resume's plan put on -o FILE

    def count(self, name: str, n: int = 1) -> None:
        self.stats.add(name, n)

    def count_at_end(self, counts: Callable[[], dict[str, int]]) -> None:
        """Counts known only when the run ends (a policy's requests): read and set just before --stats is
        written."""
        self._end_counts.append(counts)

    def done(
        self,
        key: Callable[[dict], str] = lambda r: r.get("source_id"),
        kind: str | None = None,
        whole_records: bool = False,
        made_from: MadeFrom | None = None,
    ) -> set[str]:
        """With --resume, the keys (by `key` of each output record) -o FILE already holds, after making the file
        safe to append to (once per run: later calls return the same set); without it, nothing. `whole_records`:
        each key has one record, so the last whole line is a finished input (see prepare_resume). `made_from`: the
        file is continued only from the input that began it (SameInput); given at the first call, and to `run`."""
        if not self.resume:
            return set()
        if self._done is None:
            if made_from is not None:
                self._same_input = SameInput(self.output, made_from)
            # Each setting as the first record that has it says (a reflection's model settings are in a model
            # reflection's alone, and the first may be a grounded fallback's).
            settings: dict[str, Any] = {}
            # A record's shard key is its input's (the trajectory it comes from), so a file begun with another
            # --shard, or none, shows it in its records. (expert's and eval's are checked against their items.)
            shard = None if whole_records else self.shard

            def check(record: dict) -> None:
                for name, value in (run_settings(record) or {}).items():
                    settings.setdefault(name, value)
                if shard is not None and not in_shard(shard_key(record), shard):
                    raise resumed_with_another_shard(self.output, shard_key(record), shard)
                if self._same_input is not None:
                    self._same_input.keep(record, key(record))

            # nothing is cut yet: the Writer cuts the file back at this run's first line (or clean end), so a run
            # refused before it (other settings, another slice) leaves the file as it was
            self._done, self._cut_to = plan_resume(
                self.output, key, kind=kind, whole_records=whole_records, check=check
            )
            self._resumed_settings = settings or None
            if self._same_input is not None:
                self._same_input.only(self._done)
        return self._done

    def release(self) -> None:
        """When the command ends: the lock a resume's plan put on -o FILE, where no Writer took it over (the run was
        refused before its first record); a Writer releases its own when it closes."""
        if self._done is not None and not self._output_writer_made:
            release_output(self.output)

    def resumed_records(self) -> Iterator[dict]:
        """The records -o FILE keeps on resume (after `done`): its whole lines up to where this run appends."""
        with open(self.output, "rb") as f:
            data = f.read() if self._cut_to is None else f.read(self._cut_to)
        for line in data[: data.rfind(b"\n") + 1].splitlines():
            if line.strip():
                yield orjson.loads(line)

    def read(
        self, paths: Iterable[str] | None = None, validate: Callable[[dict], str | None] | None = None
    ) -> Iterator[dict]:
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

    def check_side_path(self, path: str) -> None:
        """A side output may be neither an input (emptied before it is read) nor -o's file (two writers on one
        file: one's lines cut by the other)."""
        refuse_writing_an_input(path, self.inputs)
        if self.output in (None, "-"):
            return
        same = os.path.abspath(path) == os.path.abspath(self.output)
        if same or (os.path.exists(path) and os.path.exists(self.output) and os.path.samefile(path, self.output)):
            raise UsageProblem(f"{path}: is -o's file too; give the side output a file of its own")

    def side_output(self, path: str | None, *, resume: bool | None = None) -> Writer | None:
        """A second output file a stage writes beside -o (eval's --trajectories, reflect's --rejected): appended to
        under --resume, closed with the run. None for no path."""
        if not path:
            return None
        self.check_side_path(path)
        writer = Writer(path, append=self.resume if resume is None else resume)
        self.side.append(writer)
        return writer

    def run(
        self,
        stage: Callable[[dict], Iterable[dict]],
        validate=None,
        input_key=lambda r: r.get("id"),
        output_key=lambda r: r.get("source_id"),
        unit: str = "rec",
        output_kind: str | None = None,
        made_from: MadeFrom | None = None,
    ) -> None:
        """Map every input record through `stage` and write its outputs, then what `stage.finish()` still holds.
        `output_kind` is the kind of record the stage writes: --resume refuses a file of another kind. `made_from`:
        --resume continues the file only from the input that began it (SameInput, which says for which stages)."""
        try:
            done = self.done(output_key, output_kind, made_from=made_from)
            if made_from is not None and self.resume and self._same_input is None:
                raise RuntimeError("StageIO.done was called before run without the made_from given to run")
            writer = self._writer()
            with self.closing(writer), progress_bar(self.quiet, unit=unit) as bar:
                try:
                    run_stage(
                        self.reader,
                        stage,
                        writer,
                        self.stats,
                        validate=validate,
                        shard=self.shard,
                        done=done,
                        input_key=input_key,
                        progress=bar,
                        same_input=self._same_input if done else None,
                    )
                except (InputError, PolicyError):
                    # A bad input line, or a policy that cannot go on (its server gone), stops the run where a
                    # serial run stops: the outputs of the lines before it, still in flight in a stage with
                    # --concurrency or -j, are written first. (A WriteError goes straight out: nothing more can be
                    # written.)
                    if not getattr(stage, "holds_whole_input", False):
                        self._write_all(writer, _finish(stage))
                    raise
                self._write_all(writer, _finish(stage))
                if done and self._same_input is not None and not self.stats.records_out:
                    self._same_input.before_write()  # a run that added nothing: its input ends before the file's
        finally:
            _close(stage)

    def run_source(
        self,
        stage: Callable[[dict], Iterable[dict]],
        items: Iterable[dict],
        *,
        key: Callable[[dict], str],
        shard_key: Callable[[dict], str] | None = None,
        output_kind: str | None = None,
        unit: str = "rec",
    ) -> None:
        """Run a stage that reads no input over `items` the command made (an environment's tasks): each item counts
        as one input (records_in); with --shard only the items whose `shard_key` falls in this slice are run; with
        --resume an item whose `key` (the id of the record it gives) -o FILE already holds is skipped and counted
        as resumed. Outputs are written as the stage yields them."""
        try:
            done = self.done(lambda r: r.get("id"), output_kind, whole_records=True)  # one record per item
            items = list(items)
            if shard_key is not None and self.shard is not None:
                # an item of another slice already written: the file was begun with another --shard, or none
                theirs = done & {key(item) for item in items if not in_shard(shard_key(item), self.shard)}
                if theirs:
                    raise resumed_with_another_shard(self.output, min(theirs), self.shard)
                items = [item for item in items if in_shard(shard_key(item), self.shard)]
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
        writer = Writer(self.output, append=bool(self.resume), resumable=self.resumable, cut_to=self._cut_to)
        self._output_writer_made = True
        if self._resumed_settings is not None or self._same_input is not None:  # the first record this run adds
            writer.before_first = self._check_same_run
        return writer

    def _write_all(self, writer: Writer, records: Iterable[dict]) -> None:
        for out in records:
            writer.write(out, flush=False)
            self.stats.records_out += 1
        writer.flush()

    def _check_same_run(self, record: dict) -> None:
        """--resume continues a file only with the settings that began it: one file never holds records of two
        runs (a `branch -k 2` file continued with `-k 5`). Checked on the first record this run adds, before it is
        written; the file is left as it was. So is one begun from another input (SameInput)."""
        self.check_resumed_settings(run_settings(record))
        if self._same_input is not None and self._done:
            self._same_input.before_write()

    def check_resumed_settings(self, ours: dict | None) -> None:
        """Refuse to continue the resumed file (after `done`) where its records' settings differ from `ours` on a
        setting both name. A stage whose first record may not name them all calls it before it writes (reflect: a
        grounded fallback's record has no model settings)."""
        theirs = self._resumed_settings
        if ours is None or theirs is None:
            return
        ours = orjson.loads(orjson.dumps(ours))  # as the file holds it (a tuple is a list there)
        differ = [key for key in ours if key in theirs and theirs[key] != ours[key]]
        if not differ:
            return
        said = "; ".join(f"{key}: {_short(theirs.get(key))} there, {_short(ours.get(key))} here" for key in differ)
        raise UsageProblem(
            f"--resume: {self.output} was begun with other settings ({said}): resume it with the settings it was "
            "begun with, or write to another file"
        )

    @contextlib.contextmanager
    def closing(self, *writers: Writer | None):
        """Close `writers` and the side outputs, then write --stats, when the block ends; an error in flight is the
        one reported. A side output written anew is emptied at its first line, as -o is; where the run stops after
        it wrote a record but before the side output's first line, it is emptied then: what it held is another
        run's (a --rejected file's old rejections would be taken for this run's on --resume)."""
        with closing(*writers, *self.side, then=self._end):
            try:
                yield
            except BaseException:
                if self.stats.records_out:
                    for writer in self.side:
                        with contextlib.suppress(WriteError):  # the error in flight is the one reported
                            writer.begin()
                raise

    def _end(self, error: BaseException | None = None) -> None:
        if error is not None:
            self.stats.failed = _why_it_stopped(error)
            if (
                isinstance(error, (InputError, PolicyError))
                and self.output not in (None, "-")
                and self.stats.records_out
            ):
                # what a bad line or a lost server left behind, and how to go on from it (the error says what)
                n = self.stats.records_out
                add_note(
                    error,
                    f"this run wrote {n} whole record{'' if n == 1 else 's'} to {self.output} before it stopped"
                    + ("; once that is fixed, --resume continues the file" if self.resumable else ""),
                )
        try:
            for writer in self.side:
                writer.close()
        finally:
            self.report()

    def report(self) -> None:
        """Say how many bad records were skipped, and write --stats (with `failed`, why, when the run stopped
        early)."""
        for counts in self._end_counts:
            self.stats.counts.update(counts())
        self.stats.skipped = sum(r.skipped for r in self.readers)
        if self.stats.skipped:
            self.reader.warn(f"skipped {self.stats.skipped} bad record(s)")
        self.stats.write(self.stats_path)


def add_note(error: BaseException, note: str) -> None:
    """BaseException.add_note (Python 3.11), on 3.10 too: the CLI prints an EexpError's __notes__ below it."""
    error.__notes__ = [*getattr(error, "__notes__", ()), note]


def resumed_with_another_shard(path: str, key: str, shard: tuple[int, int]) -> UsageProblem:
    """--resume with a --shard the file was not begun with, or a whole run's file continued as a slice: one file
    never holds two slices' records. (A slice's file continued without --shard is finished as the whole run, in
    another order.)"""
    i, n = shard
    return UsageProblem(
        f"--resume: {path} holds records of {key}, which is not in --shard {i}/{n}: resume it with the --shard it "
        "was begun with, or write to another file"
    )


def _short(value) -> str:
    """A setting's value as JSON, cut to 80 characters."""
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def _why_it_stopped(error: BaseException) -> str:
    """The first line of what the run exits with: `FILE:LINE: what is wrong`, `interrupted`, `terminated`."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, Terminated):
        return "terminated"
    return first_line(error)


def progress_bar(quiet: bool, **kwargs):
    """A tqdm bar on stderr, only for a person watching (stderr is a terminal) and never with -q."""
    return tqdm(disable=quiet or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True, **kwargs)
