"""The load harness: client processes, each an asyncio loop of concurrent callers.

One harness for every figure and its baseline: the callers come from `workloads`, the
broker and the echo server get the same processes, channels, callers and timing. The
processes are spawned (not forked: the parent already holds gRPC channels), set their
callers up (open sessions, sign reports), report ready, and start together on `go`.
Each caller runs its workload's `step` in a closed loop (or every `pace_s`); an op
counts when it completes inside the measurement window, after the warm-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# One TCP connection per channel (grpc shares subchannels between equal channels).
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
READY_TIMEOUT_S = 600
# Callers set up at once, all client processes together. grpc core cancels new calls
# (CANCELLED) once more than 1,000 wait for the server to pick them up
# (grpc.server_max_pending_requests), so thousands of sessions are opened in waves that
# stay well below that (800 at once, with 4 processes, was not: the fleet's setup got
# CANCELLED on a busy loop).
SETUP_CALLS = 400


@dataclass(frozen=True)
class Load:
    target: str  # one server, or several comma-separated (the channels are spread)
    workload: str  # a name in workloads.WORKLOADS
    params: dict[str, Any] = field(default_factory=dict)
    processes: int = 2
    callers: int = 64  # in total, split evenly over the processes
    channels_per_process: int = 4
    warmup_s: float = 1.0
    duration_s: float = 5.0
    pace_s: float = 0.0  # 0: closed loop; else each caller sleeps this long between ops


@dataclass
class Outcome:
    ops: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # what steps returned
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def percentile(self, q: float, values: list[float] | None = None) -> float:
        data = sorted(self.latencies_ms if values is None else values)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(q / 100 * len(data)))]


class Clients:
    """Started client processes, set up and waiting for `go`."""

    def __init__(self, load: Load):
        ctx = multiprocessing.get_context("spawn")
        self._ready, self._results = ctx.Queue(), ctx.Queue()
        self._go = ctx.Event()
        per, extra = divmod(load.callers, load.processes)
        self._procs = []
        first = 0
        for index in range(load.processes):
            count = per + (index < extra)
            proc = ctx.Process(target=_client_process, daemon=True,
                               args=(load, index, first, count, self._ready, self._go,
                                     self._results))
            first += count
            self._procs.append(proc)
        for proc in self._procs:
            proc.start()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = len(self._procs)
        while pending:
            try:
                message = self._ready.get(timeout=1)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in self._procs):
                    raise RuntimeError("a client process died during setup") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("client setup took too long") from None
                continue
            if isinstance(message, str):  # a traceback from setup
                self.close()
                raise RuntimeError(f"client setup failed:\n{message}")
            pending -= 1

    def go(self) -> Outcome:
        """Start every caller; wait for the end of the run; the merged outcome."""
        self._go.set()
        total = Outcome()
        for _ in self._procs:
            part = self._results.get(timeout=READY_TIMEOUT_S)
            total.ops += part["ops"]
            total.seconds = max(total.seconds, part["seconds"])
            total.latencies_ms += part["latencies_ms"]
            total.samples += part["samples"]
            total.errors += part["errors"]
        for proc in self._procs:
            proc.join(30)
        return total

    def close(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
            proc.join(10)


@contextlib.contextmanager
def started(load: Load) -> Iterator[Clients]:
    clients = Clients(load)
    try:
        yield clients
    finally:
        clients.close()


def run(load: Load) -> Outcome:
    with started(load) as clients:
        return clients.go()


def _client_process(load: Load, index: int, first: int, count: int, ready, go,
                    results) -> None:
    asyncio.run(_client_main(load, index, first, count, ready, go, results))


async def _client_main(load: Load, index: int, first: int, count: int, ready, go,
                       results) -> None:
    import grpc

    from bench.workloads import WORKLOADS

    n_channels = max(1, min(load.channels_per_process, count))
    # Several servers (comma-separated: brokers on one database): the channels are
    # dealt out over them, each channel to one, so the callers spread evenly.
    targets = load.target.split(",")
    channels = [grpc.aio.insecure_channel(targets[(index * n_channels + i) % len(targets)],
                                          options=CHANNEL_OPTIONS)
                for i in range(n_channels)]
    make = WORKLOADS[load.workload]
    callers = [make(load.params, first + i, channels[i % n_channels]) for i in range(count)]
    try:
        wave = max(1, SETUP_CALLS // load.processes)  # thousands of sessions: in waves
        for chunk in range(0, count, wave):
            await asyncio.gather(*(c.setup() for c in callers[chunk:chunk + wave]))
        # Then the CPU-heavy part (signing reports ahead): only once every stream has sent
        # its first message, or a loaded machine keeps some silent past the broker's
        # first-message deadline (limits.meter_first_message_ms) and they end.
        for caller in callers:
            caller.prepare()
    except Exception:
        ready.put(traceback.format_exc())
        return
    ready.put(index)
    await asyncio.to_thread(go.wait)

    out = Outcome()
    begin = time.perf_counter() + load.warmup_s
    end = begin + load.duration_s

    async def drive(caller) -> None:
        while True:
            started_at = time.perf_counter()
            if started_at >= end:
                return
            try:
                sample = await caller.step()
            except Exception as error:  # noqa: BLE001 - reported, the figure fails
                out.errors.append(f"{type(error).__name__}: {error}"[:500])
                return
            if sample is False:  # this caller has nothing more to do
                return
            done = time.perf_counter()
            if begin <= done <= end:
                out.ops += 1
                out.latencies_ms.append((done - started_at) * 1000)
                if isinstance(sample, dict):
                    out.samples.append(sample)
            if load.pace_s:
                await asyncio.sleep(load.pace_s)

    await asyncio.gather(*(drive(c) for c in callers))
    out.seconds = min(time.perf_counter(), end) - begin
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(c.close() for c in callers),
                                              return_exceptions=True), 30)
    for channel in channels:
        await channel.close()
    results.put({"ops": out.ops, "seconds": out.seconds, "latencies_ms": out.latencies_ms,
                 "samples": out.samples, "errors": out.errors})
