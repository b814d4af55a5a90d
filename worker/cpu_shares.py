"""Each job's share of this process's CPU time, when jobs run side by side.

The process's CPU time covers every thread: the jobs' own threads, the pools they call
into (torch's intra-op threads) and the worker's own. Each stretch of it, from one
reading to the next, is shared out among the running jobs in proportion to the CPU
time each job's own thread used in that stretch (evenly when none ran). One job alone
gets the whole of it, as a plain process-time meter would; two at once are no longer
billed for each other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(eq=False)
class Share:
    clock_id: int | None  # the CPU-time clock of the job's thread (None: not available)
    thread_ns: int  # that clock at the last reading
    ns: int = 0  # the process CPU time attributed to the job so far


def _thread_clock() -> int | None:
    getcpuclockid = getattr(time, "pthread_getcpuclockid", None)
    return getcpuclockid(threading.get_ident()) if getcpuclockid else None


class CpuShares:
    def __init__(self, process_ns: Callable[[], int] = time.process_time_ns,
                 clock_ns: Callable[[int], int] = time.clock_gettime_ns,
                 thread_clock: Callable[[], int | None] = _thread_clock) -> None:
        self._lock = threading.Lock()
        self._process_ns = process_ns
        self._clock_ns = clock_ns
        self._thread_clock = thread_clock
        self._running: list[Share] = []
        self._last = process_ns()

    def join(self) -> Share:
        """A job starts; call it in the thread that runs the job."""
        clock_id = self._thread_clock()
        with self._lock:
            self._advance()
            share = Share(clock_id, self._thread_ns(clock_id, 0))
            self._running.append(share)
            return share

    def read(self, share: Share) -> int:
        """The CPU time in ns attributed to the job so far."""
        with self._lock:
            if share in self._running:
                self._advance()
            return share.ns

    def leave(self, share: Share) -> int:
        """The job ended: its final CPU time in ns (call again: the same)."""
        with self._lock:
            if share in self._running:
                self._advance()
                self._running.remove(share)
            return share.ns

    def _thread_ns(self, clock_id: int | None, default: int) -> int:
        if clock_id is None:
            return default
        try:
            return self._clock_ns(clock_id)
        except OSError:  # the thread is gone
            return default

    def _advance(self) -> None:
        now = self._process_ns()
        spent, self._last = max(0, now - self._last), max(self._last, now)
        if not self._running or not spent:
            return
        used = []
        for share in self._running:
            thread_ns = self._thread_ns(share.clock_id, share.thread_ns)
            used.append(max(0, thread_ns - share.thread_ns))
            share.thread_ns = max(share.thread_ns, thread_ns)
        total = sum(used)
        for share, own in zip(self._running, used, strict=True):
            share.ns += spent * own // total if total else spent // len(self._running)


PROCESS = CpuShares()
