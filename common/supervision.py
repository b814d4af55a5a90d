"""Background tasks that never die silently (the broker's sweeps and audit, the
worker's heartbeats).

A task that raises is logged with its traceback, counted (`count(task)`, a metric)
and started again after a backoff that doubles from `backoff_s` up to `max_backoff_s`
(and starts over once the task has run longer than that). A task that raises
`CannotGoOn` is not restarted: `failed` is set, and the daemon waiting on it shuts
down and exits non-zero, so that its supervisor (systemd, Kubernetes) sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("supervision")


class CannotGoOn(Exception):
    """Raised by a background task that no retry can help (e.g. its key was revoked)."""


class Supervisor:
    def __init__(self, count: Callable[[str], None], *, backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0):
        self._count = count
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.failed = asyncio.Event()  # a task could not go on: see `failure`
        self.failure = ""
        self._tasks: list[asyncio.Task] = []

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` as the background task `name`, for as long as the supervisor."""
        self._tasks.append(asyncio.create_task(self._supervise(name, run), name=name))

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        delay = self.backoff_s
        while True:
            started = loop.time()
            try:
                await run()
                log.error("background task %s ended on its own; starting it again", name)
            except CannotGoOn as error:
                self._count(name)
                log.critical("background task %s cannot go on: %s", name, error)
                self.failure = f"{name}: {error}"
                self.failed.set()
                return
            except Exception:
                log.exception("background task %s failed; starting it again in %.1f s",
                              name, delay)
            self._count(name)
            if loop.time() - started > self.max_backoff_s:
                delay = self.backoff_s  # it had been running well: a fresh failure
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


async def wait_for_stop(stop: asyncio.Event, supervisor: Supervisor) -> int:
    """Wait for a stop signal (exit status 0) or a task that cannot go on (1)."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(supervisor.failed.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    if supervisor.failed.is_set():
        log.critical("shutting down: %s", supervisor.failure)
        return 1
    return 0
