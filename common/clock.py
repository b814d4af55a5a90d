"""Time in the core is an int of milliseconds since the epoch, passed in by the caller."""

import time
from collections.abc import Callable


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def offset_clock(offset_ms: int) -> Callable[[], int]:
    """The real clock shifted by `offset_ms`: `broker serve --clock-offset-ms`, for tests
    and drills that need time to pass (a subscription period, a lease) while the broker
    is stopped."""
    if not offset_ms:
        return now_ms
    return lambda: now_ms() + offset_ms
