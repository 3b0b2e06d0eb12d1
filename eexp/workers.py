"""Worker processes that die with their parent (`-j N` of rollout and eval).

multiprocessing's workers do not notice their parent's death on their own: a ProcessPoolExecutor worker waiting
for work blocks on its queue forever (it holds both ends of the pipe), a Pool worker lives on until it next writes
a result; and the resource tracker (started for the named semaphores of the queues of the 'spawn' context) lives as
long as any of them holds its pipe. After `kill -9` of eexp they all stayed, re-parented to PID 1.

`die_with_parent` is called first thing in a worker's initializer. On Linux the kernel sends the worker SIGUSR1
when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread polls getppid(). Either way the worker
runs its cleanup (closing its environments, and with them their own subprocesses such as a JVM) for at most
`grace` seconds and exits. With the workers gone, the resource tracker reads EOF and exits too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Callable

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 1.0
PARENT_DEATH_SIGNAL = getattr(signal, "SIGUSR1", None)

_state: dict = {}


def _parent_pid() -> int:
    parent = multiprocessing.parent_process()   # set in spawned / forked multiprocessing children
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
        except BaseException:   # noqa: BLE001 - nobody is left to tell
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
    if os.getppid() != parent:   # the parent died before the signal was asked for: nobody will send it
        _exit_now()
