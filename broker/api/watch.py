"""Wakes the watch streams (WatchAuthorization, WatchAlerts) when something they may be
waiting for changes: they then read the store again. They also read it every second,
so a change nobody announced (the expiry sweep's) is seen too."""

from __future__ import annotations

import asyncio
import contextlib

POLL_S = 1.0


class Changes:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float = POLL_S) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
