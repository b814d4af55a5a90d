"""Time in the core is an int of milliseconds since the epoch, passed in by the caller."""

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
