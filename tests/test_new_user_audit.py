"""Findings of a new user's audit: SIGTERM to a stage without worker processes, the serializer's limits and the
sampling settings refusing values that meant something else silently, and a stage at a terminal saying that it
waits for records on stdin."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from eexp.cli import cli
from eexp.errors import Terminated
from eexp.workers import Pool, raise_terminated, sigterm_raises


def invoke(args: list):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def expert(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "expert.jsonl"
    assert invoke(["expert", "--env", "shop", "-n", "6", "-o", path, "-q"]).exit_code == 0
    return path


def eexp(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eexp", *args], **kwargs)


# --- SIGTERM without -j ------------------------------------------------------------------------------------------


def test_sigterm_to_a_stage_without_workers_ends_it_as_ctrl_c_does(expert, tmp_path):
    """DESIGN.md: SIGTERM ends a stage as Ctrl-C does. With the default -j 1 it killed the stage at once: exit 143
    from the kernel, but no `eexp: terminated`, no --stats, whatever was buffered lost."""
    out, stats = tmp_path / "il.jsonl", tmp_path / "stats.json"
    lines = expert.read_bytes().splitlines(keepends=True)
    proc = eexp("imitation-data", "-", "-o", str(out), "--stats", str(stats), "-q", stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdin.write(lines[0])  # one trajectory, and the stage waits for the next: mid-run
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not (out.exists() and out.stat().st_size):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert proc.stderr.read().decode() == "eexp: terminated\n"
    proc.stdin.close()
    proc.stderr.close()
    data = out.read_bytes()
    assert data.endswith(b"\n"), "a torn last line"
    assert data and all(isinstance(json.loads(line), dict) for line in data.splitlines())  # whole records only
    assert json.loads(stats.read_text())["failed"] == "terminated"


def test_sigterm_raises_only_in_place_of_the_default_and_restores_it():
    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with sigterm_raises():
            assert signal.getsignal(signal.SIGTERM) is raise_terminated
            with pytest.raises(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises at the next bytecode; this is never reached in full
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # someone else's choice: left alone
        with sigterm_raises():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_pool_takes_the_sigterm_handler_over_and_gives_it_back():
    """A pool holds SIGTERM during its calls into concurrent.futures (_Interrupts); under sigterm_raises (every
    stage, now) it must still take the handler over, and leave sigterm_raises' one when it ends."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with sigterm_raises():
            with Pool(1, dict) as pool:
                assert signal.getsignal(signal.SIGTERM) == pool._interrupts._handle
            assert signal.getsignal(signal.SIGTERM) is raise_terminated
    finally:
        signal.signal(signal.SIGTERM, before)


# --- limits that meant something else ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        # -1 dropped the last admissible action (a Python slice); 0 left the heading over an empty list
        ("--max-admissible", "-1", "Invalid value for '--max-admissible': -1 is not in the range x>=1."),
        ("--max-admissible", "0", "Invalid value for '--max-admissible': 0 is not in the range x>=1."),
        # a negative limit meant no limit
        ("--max-observation-chars", "-5", "Invalid value for '--max-observation-chars': -5 is not in the range x>=0."),
        ("--max-history-chars", "-1", "Invalid value for '--max-history-chars': -1 is not in the range x>=0."),
    ],
)
def test_serializer_limits_refuse_what_they_cannot_mean(expert, option, value, message):
    result = invoke(["imitation-data", expert, f"{option}={value}"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == f"Error: {message}"


def test_a_zero_character_limit_is_no_limit_as_the_help_says(expert):
    help_text = " ".join(invoke(["imitation-data", "--help"]).output.split())
    assert "Clip the current observation to this many characters (0: no limit)." in help_text
    assert "Clip each observation in the history to this many characters (0: no limit)." in help_text
    assert "List at most this many admissible actions (--no-admissible: none)." in help_text
    result = invoke(["imitation-data", expert, "--max-observation-chars", "0", "--max-history-chars", "0", "-q"])
    assert result.exit_code == 0
    assert "…" not in result.stdout  # nothing clipped


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature", "-1"], "Invalid value for '--temperature': -1.0 is not in the range x>=0."),
        (["--top-p", "0"], "Invalid value for '--top-p': 0.0 is not in the range 0<x<=1."),
        (["--top-p", "1.5"], "Invalid value for '--top-p': 1.5 is not in the range 0<x<=1."),
    ],
)
def test_branch_refuses_sampling_settings_out_of_range(expert, args, message):
    result = invoke(["branch", expert, *args])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == f"Error: {message}"


@pytest.mark.parametrize("command", ["branch", "reflect", "eval"])
def test_top_p_and_temperature_have_help(command):
    help_text = " ".join(invoke([command, "--help"]).output.split())
    assert (
        "--top-p FLOAT RANGE Nucleus sampling: draw each token from the most likely ones whose probabilities add up "
        "to this share (above 0; 1: from all tokens)." in help_text
    )
    assert "--temperature FLOAT RANGE Sampling temperature (0: greedy, the most likely reply every time)." in help_text


# --- a stage at a terminal ---------------------------------------------------------------------------------------


def test_a_stage_reading_a_terminal_says_so(tmp_path):
    """`eexp imitation-data` with no FILE, at a terminal, waited silently; it says what it waits for, once."""
    primary, terminal = pty.openpty()
    proc = eexp("imitation-data", stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(terminal)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        assert ready, "nothing said within 60 s"
        said = proc.stderr.readline().decode()
        assert said == "eexp: reading records from stdin (Ctrl-D ends; give a FILE to read one)\n"
        os.write(primary, b"\x04")  # Ctrl-D at the start of a line: end of input
        assert proc.wait(timeout=60) == 0
        assert proc.stderr.read().decode() == "eexp: no records on stdin\n"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
        os.close(primary)


def test_a_stage_reading_a_pipe_says_nothing(expert):
    done = subprocess.run([sys.executable, "-m", "eexp", "imitation-data", "-q"], input=expert.read_bytes(),
                          capture_output=True, timeout=120)  # fmt: skip
    assert done.returncode == 0
    assert done.stderr == b""
