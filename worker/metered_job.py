"""A running job and its metering loop: the job runs in a thread, outputs stream
back, cumulative usage is reported at the broker's interval and every N tokens, and
the session is finished with the final measured usage.

Cancellation: STOP from the broker, the agent hanging up and a lost broker all set
the job's cancel event; the runtime checks it between tokens or compute chunks, so
the job ends well within one reporting interval. Whatever ends the job, the usage
measured until then is what gets settled, and nothing that was not measured is
ever reported.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import grpc

from broker.v1 import resources_pb2 as res_pb
from common.money import USAGE_FIELDS

from .broker_link import AlreadySettled, MeteringSession, SessionClosed, connection_lost
from .runtime.jobs import Cancelled, JobContext, JobFailed, JobSpec
from .v1 import worker_service_pb2 as pb

if TYPE_CHECKING:
    from .execution import JobRunner

log = logging.getLogger("worker.job")

RESUME_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


def usage_event(usage: dict[str, int], charged: int, remaining: int,
                meter: str) -> pb.ExecuteResponse:
    return pb.ExecuteResponse(usage=pb.JobUsage(usage=res_pb.Usage(**usage), charged=charged,
                                                remaining=remaining, meter=meter))


class MeteredJob:
    """A running job and its metering loop."""

    def __init__(self, runner: JobRunner, spec: JobSpec, session: MeteringSession,
                 key: bytes | None):
        self.r = runner
        self.spec = spec
        self.session = session
        self.cache_key = key
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.ctx = JobContext(cancel=self.cancel, on_output=self._on_output)
        self.meter = runner.meter_factory()
        self.outputs: list[tuple[str, list[int]]] = []
        self.status = pb.JOB_STATUS_COMPLETED
        self.error = ""
        self.summary: dict[str, Any] = {}
        self.ended = asyncio.Event()
        self.lost_broker = False
        # The settlement a resume found (the answer to the finish was lost, or the broker
        # settled the session itself): what the job ends with, instead of a finish.
        self.settlement: res_pb.Receipt | None = None
        self.watcher: asyncio.Task | None = None

    def _on_output(self, text: str, token_ids: list[int]) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, ("output", text, token_ids))

    def _thread(self, started: asyncio.Future) -> None:
        # The meter starts and stops in the job's own thread: the CPU meter shares the
        # process's time out among running jobs by their threads' CPU time.
        try:
            self.meter.start()
        except Exception as error:
            self.loop.call_soon_threadsafe(_resolve, started, error)
            return
        self.loop.call_soon_threadsafe(_resolve, started, None)
        try:
            outcome = ("done", self.r.runtime.run(self.spec, self.ctx), "")
        except Cancelled:
            outcome = ("cancelled", {}, "")
        except JobFailed as error:
            outcome = ("failed", {}, str(error))
        except Exception as error:  # a bug in the runtime: fail the job, keep the worker
            log.exception("job crashed")
            outcome = ("failed", {}, f"internal error ({type(error).__name__})")
        try:
            self.meter.stop()  # the final reading; _wrap_up's stop() returns it again
        except Exception:
            log.exception("meter failed at the end of the job")  # _wrap_up tries again
        self.loop.call_soon_threadsafe(self.events.put_nowait, outcome)

    def usage(self, gpu_ms: int, energy_mj: int) -> dict[str, int]:
        return {"gpu_ms": gpu_ms, "energy_mj": energy_mj, "calls": 1,
                "input_tokens": self.ctx.input_tokens, "output_tokens": self.ctx.output_tokens}

    async def run(self):
        started = self.loop.create_future()
        threading.Thread(target=self._thread, args=(started,), name="job", daemon=True).start()
        try:
            await started  # (raises what the meter's start raised)
        except asyncio.CancelledError:
            self.cancel.set()
            raise
        self.watcher = asyncio.create_task(self._watch_stop())
        try:
            async for event in self._loop():
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            # The agent hung up: stop the job and still settle what was measured. A hang-up
            # while grpc is sending our last event reaches us as GeneratorExit (the stream
            # is closed at that yield), not as CancelledError.
            self.status = pb.JOB_STATUS_CANCELLED
            self.cancel.set()
            wrap_up = asyncio.ensure_future(self._wrap_up())
            await asyncio.shield(wrap_up)
            raise
        except Exception:
            # A bug of ours mid-job: stop the job, settle what was measured, say so.
            log.exception("metering loop failed")
            self.status, self.error = pb.JOB_STATUS_FAILED, "internal error in the worker"
            self.cancel.set()
        finally:
            self.watcher.cancel()
        result = await self._wrap_up()
        if result is not None:
            yield result

    async def _watch_stop(self) -> None:
        await self.session.stopped.wait()
        self.cancel.set()  # react at once, not at the next report

    async def _loop(self):
        interval = self.session.grant.report_interval_ms / 1000
        next_report = self._next_report(interval)
        tokens_reported = 0
        while True:
            timeout = max(0.0, next_report - self.loop.time())
            try:
                item = await asyncio.wait_for(self.events.get(), timeout)
            except TimeoutError:
                item = None
            if item is not None and item[0] != "output":
                self._ended(item)
                return
            if item is not None:
                self.outputs.append((item[1], item[2]))
                yield pb.ExecuteResponse(output=pb.JobOutput(text=item[1], token_ids=item[2]))
            tokens = self.ctx.input_tokens + self.ctx.output_tokens
            due = item is None or tokens - tokens_reported >= self.r.report_every_tokens
            if due and not self.session.stopped.is_set() and not self.lost_broker and \
                    self.settlement is None:
                event = await self._report()
                tokens_reported = tokens
                next_report = self._next_report(interval)
                if event is not None:
                    yield event
            elif item is None:
                next_report = self._next_report(interval)

    def _next_report(self, interval: float) -> float:
        """When to report next: on the worker's shared tick when its jobs share one
        stream (so they share its batches), else one interval from now."""
        aligned = getattr(self.session, "next_report_at", None)
        now = self.loop.time()
        return aligned(now, interval) if aligned is not None else now + interval

    def _ended(self, item) -> None:
        outcome, self.summary, error = item
        self.ended.set()
        if self.session.stopped.is_set() and outcome in ("cancelled", "done"):
            self.status = pb.JOB_STATUS_STOPPED
        elif outcome == "failed":
            self.status, self.error = pb.JOB_STATUS_FAILED, error
        elif outcome == "cancelled" and self.status == pb.JOB_STATUS_COMPLETED:
            self.status = pb.JOB_STATUS_FAILED
            self.error = self.error or "the job was cancelled"

    async def _report(self) -> pb.ExecuteResponse | None:
        reading = await asyncio.to_thread(self.meter.read)
        usage = self.usage(reading.gpu_ms, reading.energy_mj)
        try:
            ack = await self.session.report(usage)
        except SessionClosed as closed:
            self.r.metrics.report(acked=False)
            await self._reconnect(closed)
            return None
        self.r.metrics.report(acked=True)
        return usage_event(usage, ack.charged, ack.remaining, self.meter.name)

    async def _reconnect(self, closed: SessionClosed) -> None:
        """The stream broke. Keep measuring and resume the session; if the broker stays
        away for the hold's whole life, stop the job (the broker settles what it acked)."""
        if not connection_lost(closed.error):
            self._give_up(f"the broker ended the session: {closed.error.details()}")
            return
        deadline = self.session.grant.expire_time.ToMilliseconds() / 1000
        for attempt in itertools.count():
            if time.time() >= deadline:
                break
            await asyncio.sleep(RESUME_BACKOFF_S[min(attempt, len(RESUME_BACKOFF_S) - 1)])
            try:
                self.session = await self.r.resume(self.session)
            except AlreadySettled as settled:
                self._settled(settled.settled.receipt)
                return
            except grpc.RpcError as error:
                if not connection_lost(error):
                    break
                continue
            except SessionClosed as gone:
                if not connection_lost(gone.error):
                    break
                continue
            self.watcher.cancel()
            self.watcher = asyncio.create_task(self._watch_stop())
            return
        self._give_up("lost contact with the broker for the life of the hold")

    def _settled(self, receipt: res_pb.Receipt) -> None:
        """A resume found the session settled. Mid-job (the hold expired, the kill
        switch): the job stops and fails, with the receipt of what was charged; while
        finishing: `_finish` compares the settled usage with its own."""
        self.settlement = receipt
        if not self.ended.is_set():
            self.status = pb.JOB_STATUS_FAILED
            self.error = (f"the broker settled the session before the job ended "
                          f"(outcome {receipt.outcome or 'unknown'})")
            self.cancel.set()

    def _give_up(self, why: str) -> None:
        self.lost_broker = True
        self.error = why
        self.status = pb.JOB_STATUS_FAILED
        self.cancel.set()

    async def _wrap_up(self) -> pb.ExecuteResponse | None:
        """Wait for the job thread, take the final reading, finish the session."""
        while not self.ended.is_set():
            item = await self.events.get()
            if item[0] != "output":
                self._ended(item)
        reading = await asyncio.to_thread(self.meter.stop)
        usage = self.usage(reading.gpu_ms, reading.energy_mj)
        receipt = res_pb.Receipt()
        try:
            if not self.lost_broker:
                receipt = await self._finish(usage)
        finally:
            outcome = pb.JobStatus.Name(self.status).removeprefix("JOB_STATUS_").lower()
            self.r.metrics.job_done(outcome, self.meter.name, reading)
        if self.status == pb.JOB_STATUS_COMPLETED and self.cache_key is not None:
            self.r.cache.put(self.cache_key, {"outputs": self.outputs,
                                              "result_json": _json(self.summary)})
        return pb.ExecuteResponse(result=pb.JobResult(
            status=self.status, error=self.error, usage=res_pb.Usage(**usage), receipt=receipt,
            result_json=_json(self.summary), meter=self.meter.name))

    async def _finish(self, usage: dict[str, int]) -> res_pb.Receipt:
        """Settle on the final usage. If the stream broke, resume the session and finish
        again (as a report would), so what was measured is what gets settled."""
        try:
            while True:
                if self.settlement is not None:
                    return self._settled_with(self.settlement, usage)
                try:
                    return await self.session.finish(usage)
                except SessionClosed as closed:
                    await self._reconnect(closed)
                    if self.lost_broker:
                        self.error = self.error or f"settlement failed: {closed}"
                        return res_pb.Receipt()
        finally:
            if self.watcher is not None:
                self.watcher.cancel()  # _reconnect starts a new one


    def _settled_with(self, receipt: res_pb.Receipt, usage: dict[str, int]) -> res_pb.Receipt:
        """The job ends with the settlement a resume found: as if the finish had been
        answered when it settled this final usage (its answer was lost); otherwise the
        broker settled other usage (e.g. the acknowledged usage, the hold having
        expired), and the job is not reported as completed."""
        settled = {name: getattr(receipt.usage, name) for name in USAGE_FIELDS}
        if settled != usage:
            if self.status == pb.JOB_STATUS_COMPLETED:
                self.status = pb.JOB_STATUS_FAILED
            self.error = self.error or (
                f"the broker settled the session on other usage than the job's final usage "
                f"(outcome {receipt.outcome or 'unknown'}); the receipt says what was charged")
        return receipt


def _resolve(future: asyncio.Future, error: Exception | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
