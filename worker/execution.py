"""One job, end to end: verify the voucher offline, redeem it, run the job in a
thread while metering it, report usage, obey STOP, finish and hand back the receipt.

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
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from nacl.signing import SigningKey

from broker.core.errors import BrokerError, Code
from broker.core.metering import check_scope
from broker.core.vouchers import VoucherClaims
from broker.v1 import resources_pb2 as res_pb

from .broker_link import MeteringSession, SessionClosed
from .meters import Meter
from .result_cache import ResultCache, cache_key
from .runtime.jobs import Cancelled, JobContext, JobFailed, JobSpec
from .v1 import worker_service_pb2 as pb

log = logging.getLogger("worker.execution")

RESUME_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass
class WorkerIdentity:
    worker_id: str
    capabilities: dict[str, Any]
    prices: dict[str, int]

    def as_record(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "capabilities": self.capabilities,
                "prices": self.prices}


@dataclass
class BrokerAccess:
    channel: grpc.aio.Channel
    api_key: str
    usage_key: SigningKey


def job_spec(job: pb.Job) -> tuple[JobSpec, dict[str, Any]]:
    """The runtime's spec and a canonical description (for the cache key)."""
    kind = job.WhichOneof("kind")
    if kind == "generate":
        g = job.generate
        spec = JobSpec(kind="generate", model=g.model, prompt=g.prompt,
                       max_new_tokens=g.max_new_tokens or 32,
                       temperature=g.temperature_milli / 1000, seed=g.seed)
    elif kind == "burn":
        spec = JobSpec(kind="burn", duration_ms=job.burn.duration_ms, flops=job.burn.flops)
    elif kind == "handler":
        spec = JobSpec(kind="handler", handler=job.handler.handler, input=job.handler.input)
    else:
        raise BrokerError(Code.INVALID_ARGUMENT, "JOB_INVALID",
                          "job: set generate, burn or handler", {"field": "job"},
                          [("job", "one of generate, burn, handler")])
    try:
        spec.validate()
    except JobFailed as error:
        raise BrokerError(Code.INVALID_ARGUMENT, "JOB_INVALID", str(error)) from None
    described = json_format.MessageToDict(job, preserving_proto_field_name=True)
    return spec, described


class JobRunner:
    def __init__(self, runtime, meter_factory: Callable[[], Meter],
                 verify_voucher: Callable[[str], VoucherClaims], broker: BrokerAccess,
                 identity: WorkerIdentity, cache: ResultCache | None,
                 report_every_tokens: int = 64):
        self.runtime = runtime
        self.meter_factory = meter_factory
        self.verify_voucher = verify_voucher
        self.broker = broker
        self.identity = identity
        self.cache = cache
        self.report_every_tokens = report_every_tokens

    async def execute(self, request: pb.ExecuteRequest) -> AsyncIterator[pb.ExecuteResponse]:
        spec, described = job_spec(request.job)
        # Offline checks first: nothing is spent on a voucher that cannot pay for this job.
        claims = await asyncio.to_thread(self.verify_voucher, request.voucher)
        caps = self.identity.capabilities
        check_scope(claims.scope, self.identity.as_record(), caps["resource_class"], spec.model)
        if spec.kind == "generate" and spec.model not in self.runtime.models():
            raise BrokerError(Code.FAILED_PRECONDITION, "MODEL_NOT_AVAILABLE",
                              f"this worker does not serve model {spec.model[:100]!r}")
        key, cached = None, None
        scope = claims.scope.get("cache_scope", "")
        if scope and self.cache is not None and spec.kind != "burn":
            key = cache_key(scope, described)
            cached = self.cache.get(key)
        session = await self._redeem(request.voucher, caps["resource_class"], spec.model)
        job_id = "job_" + secrets.token_hex(12)
        yield pb.ExecuteResponse(accepted=pb.JobAccepted(
            job_id=job_id, budget=session.grant.budget, prices=session.grant.prices,
            meter=caps.get("meter", ""), cached=cached is not None))
        if cached is not None:
            async for event in self._replay(session, cached):
                yield event
        else:
            async for event in _Job(self, spec, session, key).run():
                yield event

    async def _redeem(self, voucher: str, resource_class: str, model: str) -> MeteringSession:
        b = self.broker
        try:
            return await MeteringSession.open(
                b.channel, b.api_key, voucher, self.identity.worker_id,
                resource_class=resource_class, model=model, request_id=secrets.token_hex(16),
                usage_key=b.usage_key)
        except grpc.RpcError as error:
            raise broker_failure(error) from None
        except SessionClosed as closed:
            raise broker_failure(closed.error) from None

    async def _replay(self, session: MeteringSession, entry: dict[str, Any]):
        """A cache hit: the stored output, charged as one call and nothing else."""
        for text, token_ids in entry["outputs"]:
            yield pb.ExecuteResponse(output=pb.JobOutput(text=text, token_ids=token_ids))
        usage = {"calls": 1}
        ack = await session.report(usage)
        yield usage_event(usage, ack.charged, ack.remaining, "cache")
        receipt = await session.finish(usage)
        yield pb.ExecuteResponse(result=pb.JobResult(
            status=pb.JOB_STATUS_COMPLETED, usage=res_pb.Usage(**usage), receipt=receipt,
            result_json=entry["result_json"], cached=True, meter="cache"))


def broker_failure(error: grpc.RpcError | None) -> Exception:
    """The broker refused or could not be reached: tell the agent; nothing was spent."""
    if error is None or error.code() in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED):
        return BrokerError(Code.UNAVAILABLE, "BROKER_UNAVAILABLE",
                           "the broker cannot be reached; the voucher was not redeemed and "
                           "nothing was spent")
    return PassThrough(error)


class PassThrough(Exception):
    """A broker status (e.g. VOUCHER_ALREADY_REDEEMED) to hand to the agent unchanged."""

    def __init__(self, error: grpc.RpcError):
        self.error = error
        super().__init__(error.details())


def usage_event(usage: dict[str, int], charged: int, remaining: int,
                meter: str) -> pb.ExecuteResponse:
    return pb.ExecuteResponse(usage=pb.JobUsage(usage=res_pb.Usage(**usage), charged=charged,
                                                remaining=remaining, meter=meter))


class _Job:
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
        self.watcher: asyncio.Task | None = None

    def _on_output(self, text: str, token_ids: list[int]) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, ("output", text, token_ids))

    def _thread(self) -> None:
        try:
            outcome = ("done", self.r.runtime.run(self.spec, self.ctx), "")
        except Cancelled:
            outcome = ("cancelled", {}, "")
        except JobFailed as error:
            outcome = ("failed", {}, str(error))
        except Exception as error:  # a bug in the runtime: fail the job, keep the worker
            log.exception("job crashed")
            outcome = ("failed", {}, f"internal error ({type(error).__name__})")
        self.loop.call_soon_threadsafe(self.events.put_nowait, outcome)

    def usage(self, gpu_ms: int, energy_mj: int) -> dict[str, int]:
        return {"gpu_ms": gpu_ms, "energy_mj": energy_mj, "calls": 1,
                "input_tokens": self.ctx.input_tokens, "output_tokens": self.ctx.output_tokens}

    async def run(self):
        await asyncio.to_thread(self.meter.start)
        threading.Thread(target=self._thread, name="job", daemon=True).start()
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
        next_report = self.loop.time() + interval
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
            if due and not self.session.stopped.is_set() and not self.lost_broker:
                event = await self._report()
                tokens_reported = tokens
                next_report = self.loop.time() + interval
                if event is not None:
                    yield event
            elif item is None:
                next_report = self.loop.time() + interval

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
            await self._reconnect(closed)
            return None
        return usage_event(usage, ack.charged, ack.remaining, self.meter.name)

    async def _reconnect(self, closed: SessionClosed) -> None:
        """The stream broke. Keep measuring and resume the session; if the broker stays
        away for the hold's whole life, stop the job (the broker settles what it acked)."""
        if closed.error is not None and closed.error.code() != grpc.StatusCode.UNAVAILABLE:
            self._give_up(f"the broker ended the session: {closed.error.details()}")
            return
        deadline = self.session.grant.expire_time.ToMilliseconds() / 1000
        b = self.r.broker
        for attempt in itertools.count():
            if time.time() >= deadline:
                break
            await asyncio.sleep(RESUME_BACKOFF_S[min(attempt, len(RESUME_BACKOFF_S) - 1)])
            try:
                self.session = await MeteringSession.resume(
                    b.channel, b.api_key, self.session.session_id, self.r.identity.worker_id,
                    usage_key=b.usage_key)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    break
                continue
            except SessionClosed as gone:
                if gone.error is not None and gone.error.code() != grpc.StatusCode.UNAVAILABLE:
                    break
                continue
            self.watcher.cancel()
            self.watcher = asyncio.create_task(self._watch_stop())
            return
        self._give_up("lost contact with the broker for the life of the hold")

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
        if not self.lost_broker:
            receipt = await self._finish(usage)
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


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
