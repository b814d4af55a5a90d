"""The worker's metering link: one bidirectional stream per session.

    session = await MeteringSession.open(channel, api_key, voucher, worker_id)
    ack = await session.report({"gpu_ms": 120, ...})     # cumulative usage
    if session.stopped.is_set(): ... cancel the job ...
    receipt = await session.finish(final_usage)
    session = await MeteringSession.resume(channel, api_key, session_id, worker_id)
    # (raises AlreadySettled, with the settlement, when the session is settled)

With a usage key, every report and the finish are signed (see UsageReport.signature).
A reader task routes every broker message: acks to the report waiting for them,
STOP to the `stopped` event (it may come at any time), the settlement to finish().
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from nacl.signing import SigningKey

from broker.v1 import metering_service_pb2 as pb
from broker.v1 import metering_service_pb2_grpc as pb_grpc
from broker.v1 import resources_pb2 as res_pb
from common import usage_signing
from common.status import error_info

# What the broker itself answers on a fault of its own (broker/api/base.py): resuming
# would meet the same fault, so that INTERNAL is not a connection failure.
BROKER_FAULT_DETAILS = "internal error"


def connection_lost(error: grpc.RpcError | None) -> bool:
    """Whether a failed call (None: a stream that ended without a status) lost the
    connection, rather than got the broker's answer: UNAVAILABLE, or an INTERNAL or
    UNKNOWN made up by the gRPC library when the connection broke under the call (e.g.
    "Internal error from Core", "Stream removed", a reset), which carries no ErrorInfo.
    Such a call can be retried, and a session resumed."""
    if error is None or error.code() == grpc.StatusCode.UNAVAILABLE:
        return True
    if error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return False
    return error_info(error) is None and error.details() != BROKER_FAULT_DETAILS


class SessionClosed(Exception):
    """The stream ended; `error` holds the broker's status if it failed."""

    def __init__(self, error: grpc.RpcError | None):
        self.error = error
        super().__init__(str(error.details()) if error else "metering stream closed")


class AlreadySettled(Exception):
    """A resume found the session settled: `settled` is its settlement, as the answer
    to its finish carried it (that answer may have been lost: docs/wire.md, "A finish
    answered again")."""

    def __init__(self, settled: pb.SessionSettled):
        self.settled = settled
        super().__init__(f"the session is settled (receipt {settled.receipt.receipt_id})")


class MeteringSession:
    def __init__(self, call, grant: pb.SessionGrant, usage_key: SigningKey | None = None):
        self._call = call
        self._usage_key = usage_key
        self.grant = grant
        self.session_id = grant.session_id
        self.seq = grant.last_seq
        self.stopped = asyncio.Event()
        self.stop: pb.StopCommand | None = None
        self._acks: dict[int, asyncio.Future] = {}
        self._settled: asyncio.Future = asyncio.get_running_loop().create_future()
        self._closed: SessionClosed | None = None
        self._reader = asyncio.create_task(self._read())
        if grant.stopped:
            self.stopped.set()

    @classmethod
    async def open(cls, channel: grpc.aio.Channel, api_key: str, voucher: str, worker_id: str,
                   *, resource_class: str = "", model: str = "", request_id: str = "",
                   usage_key: SigningKey | None = None) -> MeteringSession:
        first = pb.MeterRequest(open=pb.OpenSession(
            request_id=request_id, voucher=voucher, worker_id=worker_id,
            resource_class=resource_class, model=model))
        return await cls._start(channel, api_key, first, usage_key)

    @classmethod
    async def resume(cls, channel: grpc.aio.Channel, api_key: str, session_id: str,
                     worker_id: str, *,
                     usage_key: SigningKey | None = None) -> MeteringSession:
        first = pb.MeterRequest(resume=pb.ResumeSession(session_id=session_id,
                                                        worker_id=worker_id))
        return await cls._start(channel, api_key, first, usage_key)

    @classmethod
    async def _start(cls, channel, api_key: str, first: pb.MeterRequest,
                     usage_key: SigningKey | None) -> MeteringSession:
        call = pb_grpc.MeteringServiceStub(channel).Meter(
            metadata=(("authorization", f"Bearer {api_key}"),))
        await call.write(first)
        response = await call.read()
        if response is grpc.aio.EOF:
            # read() raises on an error status: EOF is a clean close without a grant.
            raise SessionClosed(None)
        if response.WhichOneof("kind") == "settled":  # (a resume, after a lost answer)
            call.cancel()
            raise AlreadySettled(response.settled)
        return cls(call, response.grant, usage_key)

    async def _read(self) -> None:
        error: grpc.RpcError | None = None
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    break
                kind = response.WhichOneof("kind")
                if kind == "ack":
                    future = self._acks.pop(response.ack.seq, None)
                    if future is not None and not future.done():
                        future.set_result(response.ack)
                elif kind == "stop":
                    self.stop = response.stop
                    self.stopped.set()
                elif kind == "settled":
                    self._settled.set_result(response.settled.receipt)
        except grpc.RpcError as rpc_error:
            error = rpc_error
        closed = self._closed = SessionClosed(error)
        for future in [*self._acks.values(), self._settled]:
            if not future.done():
                future.set_exception(closed)
                future.exception()  # mark it seen: nobody may be waiting on this one
        self._acks.clear()

    async def report(self, usage: dict[str, Any]) -> pb.UsageAck:
        """Send cumulative usage; returns the broker's acknowledgement."""
        self.seq += 1
        future = asyncio.get_running_loop().create_future()
        self._acks[self.seq] = future
        signature = self._sign(usage_signing.payload(self.session_id, usage, seq=self.seq))
        try:
            await self._send(pb.MeterRequest(usage=pb.UsageReport(
                seq=self.seq, usage=res_pb.Usage(**usage), signature=signature)))
        except SessionClosed:
            self._acks.pop(self.seq, None)
            raise
        return await future

    async def finish(self, usage: dict[str, Any]) -> res_pb.Receipt:
        """Send final cumulative usage; returns the signed receipt."""
        signature = self._sign(usage_signing.payload(self.session_id, usage, final=True))
        await self._send(pb.MeterRequest(finish=pb.FinishSession(
            usage=res_pb.Usage(**usage), signature=signature)))
        receipt = await self._settled
        await self._call.done_writing()
        await self._reader
        return receipt

    async def _send(self, message: pb.MeterRequest) -> None:
        """Write one message. A stream that has already ended (the broker went away)
        raises SessionClosed, with the broker's status, like a reply that never came."""
        try:
            await self._call.write(message)
        except (asyncio.InvalidStateError, grpc.RpcError) as error:
            await asyncio.gather(self._reader, return_exceptions=True)
            raise self._closed or SessionClosed(
                error if isinstance(error, grpc.RpcError) else None) from None

    def _sign(self, message: bytes) -> bytes:
        return usage_signing.sign(self._usage_key, message) if self._usage_key else b""

    async def abandon(self) -> None:
        """Drop the stream without finishing (the session stays open to resume)."""
        self._call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
