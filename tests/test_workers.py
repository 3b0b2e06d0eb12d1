"""Worker processes die with their parent: `kill -9` of `eexp rollout -j 2` / `eexp eval -j 2` leaves no worker
and no multiprocessing resource tracker behind (they used to run on, re-parented to PID 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the process tree from /proc")

ROOT = Path(__file__).parent.parent
EEXP = [sys.executable, "-m", "eexp"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a live or zombie process, None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:   # gone
        return None
    fields = text[text.rindex(")") + 2:].split()   # after "pid (comm) "
    return int(fields[1]), fields[0], fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every process below `root` (children, grandchildren, ...): pid -> start time (so a reused pid is told apart)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parents[int(entry)] = st
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, (ppid, _state, start) in parents.items():
            if ppid == pid and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def alive(pid: int, start: str) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == start and st[1] != "Z"   # a zombie is dead, waiting for PID 1 to reap it


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def kill_and_check(proc: subprocess.Popen, workers: int) -> list[int]:
    """Once `workers` spawned workers and the resource tracker are up, SIGKILL the parent (still running); then
    every process it had below it must be gone within 10 s. Returns the workers' pids."""
    below: dict[int, str] = {}
    try:
        assert wait_for(lambda: sum("spawn_main" in cmdline(p) for p in descendants(proc.pid)) >= workers, 60), \
            "the workers never started"
        below = descendants(proc.pid)
        kinds = {p: "worker" if "spawn_main" in cmdline(p) else
                 "resource_tracker" if "resource_tracker" in cmdline(p) else cmdline(p) for p in below}
        assert sorted(kinds.values()) == ["resource_tracker"] + ["worker"] * workers
        assert proc.poll() is None, "the parent had already finished: nothing was tested"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: not any(alive(p, s) for p, s in below.items()), 10), \
            "still running 10 s after the parent was killed: " + \
            ", ".join(f"{p} {cmdline(p)}" for p, s in below.items() if alive(p, s))
        return sorted(p for p, kind in kinds.items() if kind == "worker")
    finally:   # never leave what this test started behind, whatever failed
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, start in below.items():
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def test_rollout_workers_die_with_a_killed_parent(tmp_path):
    br = tmp_path / "br.jsonl"
    expert = subprocess.run(EEXP + ["expert", "--env", "shop", "-n", "40", "--seed", "2"], env=env(), check=True,
                            capture_output=True).stdout
    subprocess.run(EEXP + ["branch", "--propose", "admissible", "-k", "4", "-o", str(br)], input=expert, env=env(),
                   check=True)
    # The input comes from a pipe left open: the parent is sure to be alive (working, or waiting for more input)
    # when it is killed, with its workers busy or waiting for work.
    proc = subprocess.Popen(EEXP + ["rollout", "-j", "2", "-q", "-o", str(tmp_path / "out.jsonl")],
                            stdin=subprocess.PIPE, env=env())
    proc.stdin.write(br.read_bytes())
    proc.stdin.flush()
    kill_and_check(proc, workers=2)
    proc.stdin.close()


def test_eval_workers_die_with_a_killed_parent(tmp_path):
    # stdout is never read: the parent blocks on the full pipe, alive, while its workers go through the 5000
    # episodes. They used to notice only at their next result: a traceback each (broken pipe), and with a model,
    # after the episode under way had run to its end.
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(EEXP + ["eval", "--policy", "random", "--env", "shop", "--split", "train",
                                        "-j", "2", "-q"], stdout=subprocess.PIPE, stderr=err, env=env())
        kill_and_check(proc, workers=2)
    proc.stdout.close()
    assert "Traceback" not in stderr.read_text()


def test_a_dying_parent_gives_its_workers_their_cleanup(tmp_path):
    """The worker's cleanup (closing its environments, which may own a JVM) runs before it exits."""
    script = textwrap.dedent(f"""
        import concurrent.futures, multiprocessing, os, sys, time
        sys.path.insert(0, {str(ROOT)!r})

        def init():
            from eexp.workers import die_with_parent
            die_with_parent(lambda: open(os.path.join({str(tmp_path / "closed")!r}, str(os.getpid())), "w").close())

        if __name__ == "__main__":
            ex = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                                                        initializer=init)
            for _ in range(2):
                ex.submit(time.sleep, 0.5)
            time.sleep(600)
    """)
    path = tmp_path / "pool.py"   # a file, not -c: spawned workers import the initializer from __main__
    path.write_text(script)
    (tmp_path / "closed").mkdir()
    proc = subprocess.Popen([sys.executable, str(path)])
    workers = kill_and_check(proc, workers=2)
    assert sorted(int(p.name) for p in (tmp_path / "closed").iterdir()) == workers
