"""Wakes the watch streams (WatchAuthorization, WatchAlerts) when something they may be
waiting for changes: they then read the store again. They also read it every
`poll_s` (a second by default, the `watch_poll_ms` setting), so a change nobody
announced is seen too.

Who announces: this broker's servicers and sweeps, after the changes they commit
(`notify`); and, on PostgreSQL, every broker on the database: a transaction that writes
one of SIGNAL_TABLES sends NOTIFY with its COMMIT, which each broker's listener turns
into `notify` (broker/store/pg_signals.py). So a watcher on one broker sees an approval
decided, or an alert raised, through another within milliseconds; the poll is the
fallback while a listener's connection is down.

Each open watch stream holds a task and its last answer, so a server process keeps at
most MAX_WATCH_STREAMS of them; one more is refused with TOO_MANY_WATCHES."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from common.errors import BrokerError, Code

POLL_S = 1.0
MAX_WATCH_STREAMS = 2_000
# What the watchers read: WatchAuthorization waits on the approval request, WatchAlerts
# on new alerts.
SIGNAL_TABLES = frozenset({"approvals", "alerts"})


class Changes:
    def __init__(self, max_watches: int = MAX_WATCH_STREAMS, poll_s: float = POLL_S) -> None:
        self._event = asyncio.Event()
        self.watches = 0  # watch streams open now
        self.max_watches = max_watches
        self.poll_s = poll_s

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def notify_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        """`notify` from another thread (the PostgreSQL listener's)."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(self.notify)

    async def wait(self, timeout: float | None = None) -> None:
        """Until the next `notify`, or `timeout` (default `poll_s`) passes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), self.poll_s if timeout is None
                                   else timeout)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Count one watch stream for as long as it is open; refuse one too many."""
        if self.watches >= self.max_watches:
            raise BrokerError(Code.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHES",
                              f"this broker already serves {self.max_watches} watch streams; "
                              "retry later, or poll", retry_after_ms=5_000)
        self.watches += 1
        try:
            yield
        finally:
            self.watches -= 1
