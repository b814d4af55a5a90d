"""MeteringService.MeterWorker: one stream per worker, one batch per message.

Per batch: the caller's key is checked again, the batch is validated as a whole (size,
a session named twice, the worker's id), the sessions it names are read in one
snapshot (are they this worker's? their state for early STOPs), the reports' one
signature is checked (outside the single writer), then every open, report and finish
is submitted as one op whose parts succeed or fail independently
(store/group.py): one durable commit per batch, and a refused report refuses
that session's item only. The decisions are the per-session ones (core/metering.py,
core/session.py), so a session can move between this stream and `Meter`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.rpc import code_pb2, status_pb2

from common import convert, status, usage_signing, vouchers
from common.errors import BrokerError, Code, invalid

from ..core import metering, session, validate
from ..core.access import Principal
from ..core.registry import get_own_worker
from ..store.base import Record, Tx
from ..store.group import independently
from ..v1 import metering_service_pb2 as pb
from . import metering as per_session  # (it imports this module: attributes at call time)
from .base import Services

# More items than this in one batch: BATCH_TOO_LARGE (the 64 KiB message limit of
# broker/daemon.py is usually reached first: a report takes about 60 bytes).
MAX_BATCH_ITEMS = 512
# Batches of one stream started (checked, handed to the writer) before the first of
# them is answered; more wait in the stream's flow control.
PIPELINE_DEPTH = 4

log = logging.getLogger("broker.api")


def _stop(decision: session.UsageDecision) -> pb.StopCommand:
    return pb.StopCommand(reason=per_session.STOP_REASONS[decision.stop_reason],
                          charged=decision.charged, remaining=decision.remaining)


def _error(error: Exception) -> status_pb2.Status:
    if not isinstance(error, BrokerError):  # a bug of ours: no details leak
        log.error("internal error in a MeterWorker batch", exc_info=error)
        return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
    return status.status_proto(error)


def check_batch(batch: pb.MeterWorkerRequest, worker_id: str) -> None:
    """Refuse a malformed batch as a whole (the stream ends with the status)."""
    if batch.worker_id != worker_id:
        raise invalid("worker_id", "must be the same on every batch of the stream")
    items = (len(batch.opens) + len(batch.resume_session_ids) + len(batch.reports) +
             len(batch.finishes))
    if items > MAX_BATCH_ITEMS:
        raise BrokerError(Code.INVALID_ARGUMENT, "BATCH_TOO_LARGE",
                          f"a batch may carry at most {MAX_BATCH_ITEMS} items, not {items}",
                          {"max_items": str(MAX_BATCH_ITEMS)},
                          [("reports", f"at most {MAX_BATCH_ITEMS} items in all")])
    named = [*batch.resume_session_ids, *(r.session_id for r in batch.reports),
             *(f.session_id for f in batch.finishes)]
    refs = [o.ref for o in batch.opens]
    for kind, names in (("session", named), ("open ref", refs)):
        if len(set(names)) != len(names):
            repeated = next(n for n in names if names.count(n) > 1)
            raise BrokerError(Code.INVALID_ARGUMENT, "SESSION_REPEATED_IN_BATCH",
                              f"the batch names {kind} {repeated!r} more than once",
                              {"session_id" if kind == "session" else "ref": repeated})
    for i, ref in enumerate(refs):
        validate.ident(ref, f"opens[{i}].ref", required=False)


@dataclass
class Answer:
    """A batch started (its checks done, its op with the writer) and not yet answered."""
    batch_id: int
    results: list[pb.SessionResult | None]
    ops: list[tuple[int, Callable[[Tx], Any], Callable[[Any], pb.SessionResult]]]
    committed: asyncio.Future | None  # the outcomes of `ops`, once durable
    early: pb.MeterWorkerResponse | None  # the STOPs foreseen, sent before the commit
    at: int = 0  # when it was started, time.monotonic_ns()
    # The sessions reported in it, with their mark before this batch (restored if the
    # report is refused).
    reported: dict[str, int | None] = field(default_factory=dict)


class WorkerStream:
    """One MeterWorker call: its caller and worker, and the batches it carries."""

    def __init__(self, services: Services, principal: Principal, worker_id: str) -> None:
        self.s = services
        self.p = principal
        self.worker_id = worker_id
        self.active: set[str] = set()  # sessions granted or reported here, not settled
        # When each session's last report (or its open) on this stream was started, on
        # a monotonic clock: the time between reports for the STOP projection, as on
        # `Meter`, whatever the wall clock does. None (absent) for a session resumed
        # here: its last report may have come over another stream.
        self.marks: dict[str, int] = {}
        # The epoch (fencing token) each session opened or resumed here attached with.
        # A session reported without that carries the one it had when its batch was read.
        self.epochs: dict[str, int] = {}

    async def start(self, batch: pb.MeterWorkerRequest) -> Answer:
        """Everything before the commit, done now; the batch's op handed to the writer."""
        check_batch(batch, self.worker_id)
        now, at = self.s.clock(), time.monotonic_ns()
        results: list[pb.SessionResult | None] = [None] * (
            len(batch.opens) + len(batch.resume_session_ids))
        ops: list[tuple[int, Callable[[Tx], Any], Callable[[Any], pb.SessionResult]]] = []
        if batch.opens:
            self.s.refuse_when_draining()
        for i, item in enumerate(batch.opens):
            self._open(i, item, results, ops)
        known = await self._sessions(batch)
        for i, session_id in enumerate(batch.resume_session_ids, len(batch.opens)):
            self.marks.pop(session_id, None)
            self._resume(i, session_id, known, results, ops)
        reported: dict[str, int | None] = {}
        finals = _batched_finals(batch)
        checked: dict[str, usage_signing.Verified | None] = {}  # batch signature, per key
        early, signed = self._reports(batch, known, now, at, reported, finals, checked,
                                      results, ops)
        for item in batch.finishes:
            self._finish(item, known, finals.get(item.session_id), signed, batch.signature,
                         checked, results, ops)
        committed = asyncio.ensure_future(self.s.store.submit(
            independently([op for _, op, _ in ops]))) if ops else None
        return Answer(batch.batch_id, results, ops, committed,
                      pb.MeterWorkerResponse(batch_id=batch.batch_id, results=early,
                                             early=True) if early else None, at, reported)

    async def finish(self, answer: Answer) -> pb.MeterWorkerResponse:
        """The answer to a started batch, once its commit is durable."""
        results = answer.results
        if answer.committed is not None:
            outcomes = await answer.committed
            for (index, _, to_result), outcome in zip(answer.ops, outcomes, strict=True):
                results[index] = to_result(outcome)
        for result in results:
            kind = result.WhichOneof("kind")
            if kind in ("grant", "ack"):
                self.active.add(result.session_id)
                if kind == "grant" and result.ref:  # opened in this batch
                    self.marks[result.session_id] = answer.at
            elif kind == "settled":  # (nothing of a settled session is kept)
                self.active.discard(result.session_id)
                self.marks.pop(result.session_id, None)
                self.epochs.pop(result.session_id, None)
            elif result.session_id in answer.reported and \
                    self.marks.get(result.session_id) == answer.at:
                # Refused: the session's last acknowledged report is the one before.
                previous = answer.reported[result.session_id]
                if previous is None:
                    self.marks.pop(result.session_id, None)
                else:
                    self.marks[result.session_id] = previous
        return pb.MeterWorkerResponse(batch_id=answer.batch_id, results=results)

    async def _sessions(self, batch: pb.MeterWorkerRequest) -> dict[str, Record | BrokerError]:
        """The sessions the batch names, as of now, or why they are not this worker's."""
        names = [*batch.resume_session_ids, *(r.session_id for r in batch.reports),
                 *(f.session_id for f in batch.finishes)]

        def read(tx: Tx) -> dict[str, Record | BrokerError]:
            found: dict[str, Record | BrokerError] = {}
            for name in names:
                try:
                    found[name] = metering.get_own_session(tx, self.p, name, self.worker_id)
                except BrokerError as error:
                    found[name] = error
            return found

        return await self.s.read(read) if names else {}

    def _open(self, index: int, item: pb.WorkerOpen, results: list, ops: list) -> None:
        request = pb.OpenSession()
        request.CopyFrom(item.open)
        try:
            if request.worker_id not in ("", self.worker_id):
                raise invalid(f"opens[{index}].open.worker_id",
                              "must be empty or the stream's worker")
            request.worker_id = self.worker_id  # the same fingerprint as on `Meter`
            claims = vouchers.verify(request.voucher, self.s.keyring.verify_keys(),
                                     self.s.clock(), check_expiry=False)
        except BrokerError as error:
            results[index] = pb.SessionResult(ref=item.ref, error=_error(error))
            return
        open_once = self.s.mutation(self.p, "Meter.Open", request, lambda tx, now: (
            metering.redeem(tx, self.p, claims, request.worker_id, request.resource_class,
                            request.model, now, self.s.config)))

        def op(tx: Tx) -> Record:
            # Then this stream attaches, in the same transaction: a retried open (same
            # request_id) gets the session as it is now, and takes it over.
            return metering.attach(tx, self.p, open_once(tx)["session_id"], self.worker_id)

        ops.append((index, op, self._granted(ref=item.ref)))

    def _resume(self, index: int, session_id: str, known: dict[str, Record | BrokerError],
                results: list, ops: list) -> None:
        """This stream takes the session over (a new epoch: metering.attach)."""
        ses = known[session_id]
        if isinstance(ses, BrokerError):
            results[index] = pb.SessionResult(session_id=session_id, error=_error(ses))
            return
        # A settled session is answered with its settlement (metering.resume).
        ops.append((index, lambda tx: metering.resume(tx, self.p, session_id, self.worker_id),
                    self._granted(session_id=session_id)))

    def _granted(self, **names: str) -> Callable[[Any], pb.SessionResult]:
        """The result of an open or resume (an attached session, or why not), once
        committed; the stream keeps the session's epoch for its reports and finish."""
        def to_result(outcome: Any) -> pb.SessionResult:
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                if isinstance(outcome, tuple):  # a resume: (session, settlement or None)
                    outcome, copy = outcome
                    if copy is not None:
                        return pb.SessionResult(session_id=outcome["session_id"],
                                                settled=_settled(copy))
                session.require_open(outcome)
            except BrokerError as error:
                return pb.SessionResult(**names, error=_error(error))
            except Exception as error:  # a bug of ours: INTERNAL, no details
                return pb.SessionResult(**names, error=_error(error))
            self.epochs[outcome["session_id"]] = outcome["epoch"]
            return pb.SessionResult(**{**names, "session_id": outcome["session_id"]},
                                    grant=per_session.grant(outcome).grant)

        return to_result

    def _epoch(self, ses: Record) -> int:
        return self.epochs.get(ses["session_id"], ses.get("epoch", 0))

    def _reports(self, batch: pb.MeterWorkerRequest, known: dict[str, Record | BrokerError],
                 now: int, at: int, reported: dict[str, int | None], finals: dict[str, bytes],
                 keys: dict[str, usage_signing.Verified | None], results: list,
                 ops: list) -> tuple[list[pb.SessionResult], bytes]:
        """Queue the reports' ops; the STOPs foreseen from the sessions as they are, and
        the batch's signed bytes (its reports', then `finals`' digests: docs/wire.md).
        Each report's time since the session's last one is on the monotonic clock where
        this stream saw both (`marks`), as on `Meter`."""
        usages = [convert.usage_from_proto(r.usage) for r in batch.reports]
        messages = [usage_signing.payload(r.session_id, usage, seq=r.seq)
                    for r, usage in zip(batch.reports, usages, strict=True)]
        signed = usage_signing.batch_payload([usage_signing.digest(m) for m in
                                              [*messages, *finals.values()]])
        early: list[pb.SessionResult] = []
        for report, usage, message in zip(batch.reports, usages, messages, strict=True):
            index = len(results)
            results.append(None)
            ses = known[report.session_id]
            if isinstance(ses, BrokerError):
                results[index] = pb.SessionResult(session_id=report.session_id,
                                                  error=_error(ses))
                continue
            key = ses["usage_public_key"]
            if key not in keys:
                keys[key] = usage_signing.verify_ahead(key, signed, batch.signature)
            verified = keys[key]
            mark = reported[report.session_id] = self.marks.get(report.session_id)
            elapsed_ms = None if mark is None else (at - mark) // 1_000_000
            self.marks[report.session_id] = at  # (a later batch may start before the ack)
            stop = _foreseen(ses, report.seq, usage, now, elapsed_ms) if verified else None
            if stop is not None:
                early.append(pb.SessionResult(session_id=report.session_id, stop=stop))
            ops.append((index, self._report_op(report, usage, now, elapsed_ms, message,
                                               verified, signed, batch.signature,
                                               self._epoch(ses)),
                        _ack(report)))
        return early, signed

    def _report_op(self, report: pb.SessionUsageReport, usage: Record, now: int,
                   elapsed_ms: int | None, message: bytes,
                   verified: usage_signing.Verified | None, signed: bytes,
                   signature: bytes, epoch: int) -> Callable[[Tx], session.UsageDecision]:
        # The writer trusts the check above only for the key it was made with, and only
        # for this report's own payload (listed in the signed batch bytes).
        ahead = usage_signing.Verified(verified.public_key_hex, message) if verified else None
        return lambda tx: metering.record_usage(
            tx, self.p, report.session_id, report.seq, usage, now, signature, ahead,
            elapsed_ms, worker_id=self.worker_id, batch=signed, epoch=epoch)

    def _finish(self, item: pb.SessionFinish, known: dict[str, Record | BrokerError],
                final: bytes | None, signed: bytes, signature: bytes,
                keys: dict[str, usage_signing.Verified | None], results: list,
                ops: list) -> None:
        """Queue a finish's op. `final`: its payload, when it is signed with the batch
        (it carries no signature of its own); else it is checked on its own, as on
        `Meter`."""
        index = len(results)
        results.append(None)
        ses = known[item.session_id]
        if isinstance(ses, BrokerError):
            results[index] = pb.SessionResult(session_id=item.session_id, error=_error(ses))
            return
        usage = convert.usage_from_proto(item.finish.usage)
        signer = self.s.receipt_keyring.signer
        epoch = self._epoch(ses)
        ahead, batch = None, b""
        if final is None:  # signed on its own, as on `Meter`
            signature = item.finish.signature
        else:
            batch, key = signed, ses["usage_public_key"]
            if key not in keys:
                keys[key] = usage_signing.verify_ahead(key, signed, signature)
            verified = keys[key]
            # (trusted by the writer for this key and this finish's own payload only)
            ahead = usage_signing.Verified(verified.public_key_hex, final) if verified else None

        def op(tx: Tx) -> Record:
            return metering.finish(tx, self.p, item.session_id, usage, self.s.clock(),
                                   self.s.config, signer, signature, ahead,
                                   worker_id=self.worker_id, batch=batch, epoch=epoch)

        def to_result(outcome: Any) -> pb.SessionResult:
            if isinstance(outcome, Exception):
                return pb.SessionResult(session_id=item.session_id, error=_error(outcome))
            return pb.SessionResult(session_id=item.session_id, settled=_settled(outcome))

        ops.append((index, op, to_result))


def _settled(receipt: Record) -> pb.SessionSettled:
    return per_session.settled(receipt).settled


def _batched_finals(batch: pb.MeterWorkerRequest) -> dict[str, bytes]:
    """The final payloads of the batch's finishes that are signed with it (those with no
    signature of their own), by session, in the batch's order."""
    return {f.session_id: usage_signing.payload(
        f.session_id, convert.usage_from_proto(f.finish.usage), final=True)
        for f in batch.finishes if not f.finish.signature}


def _ack(report: pb.SessionUsageReport) -> Callable[[Any], pb.SessionResult]:
    def to_result(outcome: Any) -> pb.SessionResult:
        if isinstance(outcome, Exception):
            return pb.SessionResult(session_id=report.session_id, error=_error(outcome))
        result = pb.SessionResult(session_id=report.session_id, ack=pb.UsageAck(
            seq=report.seq, charged=outcome.charged, remaining=outcome.remaining))
        if outcome.stop_reason:
            result.stop.CopyFrom(_stop(outcome))
        return result

    return to_result


def _foreseen(ses: Record, seq: int, usage: Record, now: int,
              elapsed_ms: int | None) -> pb.StopCommand | None:
    """STOP before the batch is durable, as `Meter` sends it (metering._early_stop): the
    writer's decision, same rule, same `now` and elapsed time, is the one recorded and
    acknowledged."""
    try:
        decision = session.on_usage(ses, seq, usage, now, elapsed_ms)
    except BrokerError:
        return None
    return _stop(decision) if decision.stop_reason else None


async def serve(services: Services, principal: Principal,
                first: pb.MeterWorkerRequest | None,
                requests: AsyncIterator[pb.MeterWorkerRequest], context: Any,
                next_message: Callable[[Any], Awaitable[Any]]
                ) -> AsyncIterator[pb.MeterWorkerResponse]:
    """The MeterWorker call of `principal` (authenticated on the call's metadata): answer
    batch after batch, `first` first. Up to PIPELINE_DEPTH batches are in flight: the
    next batch is read, checked and handed to the writer while the one before waits for
    its commit (so a worker's batches can share group commits); answers go out in
    order, each after its own batch is durable. The STOPs a batch foresees go out as
    soon as it is started."""
    if first is None:
        return
    worker_id = validate.ident(first.worker_id, "worker_id")
    await services.read(lambda tx: get_own_worker(tx, principal, worker_id))
    stream = WorkerStream(services, principal, worker_id)
    in_flight: deque[Answer] = deque()
    batch: pb.MeterWorkerRequest | None = first
    reading: asyncio.Future | None = None
    refused: BaseException | None = None
    ended = False
    try:
        while True:
            if batch is not None:
                # Checked again on every batch: a key revoked while its stream is open
                # must stop metering at once, not when the stream ends.
                try:
                    await services.reauthenticate(principal)
                    # (WorkerStream.start, named so docs/errors.md finds it)
                    answer = await WorkerStream.start(stream, batch)
                except BrokerError as error:  # ends the stream, after the batches before
                    refused, ended = error, True
                else:
                    in_flight.append(answer)
                    if answer.early is not None:
                        yield answer.early
                batch = None
            if not in_flight:
                if refused is not None:
                    raise refused
                # A draining broker ends a stream once none of its sessions is in
                # progress (the worker opens a new one, elsewhere or later), so that it
                # need not wait out its grace period for a stream kept open between jobs.
                if ended or (not stream.active and services.streams.draining.is_set()):
                    return
                batch = await _next_unless_drained(services, stream, reading or
                                                   asyncio.ensure_future(next_message(requests)))
                reading = None
                ended = batch is None
                continue
            if reading is None and not ended and len(in_flight) < PIPELINE_DEPTH:
                reading = asyncio.ensure_future(next_message(requests))
            head = in_flight[0].committed
            waits = [w for w in (head, reading) if w is not None]
            if head is not None:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if head is None or head.done():
                yield await stream.finish(in_flight.popleft())
            elif reading is not None and reading.done():
                read, reading = reading, None
                if read.cancelled() or read.exception() is None:
                    batch = None if read.cancelled() else read.result()
                    ended = batch is None
                else:  # e.g. SHUTTING_DOWN: raised after the answers already due
                    refused, ended = read.exception(), True
    finally:
        if reading is not None and not reading.done():
            reading.cancel()
        for answer in in_flight:  # the stream ended under them: the writer still commits
            if answer.committed is not None:
                answer.committed.add_done_callback(_consume)


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


async def _next_unless_drained(services: Services, stream: WorkerStream,
                               message: asyncio.Future) -> Any:
    if stream.active:
        return await message
    drained = asyncio.ensure_future(services.streams.draining.wait())
    try:
        await asyncio.wait((message, drained), return_when=asyncio.FIRST_COMPLETED)
    finally:
        drained.cancel()
        if not message.done():
            message.cancel()
    return message.result() if not message.cancelled() else None
