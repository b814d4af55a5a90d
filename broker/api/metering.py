"""MeteringService: the bidirectional redeem -> usage -> stop -> settle stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from common import convert, usage_signing, vouchers
from common.errors import BrokerError, Code, invalid

from ..core import access, killswitch, metering, session, validate
from ..store.base import Record, Tx
from ..v1 import metering_service_pb2 as pb
from ..v1 import metering_service_pb2_grpc as pb_grpc
from . import metering_worker
from .base import Services, streaming

STOP_REASONS = {session.BUDGET_EXHAUSTED: pb.STOP_REASON_BUDGET_EXHAUSTED,
                session.HOLD_EXPIRING: pb.STOP_REASON_HOLD_EXPIRING,
                killswitch.REVOKED: pb.STOP_REASON_REVOKED}


def grant(ses: Record) -> pb.MeterResponse:
    return pb.MeterResponse(grant=pb.SessionGrant(
        session_id=ses["session_id"], budget=ses["budget"],
        prices=convert.prices_to_proto(ses["prices"]),
        report_interval_ms=ses["report_interval_ms"],
        expire_time=convert.timestamp(ses["expire_ms"]), charged=ses["charged"],
        last_seq=ses["last_seq"], usage=convert.usage_to_proto(ses["usage"]),
        stopped=bool(ses["stop_reason"])))


def settled(receipt: Record) -> pb.MeterResponse:
    """The answer to a finish (or to a resume of a settled session): the worker's copy
    of the receipt (core/receipts.py `worker_view`)."""
    return pb.MeterResponse(settled=pb.SessionSettled(
        receipt=convert.receipt(receipt),
        settle_time=convert.timestamp(receipt["settle_ms"])))


def _stop(decision: session.UsageDecision) -> pb.MeterResponse:
    return pb.MeterResponse(stop=pb.StopCommand(
        reason=STOP_REASONS[decision.stop_reason], charged=decision.charged,
        remaining=decision.remaining))


def _early_stop(last: Record, report: pb.UsageReport, usage: Record, now: int,
                elapsed_ms: int | None) -> pb.MeterResponse | None:
    """STOP for this report, sent before the report is durable, when the session as
    this stream's last committed report left it says so (and the signature checks out).

    Why: the ack must wait for the group commit's fsync, STOP need not. STOP only
    tells the worker to wind down; the money rules are enforced by the writer, whose
    decision (same rule, same `now`) is the one recorded and acknowledged. The two
    differ only when something else changed the session meanwhile (expiry, another
    stream), and then the writer refuses the report."""
    try:
        decision = session.on_usage(last, report.seq, usage, now, elapsed_ms)
        if not decision.stop_reason:
            return None
        usage_signing.verify(last["usage_public_key"], usage_signing.payload(
            last["session_id"], usage, seq=report.seq), report.signature)
    except BrokerError:
        return None  # the writer refuses the report, with the authoritative error
    return _stop(decision)


# How long a refused stream waits for its first message before the refusal goes out.
REFUSAL_GRACE_S = 1.0


async def _let_the_first_message_land(requests) -> None:
    """Wait (briefly) for the first message of a stream about to be refused. Why: a
    grpc.aio client still writing it when the call ends reports INTERNAL ("Internal
    error from Core") instead of our status; a client that sends nothing is refused
    after REFUSAL_GRACE_S all the same."""
    # Timed out, hung up, undecodable: the stream is refused all the same.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(anext(requests, None), REFUSAL_GRACE_S)


class MeteringServicer(pb_grpc.MeteringServiceServicer):
    def __init__(self, services: Services):
        self.s = services

    @streaming
    async def Meter(self, request_iterator, context):
        async for response in self._worker_stream(request_iterator, context, self._meter):
            yield response

    @streaming
    async def MeterWorker(self, request_iterator, context):
        async for response in self._worker_stream(request_iterator, context,
                                                  self._meter_worker):
            yield response

    async def _worker_stream(self, request_iterator, context, serve):
        """A worker's metering stream, served by `serve(principal, requests, context)`.
        Authenticated on the call's metadata, before any message: a stream without a
        valid worker key (or over the stream caps) is refused, not held open waiting."""
        requests = aiter(request_iterator)
        try:
            p = await self.s.authenticate(context, "worker")
            self.s.streams.open_stream(p.key_id)
        except BrokerError:
            await _let_the_first_message_land(requests)
            raise
        try:
            async for response in serve(p, requests, context):
                yield response
        finally:
            self.s.streams.release(p.key_id)

    async def _meter_worker(self, p, requests, context):
        async for response in metering_worker.serve(
                self.s, p, await self._first(requests), requests, context, self._next):
            yield response

    async def _first(self, requests) -> pb.MeterRequest | None:
        """The stream's first message, which must come within the first-message deadline."""
        limit_ms = self.s.limits.meter_first_message_ms
        try:
            return await asyncio.wait_for(anext(aiter(requests), None), limit_ms / 1000)
        except TimeoutError:
            raise BrokerError(Code.INVALID_ARGUMENT, "FIRST_MESSAGE_TIMEOUT",
                              f"send open or resume within {limit_ms} ms of starting the "
                              "stream", {"limit_ms": str(limit_ms)}) from None

    async def _meter(self, p, requests, context):
        first = await self._first(requests)
        if first is None:
            return
        kind = first.WhichOneof("kind")
        # When this stream's last report (or the open) was, on a monotonic clock: the
        # time between reports for the STOP projection, whatever the wall clock does.
        # None on a resumed stream: the last report came over another one.
        mark: int | None = None
        if kind == "open":
            mark = time.monotonic_ns()
            ses = await self._open(p, first.open)
        elif kind == "resume":
            # Required: an empty worker id would skip the check that it is the session's.
            worker_id = validate.ident(first.resume.worker_id, "resume.worker_id")
            # This stream takes the session over: a stream attached before (a broken
            # connection, a stalled broker) can no longer write to it. A settled one is
            # answered with its settlement (the answer to its finish may have been lost).
            ses, copy = await self.s.submit(lambda tx: metering.resume(
                tx, p, first.resume.session_id, worker_id))
            if copy is not None:
                yield settled(copy)
                return
        else:
            raise invalid("kind", "the first message must be open or resume",
                          "SESSION_NOT_OPEN")
        session_id, epoch = ses["session_id"], ses["epoch"]
        yield grant(ses)
        while (message := await self._next(requests)) is not None:
            # Checked again on every message: a key revoked while its stream is open
            # must stop metering at once, not when the stream ends. (A usage report's
            # op checks it, in the write transaction: no read transaction of its own.)
            kind = message.WhichOneof("kind")
            if kind != "usage":
                await self.s.reauthenticate(p)
            if kind == "usage":
                report = message.usage
                usage = convert.usage_from_proto(report.usage)
                now, at = self.s.clock(), time.monotonic_ns()
                elapsed_ms = None if mark is None else (at - mark) // 1_000_000
                early = _early_stop(ses, report, usage, now, elapsed_ms)
                if early is not None:
                    yield early
                decision = await self._report(p, ses, report, usage, now, elapsed_ms, epoch)
                mark = at
                yield pb.MeterResponse(ack=pb.UsageAck(
                    seq=report.seq, charged=decision.charged, remaining=decision.remaining))
                if decision.stop_reason and (early is None or early.stop.reason !=
                                             STOP_REASONS[decision.stop_reason]):
                    yield _stop(decision)  # not foreseen (e.g. the kill switch), or not so
                ses = decision.session
            elif kind == "finish":
                yield await self._finish(p, session_id, message.finish, epoch)
                return
            else:
                raise invalid("kind", "the session is already open; send usage or finish",
                              "SESSION_ALREADY_OPEN")

    async def _next(self, requests) -> pb.MeterRequest | None:
        """The stream's next message (None at its end). Once the broker's shutdown grace
        period is over, SHUTTING_DOWN instead: the session stays open with everything
        acknowledged so far, for the worker to resume on a broker that is up."""
        return await self.s.streams.read(requests)

    async def _report(self, p, ses: Record, report: pb.UsageReport, usage: Record,
                      now: int, elapsed_ms: int | None, epoch: int) -> session.UsageDecision:
        message = usage_signing.payload(ses["session_id"], usage, seq=report.seq)

        def record(verified: usage_signing.Verified | None) -> Callable[[Tx], Any]:
            def op(tx: Tx) -> session.UsageDecision:
                access.require_active(tx, p)
                return metering.record_usage(tx, p, ses["session_id"], report.seq, usage,
                                             now, report.signature, verified, elapsed_ms,
                                             epoch=epoch)
            return op

        # The signature check needs no ordering: on a crypto thread, which then hands
        # the op to the single writer itself (the session's in the order read).
        return await self.s.submit_checked(lambda: usage_signing.verify_ahead(
            ses["usage_public_key"], message, report.signature), record, ses["session_id"])

    async def _finish(self, p, session_id: str, finish: pb.FinishSession,
                      epoch: int) -> pb.MeterResponse:
        usage = convert.usage_from_proto(finish.usage)
        signer = self.s.receipt_keyring.signer
        receipt = await self.s.store.submit(lambda tx: metering.finish(
            tx, p, session_id, usage, self.s.clock(), self.s.config, signer, finish.signature,
            epoch=epoch))
        return settled(receipt)

    async def _open(self, p, request: pb.OpenSession) -> Record:
        self.s.refuse_when_draining()
        # Expiry is checked by redeem, after the request_id lookup: a retried open whose
        # first answer was lost still gets that answer once the voucher has expired.
        claims = vouchers.verify(request.voucher, self.s.keyring.verify_keys(), self.s.clock(),
                                 check_expiry=False)
        open_once = self.s.mutation(p, "Meter.Open", request, lambda tx, now: (
            metering.redeem(tx, p, claims, request.worker_id, request.resource_class,
                            request.model, now, self.s.config)))
        # Then this stream attaches, in the same transaction; a retried open (same
        # request_id) gets the session as it is now, and takes it over.
        current = await self.s.submit(lambda tx: metering.attach(
            tx, p, open_once(tx)["session_id"], request.worker_id))
        session.require_open(current)
        return current
