"""Ed25519 work (voucher signatures, usage-report checks) on a thread of its own.

Why: libsodium (PyNaCl, through cffi) releases the GIL while it signs or verifies, so
on this thread a signature costs the event loop and the store's writer, which share
one GIL, only the few microseconds around the C call; on the event loop it cost them
the whole signature (16 µs to sign, 40 µs to verify on the bench machine, more than
the bare gRPC work of a usage report). Nothing here needs ordering: callers await the
result and go on as before. The thread takes every job waiting when it wakes and
answers each event loop once per batch (one wake-up, not one per job), as the store's
writer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = object()
MAX_BATCH = 256
# (the work, the caller's loop, the future to answer, what takes the result on or None)
_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]",
             "Callable[[Any, asyncio.AbstractEventLoop, asyncio.Future[Any]], None] | None"]


class CryptoThread:
    """`await run(fn)`: `fn()` on the crypto thread (started on first use)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._start()
        self._queue.put((fn, loop, future, None))
        return await future

    async def run_then(self, fn: Callable[[], Any],
                       then: Callable[[Any, asyncio.AbstractEventLoop, asyncio.Future[T]], None]
                       ) -> T:
        """`fn()` on the crypto thread, then, still there, `then(its result, loop, future)`,
        which hands the caller's future on to whoever answers it (the store's writer:
        `LmdbStore.enqueue`). Why: the caller's loop then wakes once, when the answer is
        ready, not also in between. If `fn` or `then` raises, the caller gets that."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._start()
        self._queue.put((fn, loop, future, then))
        return await future

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="crypto",
                                                daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Finish the jobs queued so far, then stop the thread."""
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
            per_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any, Any]]] = {}
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
            for loop, outcomes in per_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, outcomes)
            if stopping:
                return


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():  # the caller was cancelled
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
