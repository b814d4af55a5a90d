"""Time in the core is an int of milliseconds since the epoch, passed in by the caller."""

import time
from collections.abc import Callable
from pathlib import Path


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def offset_clock(offset_ms: int) -> Callable[[], int]:
    """The real clock shifted by `offset_ms`: `broker serve --clock-offset-ms`, for tests
    and drills that need time to pass (a subscription period, a lease) while the broker
    is stopped."""
    if not offset_ms:
        return now_ms
    return lambda: now_ms() + offset_ms


def file_offset_clock(path: str, offset_ms: int = 0) -> Callable[[], int]:
    """The real clock shifted by `offset_ms` plus the milliseconds written in the file at
    `path`, read again at every reading (`broker serve --clock-offset-file`): for tests
    that step the wall clock while the broker runs (its monotonic clock does not step).
    A missing, empty or unreadable file adds nothing."""

    def clock() -> int:
        try:
            step = int(Path(path).read_text().strip() or 0)
        except (OSError, ValueError):
            step = 0
        return now_ms() + offset_ms + step

    return clock
