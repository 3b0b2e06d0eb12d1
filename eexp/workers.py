"""The worker processes of every `-j N` stage (expert, rollout, eval): `Pool`, and `die_with_parent` under it.

`Pool(jobs, setup, args, cleanup)` starts `jobs` spawned processes, each of which runs `setup(*args)` once (an
environment pool, an evaluator with its model) and keeps what it returns as its state; `submit(fn, item)` runs
`fn(state, item)` in one of them, and `ready()` / `map()` hand the results back in the order submitted, whatever
finishes first. What every stage needs of its workers is in it, once:

- Ctrl-C is the parent's: the workers are started with SIGINT ignored from their first instruction (inherited, see
  `sigint_ignored_by_children`), so a Ctrl-C to the process group never raises in a worker still importing; the
  parent stops them (`terminate`) and exits 130 with whole lines written.
- `terminate()` stops the workers at once, dropping the work in flight (an interrupted run's `--resume` makes it
  again); `close()` waits for what was submitted, then lets the workers go (their `cleanup` runs).
- SIGTERM to the parent (a job's time limit, `kill`) is an interrupt, raised as Terminated (`sigterm_raises`, which
  the CLI's main installs for every stage; the pool holds it during its own calls, `_Interrupts`): the parent stops
  the workers as for Ctrl-C and exits 143 with one line, `eexp: terminated`; killed at once it left the resource
  tracker to warn of "leaked semaphore objects".
- Neither signal is raised inside the pool's calls into concurrent.futures, where an exception can leave one of its
  locks held and the exit waiting on it forever: there it waits for the call to return (`_Interrupts`).
- A worker dies with its parent (`kill -9`, OOM): `die_with_parent` below, with `cleanup` run first.
- An error of `setup` is raised, with its message, by every task of that worker, in the parent, in its turn.
- At most 2 x jobs results wait for an older one (`ready` waits for the oldest past that), so memory stays bounded.

`WorkerPool` is that interface (submit / ready / map in order, close / terminate), all a stage uses of its pool:
the five methods another executor (a cluster's) implements to stand in for `Pool`. `open_pool` is how a stage gets
its pool: a `Pool` of `jobs` processes, or the workers of a cluster it was given (`--ray`: eexp.workers_ray).

Spawned, not forked: a forked copy of a process that holds llama.cpp, torch or JVM threads can deadlock.

Dying with the parent: multiprocessing's workers do not notice their parent's death on their own: a ProcessPoolExecutor
worker waiting
for work blocks on its queue forever (it holds both ends of the pipe), a Pool worker lives on until it next writes
a result; and the resource tracker (started for the named semaphores of the queues of the 'spawn' context) lives as
long as any of them holds its pipe. After `kill -9` of eexp they all stayed, re-parented to PID 1.

`die_with_parent` is called first thing in a worker's initializer. On Linux the kernel sends the worker SIGUSR1
when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread polls getppid(). Either way the worker
runs its cleanup (closing its environments, and with them their own subprocesses such as a JVM) for at most
`grace` seconds and exits. With the workers gone, the resource tracker reads EOF and exits too.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Protocol

from eexp.errors import Terminated

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 1.0
INTERRUPT_SECONDS = 0.1  # how long a signal can wait while the pool waits for a result (_Interrupts)
PARENT_DEATH_SIGNAL = getattr(signal, "SIGUSR1", None)

_state: dict = {}


def _parent_pid() -> int:
    parent = multiprocessing.parent_process()  # set in spawned / forked multiprocessing children
    return parent.pid if parent is not None and parent.pid else os.getppid()


def _set_pdeathsig(sig: int) -> bool:
    """Ask the kernel for `sig` when the parent dies (Linux); False where that is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _exit_now() -> None:
    """Run the cleanup (bounded by the grace time) and leave, once, whichever thread gets here first."""
    with _state["lock"]:
        if _state.get("exiting"):
            return
        _state["exiting"] = True
    timer = threading.Timer(_state["grace"], os._exit, (1,))
    timer.daemon = True
    timer.start()
    cleanup = _state.get("cleanup")
    if cleanup is not None:
        try:
            cleanup()
        except BaseException:  # noqa: BLE001 - nobody is left to tell
            pass
    os._exit(1)


def _on_parent_death_signal(signum, frame) -> None:
    # The kernel sends it when the thread that started us exits. With a multithreaded parent that thread can die
    # first (SIGKILL takes the threads one by one), while getppid() still names the parent for a few
    # milliseconds: wait for the re-parenting. A thread exiting in a live parent (a Pool's worker-handler thread
    # that replaced a worker) is no death: poll from then on.
    deadline = time.monotonic() + 2.0
    while os.getppid() == _state["parent"] and time.monotonic() < deadline:
        time.sleep(0.01)
    if os.getppid() != _state["parent"]:
        _exit_now()
    elif not _state.get("watching"):
        _start_watchdog()


def _watch() -> None:
    while os.getppid() == _state["parent"]:
        time.sleep(POLL_SECONDS)
    _exit_now()


def _start_watchdog() -> None:
    _state["watching"] = True
    threading.Thread(target=_watch, name="eexp-die-with-parent", daemon=True).start()


def die_with_parent(cleanup: Callable[[], None] | None = None, grace: float = 5.0) -> None:
    """Make this worker process exit when its parent dies; call from the worker's main thread (its initializer).

    `cleanup` runs first (in the worker, for at most `grace` seconds): close what would otherwise outlive us.
    """
    parent = _parent_pid()
    _state.update(parent=parent, cleanup=cleanup, grace=grace, lock=threading.Lock())
    # A signal of its own, not SIGTERM: a live parent's SIGTERM (Pool.terminate) must keep killing at once.
    asked = False
    if PARENT_DEATH_SIGNAL is not None and sys.platform.startswith("linux"):
        signal.signal(PARENT_DEATH_SIGNAL, _on_parent_death_signal)
        asked = _set_pdeathsig(PARENT_DEATH_SIGNAL)
        if not asked:
            signal.signal(PARENT_DEATH_SIGNAL, signal.SIG_DFL)
    if not asked:
        _start_watchdog()
    if os.getppid() != parent:  # the parent died before the signal was asked for: nobody will send it
        _exit_now()


# --- the pool ---------------------------------------------------------------------------------------------------


class WorkerPool(Protocol):
    """What a stage asks of its workers (a `Pool` here; a cluster's executor likewise)."""

    jobs: int
    pending: Any  # what was submitted and not yet handed back (sized: a stage aborts while it is not empty)

    def submit(self, fn: Callable[[Any, Any], Any], item: Any) -> None:
        """Run `fn(state, item)` in a worker; its result comes back from `ready` in submission order."""

    def ready(self, block: bool = False) -> Iterator[Any]:
        """The results in submission order: those done at the head of the queue; waiting for the oldest while
        2 x jobs are submitted and not handed back, or for all of them with `block`. A task's exception is raised
        here, in its turn."""

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """`fn(state, item)` for every item, results in the order of `items`, each as soon as it and those before
        it are done."""

    def close(self) -> None:
        """Wait for every task submitted, then let the workers go."""

    def terminate(self) -> None:
        """Stop the workers at once (Ctrl-C, an error): what is in flight is dropped."""


def open_pool(
    jobs: int,
    setup: Callable[..., Any],
    args: tuple = (),
    cleanup: Callable[[Any], None] | None = None,
    cluster: Any = None,
) -> WorkerPool | None:
    """A stage's workers: on `cluster` (an eexp.workers_ray.Cluster, from --ray) whatever `jobs`; else a `Pool` of
    `jobs` processes when there are more than one; None: the stage runs its work in this process."""
    if cluster is not None:
        return cluster.pool(setup, args, cleanup)
    if jobs > 1:
        return Pool(jobs, setup, args, cleanup)
    return None


@contextlib.contextmanager
def sigint_ignored_by_children():
    """Processes started inside this block ignore SIGINT from birth: the disposition SIG_IGN survives exec, and
    Python leaves an ignored SIGINT ignored, so a Ctrl-C to the process group cannot raise KeyboardInterrupt in a
    worker still starting up (importing, unpickling), where its own handler would come too late. Here, SIGINT is
    blocked in this (the main) thread meanwhile, so one that comes to it is held and raised once the block ends
    (Linux keeps a blocked signal pending even while it is ignored); one the kernel hands to another thread of the
    process, where there is one, is lost. The block lasts while the workers are started, a few milliseconds."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; a worker it starts then sets SIG_IGN itself
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


_worker: dict[str, Any] = {}  # in a worker process: its state, or the error its setup raised; its cleanup


def _close_worker_state() -> None:
    cleanup, state = _worker.pop("cleanup", None), _worker.pop("state", None)
    if cleanup is not None and state is not None:
        cleanup(state)


def _start_worker(setup: Callable[..., Any], args: tuple, cleanup: Callable[[Any], None] | None) -> None:
    # Ctrl-C is the parent's to handle (a worker started outside sigint_ignored_by_children learns it here)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker["cleanup"] = cleanup
    # the parent killed (kill -9, OOM): clean up and exit instead of waiting for work forever
    die_with_parent(_close_worker_state)
    try:
        _worker["state"] = setup(*args)
    except BaseException as e:  # noqa: BLE001 - raised in the parent by this worker's tasks, with its message
        _worker["error"] = e
        return
    atexit.register(_close_worker_state)  # a worker let go by close() (spawned workers run atexit)


def _run_task(fn: Callable[[Any, Any], Any], item: Any) -> Any:
    if "error" in _worker:
        raise _worker["error"]
    return fn(_worker["state"], item)


def _started() -> None:
    """A task that only makes a worker start (and run its setup)."""


def raise_terminated(signum, frame) -> None:
    """SIGTERM's handler while `sigterm_raises` holds: the run stops as on Ctrl-C, with Terminated."""
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM raises Terminated in the main thread during the block (the CLI's main: every stage, with workers or
    without, then stops as on Ctrl-C, its lines whole, --stats written with `failed: terminated`, exit 143; at its
    default SIGTERM killed a `-j 1` stage with neither). A handler someone else installed, or SIGTERM ignored, is
    left alone; a pool takes the handler over while it lives (`_Interrupts`)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM in the main thread while a pool lives: raised there as KeyboardInterrupt and
    Terminated, at once, except inside the pool's own calls into concurrent.futures (`held`), where they wait for
    the call to return. Python raises a signal's exception at any bytecode; raised in the gap between a lock's
    acquire and the `with` that would release it (threading.Condition.__enter__ is Python code) it leaves the lock
    held, and the executor's thread, needing that lock to hand back a result, then waits forever, and with it the
    exit. Measured: 1 of 150 SIGTERMs to `eval -j 2` hung there (the main thread interrupted in `submit`'s
    idle-worker semaphore), before this.
    Only a handler at its default is replaced (SIGTERM's kills, or raises Terminated under `sigterm_raises`;
    SIGINT's is Python's own): a handler someone else installed, or a signal ignored (a shell's background job
    ignores SIGINT), is left alone."""

    RAISES = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}

    def __init__(self):
        self.depth = 0  # how many `held` blocks the main thread is in
        self.pending: int | None = None  # a signal that came meanwhile
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread: none to change
        defaults = {signal.SIGINT: (signal.default_int_handler,), signal.SIGTERM: (signal.SIG_DFL, raise_terminated)}
        for signum, ours in defaults.items():
            if signal.getsignal(signum) in ours:
                self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.depth:
            self.pending = self.pending or signum
            return
        raise self.RAISES[signum]()

    @contextlib.contextmanager
    def held(self, drop: bool = False):
        """Signals wait for the end of the block (and are dropped with `drop`: the pool is being stopped anyway)."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                if not drop:  # over an error of the block too: the interrupt is what the user asked for
                    raise self.RAISES[signum]()

    def restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self.previous.items():
                signal.signal(signum, previous)
        self.previous = {}


class Pool:
    """`jobs` spawned worker processes, each with the state `setup(*args)` made in it (`cleanup(state)` when it
    goes); see the module's docstring. A context manager: an exception out of the block terminates."""

    def __init__(
        self, jobs: int, setup: Callable[..., Any], args: tuple = (), cleanup: Callable[[Any], None] | None = None
    ):
        if jobs < 1:
            raise ValueError(f"a pool needs at least one worker, got {jobs}")
        self.jobs = jobs
        self.pending: collections.deque[concurrent.futures.Future] = collections.deque()
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._interrupts = _Interrupts()
        # Start all the workers now, and only now (the executor starts one per task while none is idle), so that
        # every one is started with Ctrl-C ignored.
        try:
            with self._interrupts.held():
                self._executor = concurrent.futures.ProcessPoolExecutor(
                    jobs,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(setup, args, cleanup),
                )
            with self._interrupts.held(), sigint_ignored_by_children():
                started = [self._executor.submit(_started) for _ in range(jobs)]
            for future in started:
                self._result(future)
        except BaseException:
            self.terminate()
            raise

    def _result(self, future: concurrent.futures.Future) -> Any:
        """The future's result, waited for in slices: a signal is raised between them, never inside the executor's
        locks (_Interrupts)."""
        while True:
            with self._interrupts.held():
                if future.done() or not concurrent.futures.wait((future,), timeout=INTERRUPT_SECONDS)[1]:
                    return future.result()

    def _done(self, future: concurrent.futures.Future) -> bool:
        with self._interrupts.held():
            return future.done()

    def submit(self, fn: Callable[[Any, Any], Any], item: Any) -> None:
        with self._interrupts.held():
            self.pending.append(self._executor.submit(_run_task, fn, item))

    def ready(self, block: bool = False) -> Iterator[Any]:
        while self.pending and (block or len(self.pending) >= 2 * self.jobs or self._done(self.pending[0])):
            yield self._result(self.pending.popleft())

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            self.submit(fn, item)
            yield from self.ready()
        yield from self.ready(block=True)

    def close(self) -> None:
        with self._interrupts.held():
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self.pending.clear()
        self._interrupts.restore()

    def terminate(self) -> None:
        """Stop the workers at once; a signal meanwhile is dropped (the pool is being stopped anyway)."""
        with self._interrupts.held(drop=True):
            self._terminate()
        self._interrupts.restore()

    def _terminate(self) -> None:
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        # the processes and the executor's manager thread, before shutdown() forgets them (what Python 3.14's
        # terminate_workers() does itself)
        processes = list((getattr(executor, "_processes", None) or {}).values())
        manager = getattr(executor, "_executor_manager_thread", None)
        for future in self.pending:
            future.cancel()
        self.pending.clear()
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(ValueError, ProcessLookupError):  # ended (and closed) meanwhile
                if process.is_alive():
                    process.terminate()
        for process in processes:
            with contextlib.suppress(ValueError, AssertionError):
                process.join(10)
        # The manager thread notices the workers gone and closes its wake-up pipe as it ends. Wait for that: at
        # exit, concurrent.futures' own hook writes to that pipe if it is not closed yet, and one closed between its
        # check and its write printed "Exception ignored in: <module 'threading'> ... OSError: [Errno 9] Bad file
        # descriptor" after `eexp: terminated` (3 of 60 SIGTERMs to `eval -j 2`, Python 3.11).
        if manager is not None and manager is not threading.current_thread():
            manager.join(10)

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()
