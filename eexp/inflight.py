"""Requests in flight: run the slow part of a stage (a policy call) for several records at once, and hand the
results back in the order the records came.

A batching server (vLLM, SGLang, llama.cpp's server with parallel slots) is fast only when it is kept busy: one
request at a time leaves most of its throughput unused. `InOrder` runs up to N calls in threads and gives their
results back oldest first, so a stage that uses it writes exactly what a serial run writes, in the same order.
Threads, not processes: the calls wait on the network, and one policy object (one connection setup, one probe) is
shared by all of them. The threads are daemons: on Ctrl-C the process leaves at once, whatever request is still
waiting on the server, instead of waiting for it (only the main thread writes records, so every line is whole).

With N = 1 a call runs at once, in the caller's thread, so the serial path is the same code with no thread at all.
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterator


class InOrder:
    """Up to `n` calls running at once; `ready()` gives back `(tag, result)` in submission order.

    An exception raised by a call is raised again by `ready()` when that call's turn comes (never earlier, so
    every result submitted before it is handed back first). `ready()` also waits for the oldest call while `2 n`
    are submitted and not handed back, which bounds the memory held by results waiting for an older one.
    """

    def __init__(self, n: int, name: str = "eexp-inflight"):
        if n < 1:
            raise ValueError(f"in-flight limit must be at least 1, got {n}")
        self.n = n
        self.pending: collections.deque[tuple[Any, Future]] = collections.deque()
        self.work: queue.SimpleQueue | None = None
        self.threads: list[threading.Thread] = []
        if n > 1:
            self.work = queue.SimpleQueue()
            for i in range(n):
                thread = threading.Thread(target=self._serve, args=(self.work,), name=f"{name}-{i}", daemon=True)
                thread.start()
                self.threads.append(thread)

    @staticmethod
    def _serve(work: queue.SimpleQueue) -> None:
        while True:
            item = work.get()
            if item is None:
                return
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as e:  # noqa: BLE001 - handed to the caller by ready()
                future.set_exception(e)

    def submit(self, call: Callable[[], Any], tag: Any = None) -> None:
        """Start `call()` (with n = 1: run it now); `tag` comes back with its result."""
        done: Future = Future()
        if self.work is not None:
            self.work.put((done, call))
            self.pending.append((tag, done))
            return
        try:
            done.set_result(call())
        except BaseException as e:  # noqa: BLE001 - raised again in turn by ready(), as with a thread
            if not isinstance(e, Exception):  # Ctrl-C (KeyboardInterrupt) and the like stop the caller now
                raise
            done.set_exception(e)
        self.pending.append((tag, done))

    def ready(self, block: bool = False) -> Iterator[tuple[Any, Any]]:
        """The results handed back in submission order: those already done at the head of the queue, and, waiting
        for them, the oldest while more than 2 n are pending, or all of them with `block`."""
        while self.pending and (block or len(self.pending) > 2 * self.n or self.pending[0][1].done()):
            tag, future = self.pending.popleft()
            yield tag, future.result()

    def close(self) -> None:
        """Stop: calls not started are cancelled and the threads told to end; a call still running (a request
        waiting on its server) is left to its daemon thread, so Ctrl-C never waits for a slow server. Results not
        handed back are dropped: a resumed run makes them again."""
        for _, future in self.pending:
            future.cancel()
        self.pending.clear()
        if self.work is not None:
            for _ in self.threads:
                self.work.put(None)
            self.work = None
            self.threads = []


def side_by_side(calls: list[Callable[[], Any]], n: int, name: str = "eexp-inflight") -> list[Any]:
    """The results of `calls`, in their order, with up to `n` running at once (the K samples of one state, or the
    scoring requests of its actions)."""
    running = InOrder(max(1, min(n, len(calls))), name=name)
    try:
        for call in calls:
            running.submit(call)
        return [result for _, result in running.ready(block=True)]
    finally:
        running.close()
