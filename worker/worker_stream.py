"""The worker's metering link at fleet scale: one MeterWorker stream for all its jobs.

    stream = WorkerStream(channel, api_key, worker_id, usage_key)
    session = await stream.open(voucher, resource_class=..., model=...)  # a BatchedSession
    ack = await session.report(usage)      # as MeteringSession (broker_link.py)
    receipt = await session.finish(usage)

Every job's opens, reports and finishes go into the next batch: the sender waits a
moment (LINGER_S) after the first item so that the jobs reporting on the same tick
(MeteredJob aligns their timers with `next_report_at`) share one message, signs its
reports and finishes once (docs/wire.md), and sends it; the reader routes the
answer's per-session results (and the early STOPs) to their sessions. A broken stream
fails what was in flight with SessionClosed (UNAVAILABLE), as a per-session stream does;
the next item opens a new stream, and the jobs resume their sessions on it. A broker
without MeterWorker answers UNIMPLEMENTED: `open` then raises Unsupported and the
worker uses per-session streams.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import status_pb2
from nacl.signing import SigningKey

from broker.v1 import metering_service_pb2 as pb
from broker.v1 import metering_service_pb2_grpc as pb_grpc
from broker.v1 import resources_pb2 as res_pb
from common import usage_signing
from common.money import USAGE_FIELDS

from .broker_link import AlreadySettled, SessionClosed

LINGER_S = 0.005  # how long the first item of a batch waits for company
MAX_ITEMS = 256  # per batch (the broker takes up to 512, within its 64 KiB messages)


class Unsupported(Exception):
    """The broker has no MeterWorker (UNIMPLEMENTED): use per-session streams."""


class ItemRefused(grpc.RpcError):
    """The broker refused one item of a batch: its status, shaped like a failed call's
    (code, details, and the google.rpc.Status in the trailing metadata), so that it is
    handled, and passed through to the agent, as a per-session stream's would be."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self._status = status

    def code(self) -> grpc.StatusCode:
        return next((c for c in grpc.StatusCode if c.value[0] == self._status.code),
                    grpc.StatusCode.UNKNOWN)

    def details(self) -> str:
        return self._status.message

    def trailing_metadata(self) -> tuple:
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


@dataclass
class _Item:
    kind: str  # "open", "resume", "report", "finish"
    session_id: str  # (for an open: its ref)
    message: Any
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                   .create_future())


class WorkerStream:
    def __init__(self, channel: grpc.aio.Channel, api_key: str, worker_id: str,
                 usage_key: SigningKey | None = None, *, linger_s: float = LINGER_S) -> None:
        self._channel = channel
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.worker_id = worker_id
        self._usage_key = usage_key
        self._linger_s = linger_s
        self.supported: bool | None = None  # None until the broker has answered once
        self._queue: list[_Item] = []
        self._wake = asyncio.Event()
        self._sessions: dict[str, BatchedSession] = {}
        self._call: Any = None
        self._in_flight: dict[int, tuple[Any, list[_Item]]] = {}  # batch id -> (call, items)
        self._batch_id = 0
        self._refs = 0
        self._sender: asyncio.Task | None = None
        self._reader: asyncio.Task | None = None
        self.batches_sent = 0

    # -- what sessions and jobs call -------------------------------------------------

    async def open(self, voucher: str, *, resource_class: str = "", model: str = "",
                   request_id: str = "") -> BatchedSession:
        """Redeem a voucher on the stream; raises Unsupported, or the broker's refusal
        (ItemRefused, or SessionClosed when the stream broke)."""
        if self.supported is False:
            raise Unsupported()
        self._refs += 1
        ref = f"o{self._refs}"
        grant = await self._submit(_Item("open", ref, pb.WorkerOpen(ref=ref, open=pb.OpenSession(
            request_id=request_id, voucher=voucher, resource_class=resource_class,
            model=model))))
        return self._attach(grant)

    async def resume(self, session_id: str) -> BatchedSession:
        """Re-attach to an open session (after a broken stream, or from a `Meter`
        stream): a fresh BatchedSession with the broker's view of it. A settled session
        raises AlreadySettled, with its settlement."""
        answer = await self._submit(_Item("resume", session_id, session_id))
        if isinstance(answer, pb.SessionSettled):
            raise AlreadySettled(answer)
        return self._attach(answer)

    def next_report_at(self, now: float, interval: float) -> float:
        """The worker's shared tick: the next multiple of the interval (loop time), so
        that all jobs report together, each at least once per interval."""
        return (math.floor(now / interval) + 1) * interval

    async def close(self) -> None:
        for task in (self._sender, self._reader):
            if task is not None:
                task.cancel()
        if self._call is not None:
            self._call.cancel()
        await asyncio.gather(*(t for t in (self._sender, self._reader) if t is not None),
                             return_exceptions=True)

    # -- internals ---------------------------------------------------------------------

    def _attach(self, grant: pb.SessionGrant) -> BatchedSession:
        ses = BatchedSession(self, grant)
        self._sessions[grant.session_id] = ses
        return ses

    def _detach(self, ses: BatchedSession) -> None:
        if self._sessions.get(ses.session_id) is ses:
            del self._sessions[ses.session_id]

    async def _submit(self, item: _Item) -> Any:
        self._queue.append(item)
        self._wake.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_loop())
        return await item.future

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._linger_s)
            self._wake.clear()
            while self._queue:
                await self._send(self._take())

    def _take(self) -> list[_Item]:
        """The next batch: at most one item per session, at most MAX_ITEMS."""
        batch, named, rest = [], set(), []
        for item in self._queue:
            if len(batch) < MAX_ITEMS and item.session_id not in named:
                batch.append(item)
                named.add(item.session_id)
            else:
                rest.append(item)
        self._queue = rest
        order = ("open", "resume", "report", "finish")  # the answer's order
        return sorted(batch, key=lambda i: order.index(i.kind))

    async def _send(self, items: list[_Item]) -> None:
        self._batch_id += 1
        request = pb.MeterWorkerRequest(worker_id=self.worker_id, batch_id=self._batch_id)
        reports, finals = [], []  # the signed payloads' digests
        for item in items:
            if item.kind == "open":
                request.opens.append(item.message)
            elif item.kind == "resume":
                request.resume_session_ids.append(item.message)
            elif item.kind == "report":
                request.reports.append(item.message)
                reports.append(usage_signing.digest(usage_signing.payload(
                    item.session_id, _usage(item.message.usage), seq=item.message.seq)))
            else:  # its final usage is signed with the batch: no signature of its own
                request.finishes.append(item.message)
                finals.append(usage_signing.digest(usage_signing.payload(
                    item.session_id, _usage(item.message.finish.usage), final=True)))
        if (reports or finals) and self._usage_key is not None:
            request.signature = usage_signing.sign(
                self._usage_key, usage_signing.batch_payload(reports + finals))
        if self._call is None:
            self._call = pb_grpc.MeteringServiceStub(self._channel).MeterWorker(
                metadata=self._metadata)
            self._reader = asyncio.create_task(self._read(self._call))
        self._in_flight[self._batch_id] = (self._call, items)
        try:
            await self._call.write(request)
            self.batches_sent += 1
        except (asyncio.InvalidStateError, grpc.RpcError):
            # The stream ended under us: the reader fails what was in flight.
            if self._reader is not None:
                await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self, call: Any) -> None:
        error: grpc.RpcError | None = None
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                self.supported = True
                self._route(response)
        except grpc.RpcError as rpc_error:
            error = rpc_error
            if rpc_error.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.supported = False
        if self._call is call:
            self._call = None
        closed = SessionClosed(error)
        failure = Unsupported() if self.supported is False else closed
        for batch_id, (sent_on, items) in list(self._in_flight.items()):
            if sent_on is not call:
                continue
            del self._in_flight[batch_id]
            for item in items:
                if not item.future.done():
                    item.future.set_exception(failure)
                    item.future.exception()  # seen: its caller may be gone

    def _route(self, response: pb.MeterWorkerResponse) -> None:
        if response.early:
            for result in response.results:
                self._stop(result)
            return
        _, items = self._in_flight.pop(response.batch_id, (None, []))
        for item, result in zip(items, response.results, strict=False):
            self._stop(result)
            kind = result.WhichOneof("kind")
            if item.future.done():
                continue
            if kind == "error":
                item.future.set_exception(ItemRefused(result.error))
                item.future.exception()
            else:
                item.future.set_result(getattr(result, kind))

    def _stop(self, result: pb.SessionResult) -> None:
        if result.HasField("stop") and result.session_id in self._sessions:
            self._sessions[result.session_id].on_stop(result.stop)


class BatchedSession:
    """One session on the worker's stream; the interface of broker_link.MeteringSession."""

    def __init__(self, stream: WorkerStream, grant: pb.SessionGrant) -> None:
        self._stream = stream
        self.grant = grant
        self.session_id = grant.session_id
        self.seq = grant.last_seq
        self.stopped = asyncio.Event()
        self.stop: pb.StopCommand | None = None
        if grant.stopped:
            self.stopped.set()

    def on_stop(self, stop: pb.StopCommand) -> None:
        self.stop = stop
        self.stopped.set()

    def next_report_at(self, now: float, interval: float) -> float:
        return self._stream.next_report_at(now, interval)

    async def report(self, usage: dict[str, Any]) -> pb.UsageAck:
        """Send cumulative usage in the next batch; returns the broker's acknowledgement
        (raises ItemRefused or SessionClosed as a per-session stream would)."""
        self.seq += 1
        try:
            return await self._stream._submit(_Item("report", self.session_id,
                                                    pb.SessionUsageReport(
                session_id=self.session_id, seq=self.seq, usage=res_pb.Usage(**usage))))
        except ItemRefused as refused:
            raise SessionClosed(refused) from None

    async def finish(self, usage: dict[str, Any]) -> res_pb.Receipt:
        """Settle with the final usage, signed with the next batch; returns the receipt
        (its worker usage proof is then the batch's, docs/wire.md)."""
        try:
            settled = await self._stream._submit(_Item("finish", self.session_id,
                                                        pb.SessionFinish(
                session_id=self.session_id,
                finish=pb.FinishSession(usage=res_pb.Usage(**usage)))))
        except ItemRefused as refused:
            raise SessionClosed(refused) from None
        self._stream._detach(self)
        return settled.receipt

    async def abandon(self) -> None:
        """Stop routing to this session (it stays open on the broker, to resume)."""
        self._stream._detach(self)


def _usage(msg: res_pb.Usage) -> dict[str, int]:
    return {name: getattr(msg, name) for name in USAGE_FIELDS}

