"""Wakes the watch streams (WatchAuthorization, WatchAlerts) when something they may be
waiting for changes: they then read the store again. They also read it every second,
so a change nobody announced (the expiry sweep's) is seen too.

Each open watch stream holds a task and its last answer, so a server process keeps at
most MAX_WATCH_STREAMS of them; one more is refused with TOO_MANY_WATCHES."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from common.errors import BrokerError, Code

POLL_S = 1.0
MAX_WATCH_STREAMS = 2_000


class Changes:
    def __init__(self, max_watches: int = MAX_WATCH_STREAMS) -> None:
        self._event = asyncio.Event()
        self.watches = 0  # watch streams open now
        self.max_watches = max_watches

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float = POLL_S) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)

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
