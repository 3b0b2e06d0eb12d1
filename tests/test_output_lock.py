"""One writer per output (issue 65): every output file a stage writes with -o, and a finetune's output folder, is
locked while it is written, and a second writer is refused at start with one line naming the holder's pid.

Before, two `eexp mix ... -o same.jsonl` both exited 0 and lost one run's records (or left lines that were not JSON),
and two `eexp rollout ... -o out.jsonl --resume` at once duplicated hundreds of records. A lock left by a killed run
is no lock (the kernel drops a flock with its process): the next run takes it over. stdout is not locked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from eexp.cli import cli

EEXP = [sys.executable, "-m", "eexp"]


def invoke(args: list) -> object:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def busy(path, pid: int, folder: bool = False) -> str:
    what = "into this folder" if folder else "this file"
    return f"Error: {path}: another eexp run (pid {pid}) is writing {what}; wait for it to end, or give another -o\n"


@pytest.fixture
def holder():
    """hold(path, folder=False) -> a process holding eexp's lock on `path` (as a run writing it does), until the
    test ends; killed with SIGKILL by kill()."""
    procs = []

    def hold(path, folder: bool = False):
        code = textwrap.dedent(f"""
            import sys, time
            from eexp.io import lock_output
            assert lock_output({str(path)!r}, folder={folder}) is not None
            print("locked", flush=True)
            time.sleep(60)
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield hold
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def ids(path) -> list[str]:
    """The ids of a file that must hold whole JSON lines only."""
    data = Path(path).read_bytes()
    assert data.endswith(b"\n")
    return [orjson.loads(line)["id"] for line in data.splitlines()]


ALL = [f"e{i}" for i in range(30_000)]


@pytest.fixture
def examples(tmp_path) -> Path:
    path = tmp_path / "examples.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "id": f"e{i}",
                    "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                }
            )
            + b"\n"
            for i in range(30_000)
        )
    )
    return path


def test_a_second_writer_is_refused_naming_the_holder_and_the_file_is_left_as_it_was(examples, tmp_path, holder):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "written by the first run"}\n')
    first = holder(out)
    result = invoke(["mix", examples, "-o", out])
    assert result.exit_code == 1
    assert result.stderr == busy(out, first.pid)
    assert out.read_bytes() == b'{"id": "written by the first run"}\n'  # not emptied, not appended to
    result = invoke(["mix", examples, "-o", out, "--stats", tmp_path / "stats.json"])
    assert result.stderr == busy(out, first.pid) and not (tmp_path / "stats.json").exists()


def test_resume_is_refused_before_it_touches_the_file(tmp_path, holder):
    """A second `--resume` must not cut the file back (prepare_resume) while the first appends to it."""
    out = tmp_path / "outcomes.jsonl"
    out.write_bytes(b'{"id": "a", "source_id": "s1"}\n{"id": "b", "source_id": "s2"}\n{"id": "c", "source_')
    first = holder(out)
    branches = tmp_path / "branches.jsonl"
    branches.write_bytes(b'{"id": "x"}\n')
    result = invoke(["rollout", branches, "-o", out, "--resume"])
    assert result.stderr == busy(out, first.pid)
    assert out.read_bytes().endswith(b'{"id": "c", "source_')


def test_two_concurrent_writers_lose_and_duplicate_nothing(examples, tmp_path):
    """Two `mix -o same.jsonl` at once: the second is refused while the first writes, and the file then holds the
    first run's records, each once and whole. The first reads from a pipe held open, so the two overlap for certain
    (two runs started together could also run in turn, which told nothing)."""
    out = tmp_path / "same.jsonl"
    lines = examples.read_bytes().splitlines(keepends=True)
    first = subprocess.Popen([*EEXP, "mix", "-", "-o", str(out)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    first.stdin.write(b"".join(lines[:10]))
    first.stdin.flush()
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_bytes().count(b"\n") == 10):  # written as read: the first holds the lock
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run([*EEXP, "mix", str(examples), "-o", str(out)], capture_output=True, text=True)
    assert (second.returncode, second.stderr) == (1, busy(out, first.pid))
    first.stdin.write(b"".join(lines[10:]))
    first.stdin.close()
    assert first.wait() == 0 and first.stderr.read() == b""
    assert ids(out) == ALL


def test_a_lock_left_by_a_killed_run_is_taken_over(examples, tmp_path, holder):
    out = tmp_path / "out.jsonl"
    first = holder(out)
    first.send_signal(signal.SIGKILL)
    first.wait()
    result = invoke(["mix", examples, "-o", out])
    assert result.exit_code == 0, result.output
    assert ids(out) == ALL


def test_stdout_and_devices_are_not_locked(examples, tmp_path):
    from eexp.io import Writer

    writer = Writer(os.devnull)  # nothing is locked there: two runs may both write -o /dev/null
    try:
        assert writer.lock is None
        assert invoke(["mix", examples, "-o", os.devnull]).exit_code == 0
    finally:
        writer.close()
    assert [orjson.loads(line)["id"] for line in invoke(["mix", examples]).stdout.splitlines()] == ALL


def test_a_finetune_into_a_folder_another_run_writes_is_refused(tmp_path, holder):
    pytest.importorskip("torch")
    out = tmp_path / "run"
    out.mkdir()
    first = holder(out, folder=True)
    data = tmp_path / "il.jsonl"
    data.write_bytes(b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    result = invoke(["finetune", data, "--model", tmp_path / "no-model", "-o", out, "--resume"])
    assert result.exit_code == 1
    assert result.stderr == busy(out, first.pid, folder=True)


@pytest.mark.parametrize(
    "first, refused",
    [
        (["reflect", "--reflector", "grounded", "OUTCOMES"], ["--history", "1"]),  # another serializer
        (["expert", "--env", "shop", "-n", "2"], ["--seed", "9"]),  # another seed: expert's own StageIO
    ],
)
def test_a_resume_refused_for_other_settings_leaves_the_file_unlocked(tmp_path, first, refused):
    """The resume's plan locks -o FILE for the Writer to take over; refused before the Writer was made, the lock was
    kept for as long as the process lived: a caller that goes on (here CliRunner, in this process) left the file
    locked against every other run."""
    from by_hand import OUTCOMES

    out = tmp_path / "out.jsonl"
    first = [OUTCOMES if a == "OUTCOMES" else a for a in first]
    assert invoke([*first, "-o", out, "-q"]).exit_code == 0
    whole = out.read_bytes()
    result = invoke([*first, "-o", out, "-q", "--resume", *refused])
    assert result.exit_code == 2 and "was begun with other settings" in result.output, result.output
    assert out.read_bytes() == whole
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_bytes(
        b'{"id": "e0", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    )
    other = subprocess.run([*EEXP, "mix", str(tiny), "-o", str(out)], capture_output=True, text=True)
    assert (other.returncode, other.stderr) == (0, "")
    assert ids(out) == ["e0"]
