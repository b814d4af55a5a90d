"""Ed25519 work (voucher signatures, usage-report checks) on threads of their own.

Why: libsodium (PyNaCl, through cffi) releases the GIL while it signs or verifies, so
on these threads a signature costs the event loop and the store's writer, which share
one GIL, only the few microseconds around the C call; on the event loop it cost them
the whole signature (16 µs to sign, 40 µs to verify on the bench machine, more than
the bare gRPC work of a usage report). Two threads, because one was what bounded the
usage-report rate: each report waited for its check behind the others' (docs/
performance.md, "Two crypto threads").

Jobs given the same `key` run on the same thread, in the order they were given, and a
`run_then` job hands its result on (to the store's writer) in that order too: the
checked usage reports of one session reach the writer in the order they were read.
Jobs without a key go to the threads in turn. Each thread takes every job waiting for
it when it wakes and answers each event loop once per batch (one wake-up, not one per
job), as the store's writer does.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from common.thread_answers import Answer, answer_on_loops

T = TypeVar("T")

THREADS = 2
MAX_BATCH = 256
_STOP = object()
# What takes a job's result on: (the result, the caller's loop, the caller's future).
Then = Callable[[Any, asyncio.AbstractEventLoop, "asyncio.Future[Any]"], None]
# (the work, the caller's loop, the future to answer, its Then or None)
_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]", Then | None]


class CryptoThreads:
    """`await run(fn)`: `fn()` on one of `count` crypto threads (each started on first
    use); `key`: jobs with the same key run on the same thread, in order."""

    def __init__(self, count: int = THREADS) -> None:
        self._lanes = [_Lane(f"crypto-{i}") for i in range(count)]
        self._turn = itertools.count()

    async def run(self, fn: Callable[[], T], key: Hashable | None = None) -> T:
        return await self._put(fn, None, key)

    async def run_then(self, fn: Callable[[], Any], then: Then,
                       key: Hashable | None = None) -> Any:
        """`fn()` on a crypto thread, then, still there, `then(its result, loop, future)`,
        which hands the caller's future on to whoever answers it (the store's writer:
        `LmdbStore.enqueue`). Why: the caller's loop then wakes once, when the answer is
        ready, not also in between. If `fn` or `then` raises, the caller gets that."""
        return await self._put(fn, then, key)

    def close(self) -> None:
        """Finish the jobs queued so far, then stop every thread."""
        for lane in self._lanes:
            lane.close()

    async def _put(self, fn: Callable[[], Any], then: Then | None, key: Hashable | None
                   ) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        index = next(self._turn) if key is None else hash(key)
        self._lanes[index % len(self._lanes)].put((fn, loop, future, then))
        return await future


class _Lane:
    """One crypto thread and its FIFO queue."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, job: _Job) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name=self.name,
                                                    daemon=True)
                    self._thread.start()
        self._queue.put(job)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

    def _serve(self) -> None:
        q = self._queue
        while True:
            batch = [q.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            stopping = False
            per_loop: dict[asyncio.AbstractEventLoop, list[Answer]] = {}
            for job in batch:
                if job is _STOP:
                    stopping = True
                    continue
                fn, loop, future, then = job
                try:
                    result = fn()
                    if then is not None:
                        then(result, loop, future)  # answered by whoever `then` handed it to
                        continue
                    outcome = (future, result, None)
                except Exception as error:  # the caller gets it, as if it had run there
                    outcome = (future, None, error)
                per_loop.setdefault(loop, []).append(outcome)
            answer_on_loops(per_loop)
            if stopping:
                return

