"""One job, end to end: verify the voucher offline, check it covers the job, redeem
it, then hand over to `MeteredJob` (or replay a cached result) and stream the events.
Nothing is spent before the voucher has passed every offline check."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from nacl.signing import SigningKey

from broker.v1 import resources_pb2 as res_pb
from common.errors import BrokerError, Code
from common.vouchers import VoucherClaims, check_scope

from .broker_link import MeteringSession, SessionClosed, connection_lost
from .metered_job import MeteredJob, usage_event
from .meters import Meter
from .metrics import WorkerMetrics
from .result_cache import ResultCache, cache_key
from .runtime.jobs import JobFailed, JobSpec
from .v1 import worker_service_pb2 as pb
from .worker_stream import BatchedSession, Unsupported, WorkerStream

# Waits between the tries of an open that lost its connection (about 4 s in all).
REDEEM_RETRY_S = (0.2, 0.5, 1.0, 2.0)


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
    # The worker's one metering stream for all jobs; None: a Meter stream per job.
    stream: WorkerStream | None = None


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
                 identity: WorkerIdentity, cache: ResultCache | None, metrics: WorkerMetrics,
                 report_every_tokens: int = 64):
        self.runtime = runtime
        self.meter_factory = meter_factory
        self.verify_voucher = verify_voucher
        self.broker = broker
        self.identity = identity
        self.cache = cache
        self.metrics = metrics
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
            with self.metrics.running():
                async for event in MeteredJob(self, spec, session, key).run():
                    yield event

    async def _redeem(self, voucher: str, resource_class: str, model: str) -> MeteringSession:
        """Open the session. An open whose connection was lost (a broker that died or
        hung: the channel moves to the next) is tried again with the same request_id,
        so it redeems at most once and a grant that was lost comes back the same."""
        request_id = secrets.token_hex(16)
        for wait in (*REDEEM_RETRY_S, None):
            try:
                return await self._open(voucher, resource_class, model, request_id)
            except grpc.RpcError as error:
                failed: grpc.RpcError | None = error
            except SessionClosed as closed:
                failed = closed.error
            if wait is None or not connection_lost(failed):
                raise broker_failure(failed) from None
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _open(self, voucher: str, resource_class: str, model: str,
                    request_id: str) -> MeteringSession:
        b = self.broker
        if b.stream is not None and b.stream.supported is not False:
            with contextlib.suppress(Unsupported):  # then a stream of its own
                return await b.stream.open(voucher, resource_class=resource_class,
                                           model=model, request_id=request_id)
        return await MeteringSession.open(
            b.channel, b.api_key, voucher, self.identity.worker_id,
            resource_class=resource_class, model=model, request_id=request_id,
            usage_key=b.usage_key)

    async def resume(self, session: MeteringSession) -> MeteringSession:
        """Re-attach to `session` after its stream broke, on the same kind of stream."""
        b = self.broker
        if isinstance(session, BatchedSession) and b.stream is not None:
            return await b.stream.resume(session.session_id)
        return await MeteringSession.resume(b.channel, b.api_key, session.session_id,
                                            self.identity.worker_id, usage_key=b.usage_key)

    async def _replay(self, session: MeteringSession, entry: dict[str, Any]):
        """A cache hit: the stored output, charged as one call and nothing else."""
        for text, token_ids in entry["outputs"]:
            yield pb.ExecuteResponse(output=pb.JobOutput(text=text, token_ids=token_ids))
        usage = {"calls": 1}
        ack = await session.report(usage)
        self.metrics.report(acked=True)
        self.metrics.cache_hit()
        yield usage_event(usage, ack.charged, ack.remaining, "cache")
        receipt = await session.finish(usage)
        yield pb.ExecuteResponse(result=pb.JobResult(
            status=pb.JOB_STATUS_COMPLETED, usage=res_pb.Usage(**usage), receipt=receipt,
            result_json=entry["result_json"], cached=True, meter="cache"))


def broker_failure(error: grpc.RpcError | None) -> Exception:
    """The broker refused or could not be reached: tell the agent; nothing was spent."""
    if connection_lost(error) or error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return BrokerError(Code.UNAVAILABLE, "BROKER_UNAVAILABLE",
                           "the broker cannot be reached; the voucher was not redeemed and "
                           "nothing was spent")
    return PassThrough(error)


class PassThrough(Exception):
    """A broker status (e.g. VOUCHER_ALREADY_REDEEMED) to hand to the agent unchanged."""

    def __init__(self, error: grpc.RpcError):
        self.error = error
        super().__init__(error.details())
