"""The worker processes of every `-j N` stage: one `eexp.workers.Pool` (results in submission order, Ctrl-C
ignored by the workers from birth, stopped at once on an abort); Ctrl-C to the process group of `eexp rollout -j 2`
and `eexp eval -j 2` exits 130 with whole lines and no process left; and the workers die with their parent:
`kill -9` of either leaves no worker and no multiprocessing resource tracker behind (they used to run on,
re-parented to PID 1)."""

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
from netguard import pythonpath

from eexp.io import read_records
from eexp.workers import Pool, sigint_ignored_by_children

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the process tree from /proc")

ROOT = Path(__file__).parent.parent
EEXP = [sys.executable, "-m", "eexp"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": pythonpath(ROOT)}


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a live or zombie process, None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
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
    return st is not None and st[2] == start and st[1] != "Z"  # a zombie is dead, waiting for PID 1 to reap it


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
        assert wait_for(lambda: sum("spawn_main" in cmdline(p) for p in descendants(proc.pid)) >= workers, 60), (
            "the workers never started"
        )
        below = descendants(proc.pid)
        kinds = {
            p: "worker"
            if "spawn_main" in cmdline(p)
            else "resource_tracker"
            if "resource_tracker" in cmdline(p)
            else cmdline(p)
            for p in below
        }
        assert sorted(kinds.values()) == ["resource_tracker"] + ["worker"] * workers
        assert proc.poll() is None, "the parent had already finished: nothing was tested"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: not any(alive(p, s) for p, s in below.items()), 10), (
            "still running 10 s after the parent was killed: "
            + ", ".join(f"{p} {cmdline(p)}" for p, s in below.items() if alive(p, s))
        )
        return sorted(p for p, kind in kinds.items() if kind == "worker")
    finally:  # never leave what this test started behind, whatever failed
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, start in below.items():
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def test_rollout_workers_die_with_a_killed_parent(tmp_path):
    br = tmp_path / "br.jsonl"
    expert = subprocess.run(
        EEXP + ["expert", "--env", "shop", "-n", "40", "--seed", "2"], env=env(), check=True, capture_output=True
    ).stdout
    subprocess.run(
        EEXP + ["branch", "--propose", "admissible", "-k", "4", "-o", str(br)], input=expert, env=env(), check=True
    )
    # The input comes from a pipe left open: the parent is sure to be alive (working, or waiting for more input)
    # when it is killed, with its workers busy or waiting for work.
    proc = subprocess.Popen(
        EEXP + ["rollout", "-j", "2", "-q", "-o", str(tmp_path / "out.jsonl")], stdin=subprocess.PIPE, env=env()
    )
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
        proc = subprocess.Popen(
            EEXP + ["eval", "--policy", "random", "--env", "shop", "--split", "train", "-j", "2", "-q"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env(),
        )
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
    path = tmp_path / "pool.py"  # a file, not -c: spawned workers import the initializer from __main__
    path.write_text(script)
    (tmp_path / "closed").mkdir()
    proc = subprocess.Popen([sys.executable, str(path)])
    workers = kill_and_check(proc, workers=2)
    assert sorted(int(p.name) for p in (tmp_path / "closed").iterdir()) == workers


# --- the one pool ------------------------------------------------------------------------------------------------


def _setup(offset: int) -> dict:
    if offset < 0:
        raise ValueError(f"no worker for offset {offset}")
    return {"offset": offset, "pid": os.getpid()}


def _slow_add(state: dict, item: tuple[int, float]) -> tuple[int, int]:
    value, delay = item
    time.sleep(delay)
    return value + state["offset"], state["pid"]


def _sigint_ignored(state: dict, _) -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_the_pool_hands_results_back_in_submission_order_from_every_worker():
    with Pool(2, _setup, (100,)) as pool:
        # the first items take longest: they finish last, and still come back first
        results = list(pool.map(_slow_add, [(i, 0.3 if i < 2 else 0.0) for i in range(8)]))
        assert [value for value, _ in results] == [100 + i for i in range(8)]
        assert len({pid for _, pid in results}) == 2 and os.getpid() not in {pid for _, pid in results}
        pool.submit(_sigint_ignored, None)
        pool.submit(_sigint_ignored, None)
        assert list(pool.ready(block=True)) == [True, True]  # Ctrl-C is the parent's


def test_an_error_of_the_workers_setup_comes_with_each_task_in_its_turn():
    with Pool(2, _setup, (-1,)) as pool:
        for _ in range(3):
            pool.submit(_slow_add, (1, 0.0))
        with pytest.raises(ValueError, match="^no worker for offset -1$"):
            next(pool.ready(block=True))


def test_terminate_stops_busy_workers_at_once_and_leaves_no_process():
    pool = Pool(2, _setup, (0,))
    workers = {p: s for p, s in descendants(os.getpid()).items() if "spawn_main" in cmdline(p)}
    assert len(workers) == 2
    for _ in range(4):
        pool.submit(_slow_add, (0, 60.0))
    time.sleep(0.2)  # both at work
    started = time.monotonic()
    pool.terminate()
    assert time.monotonic() - started < 10 and not pool.pending
    assert wait_for(lambda: not any(alive(p, s) for p, s in workers.items()), 10)


def test_a_signal_inside_the_executors_calls_is_raised_after_them_and_terminate_ends_its_thread(monkeypatch):
    """A SIGTERM (or Ctrl-C) that comes while the pool is inside concurrent.futures (here in the middle of its
    submit) is raised once that call has returned, not inside it: raised there, between a lock's acquire and the
    `with` that releases it, it left the lock held, and `eval -j 2` then waited forever at its exit (1 of 150
    SIGTERMs). terminate() waits for the executor's thread to end: concurrent.futures' exit hook wrote to that
    thread's wake-up pipe as it closed, a traceback after `eexp: terminated` (3 of 60)."""
    import concurrent.futures
    import threading

    from eexp.errors import Terminated

    real_submit = concurrent.futures.ProcessPoolExecutor.submit

    def submit_with_a_signal(self, *args, **kwargs):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        time.sleep(0.05)  # it would be raised here, inside the executor's call
        return real_submit(self, *args, **kwargs)

    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        pool = Pool(2, _setup, (0,))
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the pool's handler while it lives
        monkeypatch.setattr(concurrent.futures.ProcessPoolExecutor, "submit", submit_with_a_signal)
        with pytest.raises(Terminated):
            pool.submit(_slow_add, (1, 0.0))
        assert len(pool.pending) == 1  # the call was completed, then the signal raised
        manager = pool._executor._executor_manager_thread
        pool.terminate()
        assert not manager.is_alive()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_while_the_pool_waits_for_a_long_task_is_raised_at_once():
    """The pool waits for a result in slices (a signal is held inside each), so Ctrl-C still stops a wait for a task
    of a minute within a fraction of a second."""
    import threading

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        pool = Pool(2, _setup, (0,))
        pool.submit(_slow_add, (0, 60.0))
        threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            next(pool.ready(block=True))
        assert time.monotonic() - started < 5
        pool.terminate()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_there_is_one_worker_pool_and_every_j_stage_uses_it():
    """No stage makes processes of its own: multiprocessing's pools appear in eexp/workers.py alone."""
    root = ROOT / "eexp"
    for path in root.rglob("*.py"):
        if path.name == "workers.py" and path.parent == root:
            continue
        text = path.read_text()
        for made in ("ProcessPoolExecutor", "multiprocessing.Pool", ".Pool(", "get_context("):
            assert made not in text, f"{path.relative_to(ROOT)} makes worker processes of its own ({made})"
    for stage in ("rollout.py", "evaluate/runner.py"):
        assert "open_pool(" in (root / "stages" / stage).read_text()  # a Pool, or a cluster's (--ray)


def test_workers_are_started_ignoring_ctrl_c_and_a_ctrl_c_meanwhile_is_held():
    """What the pool starts its workers inside: a process started there ignores SIGINT from its first instruction
    (before Python runs any of eexp), and a SIGINT that reaches eexp's main thread meanwhile is raised after, not
    lost."""
    import threading

    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"]
    # Python's own Ctrl-C handler, as in a terminal (a suite started from a background shell has SIGINT ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with sigint_ignored_by_children():
            child = subprocess.run(probe, capture_output=True, text=True)
        assert child.stdout.strip() == "True"
        assert subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "False"  # outside it
        with pytest.raises(KeyboardInterrupt):
            with sigint_ignored_by_children():
                # to this thread: a process-directed SIGINT may go to another thread of the process, if one exists
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                time.sleep(0.05)  # it would have been raised here, were it not held
                held = True
        assert held
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


# --- Ctrl-C to the process group of each -j stage ----------------------------------------------------------------


def _group_alive(pgid: int) -> list[str]:
    """The processes of a process group that still run (a zombie whose parent is gone and that PID 1 has not reaped
    yet, such as multiprocessing's resource tracker, is dead: it is not counted)."""
    ps = subprocess.run(["ps", "-ww", "-o", "pid=,stat=,args=", "-g", str(pgid)], capture_output=True, text=True)
    return [line for line in ps.stdout.splitlines() if line.split()[1][0] != "Z"]


def _stage_run(stage: str, tmp_path: Path) -> tuple[list[str], list[str], callable]:
    """The command of `stage -j 2` writing to out.jsonl, and the ids a complete run writes, in order."""
    out = tmp_path / "out.jsonl"
    if stage == "rollout":  # 1,400 shop branch records
        br = tmp_path / "br.jsonl"
        expert = subprocess.run(
            EEXP + ["expert", "--env", "shop", "-n", "300", "-q"], check=True, env=env(), capture_output=True
        ).stdout
        subprocess.run(
            EEXP + ["branch", "--propose", "admissible", "-k", "6", "-q", "-o", str(br)],
            input=expert,
            check=True,
            env=env(),
            capture_output=True,
        )
        return (
            EEXP + ["rollout", "-j", "2", "-q", "-o", str(out), str(br)],
            [r["id"] for r in read_records([br])],
            lambda r: r["id"],
        )
    n = 1500  # random episodes of the shop: long enough to be interrupted, quick to complete by --resume
    return (
        EEXP
        + [
            "eval",
            "--policy",
            "random",
            "--env",
            "shop",
            "--split",
            "train",
            "-n",
            str(n),
            "-j",
            "2",
            "-q",
            "-o",
            str(out),
        ],
        [f"train-{i:05d}" for i in range(n)],
        lambda r: r["task"]["id"],
    )


@pytest.mark.slow  # ~15 s each on 2 shared cores: a run interrupted, then resumed
@pytest.mark.parametrize("moment", ["workers starting", "workers running"])
@pytest.mark.parametrize("stage", ["rollout", "eval"])
def test_ctrl_c_to_the_process_group_of_a_stage_with_workers(tmp_path, stage, moment):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) to `rollout -j 2` and `eval -j 2`, while
    their workers are still starting up and once records are being written: exit 130, whole lines, no traceback
    from any worker, no process left; --resume then completes the file in input order."""
    if not Path("/proc").is_dir() or subprocess.run(["ps", "-o", "pid="], capture_output=True).returncode != 0:
        pytest.skip("needs ps and /proc")
    args, ids, key = _stage_run(stage, tmp_path)
    out = tmp_path / "out.jsonl"
    # SIGINT at its default in the child (a background shell would have it ignored), in a group of its own
    proc = subprocess.Popen(
        args,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if moment == "workers starting":
            if sum("spawn_main" in line for line in _group_alive(proc.pid)) == 2:
                break
        elif out.exists() and out.stat().st_size > 0:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be interrupted")
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err.decode()
    assert err.decode().strip().endswith("eexp: interrupted")
    written = out.read_bytes() if out.exists() else b""
    assert written == b"" or written.endswith(b"\n")
    assert [key(orjson.loads(line)) for line in written.splitlines()] == ids[: written.count(b"\n")]
    assert written.count(b"\n") < len(ids)
    assert wait_for(lambda: _group_alive(proc.pid) == [], 10), _group_alive(proc.pid)
    subprocess.run(args + ["--resume"], check=True, env=env(), capture_output=True, timeout=300)
    assert [key(r) for r in read_records([out])] == ids
