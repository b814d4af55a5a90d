"""MeterWorker, the worker-level batched metering stream, against a real broker process:
many sessions per message, one signature per batch, per-session outcomes, sessions
moving between it and `Meter`, and the bad inputs of issue 21."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from nacl.signing import SigningKey

from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import metering_service_pb2 as pb
from broker.v1 import metering_service_pb2_grpc as pb_grpc
from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import resources_pb2 as res_pb
from common import usage_signing
from common.money import USAGE_FIELDS
from worker.broker_link import MeteringSession
from worker.worker_stream import ItemRefused, WorkerStream

from .conftest import (
    aio_channel,
    bearer,
    check_error,
    open_session,
    rid,
    run,
    stream_rpc_error,
)
from .spend_helpers import policy, register_signing_worker


def vouchers(h, n: int, amount: int = 1_000_000) -> list[auth_pb.Authorization]:
    return [h.agent.authorize(amount) for _ in range(n)]


def item_error(result: pb.SessionResult, code: grpc.StatusCode, reason: str) -> None:
    assert result.WhichOneof("kind") == "error", result
    check_error(ItemRefused(result.error), code, reason)


class RawStream:
    """A MeterWorker call driven message by message (for the bad inputs)."""

    def __init__(self, ch, key: str, worker_id: str, usage_key: SigningKey | None):
        self.call = pb_grpc.MeteringServiceStub(ch).MeterWorker(metadata=bearer(key))
        self.worker_id, self.key, self.batch_id = worker_id, usage_key, 0

    async def send(self, *, opens=(), resumes=(), reports=(), finishes=(),
                   signature: bytes | None = None, worker_id: str | None = None,
                   ) -> pb.MeterWorkerResponse:
        self.batch_id += 1
        request = pb.MeterWorkerRequest(
            worker_id=self.worker_id if worker_id is None else worker_id,
            batch_id=self.batch_id, opens=opens, resume_session_ids=resumes, reports=reports,
            finishes=finishes)
        if signature is None and self.key is not None and (reports or finishes):
            signature = sign_batch(self.key, request.reports, request.finishes)
        request.signature = signature or b""
        await self.call.write(request)
        while True:
            response = await self.call.read()
            assert response is not grpc.aio.EOF
            if not response.early:
                assert response.batch_id == self.batch_id
                return response


def sign_batch(key: SigningKey, reports, finishes=()) -> bytes:
    """The batch signature (docs/wire.md): over its reports' payloads, then the final
    payloads of its finishes that have no signature of their own."""
    digests = [usage_signing.digest(usage_signing.payload(
        r.session_id, {"gpu_ms": r.usage.gpu_ms, "calls": r.usage.calls}, seq=r.seq))
        for r in reports]
    digests += [usage_signing.digest(usage_signing.payload(
        f.session_id, {"gpu_ms": f.finish.usage.gpu_ms, "calls": f.finish.usage.calls},
        final=True)) for f in finishes if not f.finish.signature]
    return usage_signing.sign(key, usage_signing.batch_payload(digests))


def finish(session_id: str, gpu_ms: int, signature: bytes = b"") -> pb.SessionFinish:
    return pb.SessionFinish(session_id=session_id, finish=pb.FinishSession(
        usage=res_pb.Usage(gpu_ms=gpu_ms), signature=signature))


def check_proof(key: SigningKey, receipt: res_pb.Receipt, *, batched: bool) -> dict:
    """The receipt's worker usage verifies with the worker's key alone: over the batch
    that lists it (`batched`), or on its own. Returns the signed payload."""
    assert bool(receipt.worker_usage_batch) == batched
    usage_signing.verify_proof(bytes(key.verify_key).hex(), receipt.worker_usage_payload,
                               receipt.worker_usage_signature, receipt.worker_usage_batch)
    return json.loads(receipt.worker_usage_payload)


def report(session_id: str, seq: int, gpu_ms: int) -> pb.SessionUsageReport:
    return pb.SessionUsageReport(session_id=session_id, seq=seq,
                                 usage=res_pb.Usage(gpu_ms=gpu_ms))


def test_batched_sessions_charge_stop_and_settle_like_per_session_streams(h):
    """Eight sessions on one stream: each charged on its own usage, capped at its hold
    and stopped one interval ahead; each settles with a receipt whose signed final usage
    verifies with the worker's key alone, over the batch that carried the finish (signed
    once for all of them), which lists it."""
    worker_id, key = register_signing_worker(h)  # 1 micro-credit per GPU-ms
    auths = vouchers(h, 8, amount=500_000)

    async def go():
        async with aio_channel(h.target) as ch:
            stream = WorkerStream(ch, h.creds["worker_api_key"], worker_id, key)
            sessions = await asyncio.gather(*(stream.open(a.voucher) for a in auths))
            assert stream.batches_sent == 1  # the eight opens went in one message
            acks = await asyncio.gather(*(s.report({"gpu_ms": 10 * (i + 1)})
                                          for i, s in enumerate(sessions)))
            assert stream.batches_sent == 2
            assert [a.charged for a in acks] == [10 * (i + 1) for i in range(8)]
            # The last one would exceed its hold within one interval: STOP, capped.
            big = await sessions[7].report({"gpu_ms": 499_000})
            assert big.charged == 499_000 and sessions[7].stopped.is_set()
            assert sessions[7].stop.reason == pb.STOP_REASON_BUDGET_EXHAUSTED
            assert not any(s.stopped.is_set() for s in sessions[:7])
            receipts = await asyncio.gather(*(s.finish({"gpu_ms": 10 * (i + 1)})
                                              for i, s in enumerate(sessions[:7])))
            last = await sessions[7].finish({"gpu_ms": 600_000})  # above the hold: capped
            await stream.close()
            return receipts, last

    receipts, last = run(go())
    assert [r.charged for r in receipts] == [10 * (i + 1) for i in range(7)]
    assert last.charged == 500_000 and last.outcome == "STOPPED"
    for r in [*receipts, last]:
        assert check_proof(key, r, batched=True)["final"] is True
    assert len({r.worker_usage_batch for r in receipts}) == 1  # one batch: 7 finishes
    for a, r in zip(auths, [*receipts, last], strict=True):
        auth = h.owner.get_authorization(a.authorization_id)
        assert auth.state == auth_pb.AUTHORIZATION_STATE_SETTLED and auth.charged == r.charged


def test_one_bad_report_refuses_that_session_only(h):
    """Out of order, decreasing, another provider's session, after STOP: each refused
    with its own reason, nothing changed for it, its neighbours acknowledged."""
    worker_id, key = register_signing_worker(h)
    auths = vouchers(h, 4)

    async def go():
        async with aio_channel(h.target) as ch:
            raw = RawStream(ch, h.creds["worker_api_key"], worker_id, key)
            opened = await raw.send(opens=[pb.WorkerOpen(ref=f"r{i}", open=pb.OpenSession(
                voucher=a.voucher)) for i, a in enumerate(auths)])
            ids = [r.session_id for r in opened.results]
            assert [r.ref for r in opened.results] == ["r0", "r1", "r2", "r3"]
            assert all(r.WhichOneof("kind") == "grant" for r in opened.results)
            first = await raw.send(reports=[report(s, 1, 100) for s in ids])
            assert [r.ack.charged for r in first.results] == [100] * 4
            mixed = await raw.send(reports=[
                report(ids[0], 3, 200),  # skips seq 2
                report(ids[1], 2, 50),  # goes backwards
                report("ses_" + "0" * 24, 1, 10),  # no such session
                report(ids[3], 2, 300)])  # fine
            item_error(mixed.results[0], grpc.StatusCode.INVALID_ARGUMENT, "USAGE_OUT_OF_ORDER")
            item_error(mixed.results[1], grpc.StatusCode.INVALID_ARGUMENT,
                       "USAGE_NOT_MONOTONIC")
            item_error(mixed.results[2], grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
            assert mixed.results[3].ack.charged == 300
            # Nothing changed for the refused ones: their next good report is seq 2.
            again = await raw.send(reports=[report(ids[0], 2, 200), report(ids[1], 2, 150)])
            assert [r.ack.charged for r in again.results] == [200, 150]
            raw.call.cancel()

    run(go())


def test_forged_or_missing_batch_signature_refuses_every_report(h):
    worker_id, key = register_signing_worker(h)
    auths = vouchers(h, 2)

    async def go():
        async with aio_channel(h.target) as ch:
            raw = RawStream(ch, h.creds["worker_api_key"], worker_id, key)
            opened = await raw.send(opens=[pb.WorkerOpen(ref=str(i), open=pb.OpenSession(
                voucher=a.voucher)) for i, a in enumerate(auths)])
            ids = [r.session_id for r in opened.results]
            reports = [report(s, 1, 100) for s in ids]
            forged = await raw.send(reports=reports, signature=sign_batch(
                SigningKey.generate(), reports))
            missing = await raw.send(reports=reports, signature=b"")
            # Signed by the right key, but over other counters (a report swapped in).
            swapped = await raw.send(reports=[report(ids[0], 1, 900), reports[1]],
                                     signature=sign_batch(key, reports))
            for answer in (forged, missing, swapped):
                for result in answer.results:
                    item_error(result, grpc.StatusCode.PERMISSION_DENIED,
                               "USAGE_SIGNATURE_INVALID")
            good = await raw.send(reports=[report(ids[0], 1, 100), report(ids[1], 1, 200)])
            assert [r.ack.charged for r in good.results] == [100, 200]
            raw.call.cancel()

    run(go())


def test_finishes_are_signed_with_their_batch(h):
    """A finish without a signature of its own is signed with the batch, reports and
    finishes together: a forged, missing or stale batch signature, or a finish changed
    in transit, refuses each item of the batch (nothing settled, the sessions stay
    open); signed right, each settles with a receipt, and a refund of it, whose proof is
    the batch. A finish signed on its own (as on `Meter`) is still checked on its own."""
    worker_id, key = register_signing_worker(h)
    auths = vouchers(h, 4, amount=100_000)

    async def go():
        async with aio_channel(h.target) as ch:
            raw = RawStream(ch, h.creds["worker_api_key"], worker_id, key)
            opened = await raw.send(opens=[pb.WorkerOpen(ref=str(i), open=pb.OpenSession(
                voucher=a.voucher)) for i, a in enumerate(auths)])
            ids = [r.session_id for r in opened.results]
            reports, finishes = [report(ids[0], 1, 100)], [finish(ids[1], 200)]
            bad = [
                await raw.send(reports=reports, finishes=finishes,
                               signature=sign_batch(SigningKey.generate(), reports, finishes)),
                await raw.send(reports=reports, finishes=finishes, signature=b""),
                # Signed over the reports only (the finish left out of the batch bytes).
                await raw.send(reports=reports, finishes=finishes,
                               signature=sign_batch(key, reports)),
                # The finish's usage changed after signing.
                await raw.send(reports=reports, finishes=[finish(ids[1], 20)],
                               signature=sign_batch(key, reports, finishes))]
            for answer in bad:
                assert len(answer.results) == 2
                for result in answer.results:
                    item_error(result, grpc.StatusCode.PERMISSION_DENIED,
                               "USAGE_SIGNATURE_INVALID")
            # Signed right: the report acknowledged, the finishes settled, one of them
            # (the old way) signed on its own.
            own = usage_signing.sign(key, usage_signing.payload(ids[3], {"gpu_ms": 400},
                                                                 final=True))
            good = await raw.send(reports=reports, finishes=[
                *finishes, finish(ids[2], 300), finish(ids[3], 400, own)])
            assert good.results[0].ack.charged == 100
            settled = [r.settled.receipt for r in good.results[1:]]
            assert [r.charged for r in settled] == [200, 300, 400]
            raw.call.cancel()
            return ids, settled

    ids, settled = run(go())
    batch = settled[0].worker_usage_batch
    assert settled[1].worker_usage_batch == batch  # both finishes in the one batch
    assert len(json.loads(batch)["reports"]) == 3  # the report and the two finishes
    for session_id, receipt, auth in zip(ids[1:3], settled[:2], auths[1:3], strict=True):
        stored = h.owner.receipt(auth.authorization_id)  # the worker's usage, as kept
        assert check_proof(key, stored, batched=True) == {
            "final": True, "session_id": session_id,
            "usage": {**dict.fromkeys(USAGE_FIELDS, 0), "gpu_ms": receipt.charged}}
    assert check_proof(key, h.owner.receipt(auths[3].authorization_id), batched=False)[
        "usage"]["gpu_ms"] == 400
    refund = policy(h, h.admin).RefundReceipt(pol_pb.RefundReceiptRequest(
        request_id=rid(), receipt_id=settled[0].receipt_id, amount=50, reason="x")).refund
    assert (refund.worker_usage_payload, refund.worker_usage_signature,
            refund.worker_usage_batch) == (settled[0].worker_usage_payload,
                                           settled[0].worker_usage_signature, batch)
    assert list(h.summary().violations) == []


@pytest.mark.parametrize("case", ["repeated_session", "repeated_ref", "too_many",
                                  "other_worker_id", "too_big_for_grpc"])
def test_malformed_batches_end_the_stream_and_change_nothing(h, case):
    worker_id, key = register_signing_worker(h)
    auth = vouchers(h, 1)[0]
    expected = {"repeated_session": (grpc.StatusCode.INVALID_ARGUMENT,
                                     "SESSION_REPEATED_IN_BATCH"),
                "repeated_ref": (grpc.StatusCode.INVALID_ARGUMENT, "SESSION_REPEATED_IN_BATCH"),
                "too_many": (grpc.StatusCode.INVALID_ARGUMENT, "BATCH_TOO_LARGE"),
                "other_worker_id": (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
                "too_big_for_grpc": (grpc.StatusCode.RESOURCE_EXHAUSTED, None)}[case]

    async def go():
        async with aio_channel(h.target) as ch:
            raw = RawStream(ch, h.creds["worker_api_key"], worker_id, key)
            opened = await raw.send(opens=[pb.WorkerOpen(ref="a", open=pb.OpenSession(
                voucher=auth.voucher))])
            sid = opened.results[0].session_id
            kwargs = {
                "repeated_session": {"reports": [report(sid, 1, 10), report(sid, 2, 20)]},
                "repeated_ref": {"opens": [pb.WorkerOpen(ref="x"), pb.WorkerOpen(ref="x")]},
                "too_many": {"resumes": [sid] + [f"ses_{i:024d}" for i in range(512)]},
                "other_worker_id": {"reports": [report(sid, 1, 10)], "worker_id": "wrk_x"},
                "too_big_for_grpc": {"resumes": [f"s{i:060d}" for i in range(1100)]},
            }[case]
            async with stream_rpc_error(*expected):
                await raw.send(**kwargs)
            # Nothing of it was applied: the session's first report is still seq 1.
            session = await MeteringSession.resume(ch, h.creds["worker_api_key"], sid,
                                                   worker_id, usage_key=key)
            assert session.grant.last_seq == 0 and session.grant.charged == 0
            await session.abandon()

    run(go())


def test_a_session_moves_between_meter_and_meter_worker(h):
    """Opened on MeterWorker, resumed on `Meter`, then back: one sequence of reports."""
    worker_id, key = register_signing_worker(h)
    auth = vouchers(h, 1)[0]

    async def go():
        async with aio_channel(h.target) as ch:
            api_key = h.creds["worker_api_key"]
            stream = WorkerStream(ch, api_key, worker_id, key)
            batched = await stream.open(auth.voucher)
            assert (await batched.report({"gpu_ms": 100})).charged == 100
            await stream.close()
            single = await MeteringSession.resume(ch, api_key, batched.session_id, worker_id,
                                                  usage_key=key)
            assert single.grant.last_seq == 1
            assert (await single.report({"gpu_ms": 250})).charged == 250
            await single.abandon()
            stream = WorkerStream(ch, api_key, worker_id, key)
            back = await stream.resume(batched.session_id)
            assert back.seq == 2 and back.grant.charged == 250
            assert (await back.report({"gpu_ms": 400})).charged == 400
            receipt = await back.finish({"gpu_ms": 400})
            await stream.close()
            # And the other way round: opened on Meter, finished on MeterWorker.
            other = vouchers(h, 1)[0]
            first = await open_session(ch, api_key, other.voucher, worker_id, usage_key=key)
            await first.report({"gpu_ms": 70})
            await first.abandon()
            stream = WorkerStream(ch, api_key, worker_id, key)
            moved = await stream.resume(first.session_id)
            second = await moved.finish({"gpu_ms": 80})
            await stream.close()
            return receipt, second

    receipt, second = run(go())
    assert receipt.charged == 400 and second.charged == 80


def test_another_workers_session_is_not_found(h):
    mine, key = register_signing_worker(h)
    theirs, their_key = register_signing_worker(h)
    auth = vouchers(h, 1)[0]

    async def go():
        async with aio_channel(h.target) as ch:
            api_key = h.creds["worker_api_key"]
            stream = WorkerStream(ch, api_key, theirs, their_key)
            ses = await stream.open(auth.voucher)
            raw = RawStream(ch, api_key, mine, key)
            answer = await raw.send(reports=[report(ses.session_id, 1, 10)],
                                    resumes=[], finishes=[])
            item_error(answer.results[0], grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
            answer = await raw.send(resumes=[ses.session_id])
            item_error(answer.results[0], grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
            raw.call.cancel()
            assert (await ses.report({"gpu_ms": 10})).charged == 10  # untouched
            await stream.close()

    run(go())


def test_last_batched_report_is_kept_with_its_batch(h):
    """A session settled without a finish (hold expiry) keeps the batch proof: the
    receipt's worker usage verifies against the batch bytes, which list its payload."""
    worker_id, key = register_signing_worker(h)
    auth = h.agent.authorize(100_000, ttl_seconds=2)

    async def go():
        async with aio_channel(h.target) as ch:
            stream = WorkerStream(ch, h.creds["worker_api_key"], worker_id, key)
            ses = await stream.open(auth.voucher)
            await ses.report({"gpu_ms": 123})
            await ses.abandon()
            await stream.close()

    run(go())
    settled = h.wait_for_state(auth.authorization_id, auth_pb.AUTHORIZATION_STATE_SETTLED,
                               timeout=20)
    assert settled.state == auth_pb.AUTHORIZATION_STATE_SETTLED
    receipt = h.agent.receipt(auth.authorization_id)
    assert receipt.charged == 123
    assert receipt.worker_usage_batch
    key.verify_key.verify(receipt.worker_usage_batch, receipt.worker_usage_signature)
    assert usage_signing.in_batch(receipt.worker_usage_payload, receipt.worker_usage_batch)
    assert json.loads(receipt.worker_usage_payload)["usage"]["gpu_ms"] == 123


def test_revoked_key_and_unauthenticated_callers(h):
    worker_id, key = register_signing_worker(h)

    async def go():
        async with aio_channel(h.target) as ch:
            raw = RawStream(ch, "not-a-key", worker_id, key)
            async with stream_rpc_error(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID"):
                await raw.send()
            raw = RawStream(ch, h.creds["agent_api_key"], worker_id, key)
            async with stream_rpc_error(grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"):
                await raw.send()
            raw = RawStream(ch, h.creds["worker_api_key"], "wrk_nobody", key)
            async with stream_rpc_error(grpc.StatusCode.NOT_FOUND, "WORKER_NOT_FOUND"):
                await raw.send()

    run(go())


def test_batches_sent_ahead_are_answered_in_order_each_after_its_commit(h):
    """A worker may send batches without waiting for answers (the broker starts the next
    while one waits for its fsync): each is answered, in order, with its own acks; a
    refused batch among them ends the stream only after the answers to those before it,
    and nothing after it is applied."""
    worker_id, key = register_signing_worker(h)
    auths = vouchers(h, 2)

    async def go():
        async with aio_channel(h.target) as ch:
            raw = RawStream(ch, h.creds["worker_api_key"], worker_id, key)
            opened = await raw.send(opens=[pb.WorkerOpen(ref=str(i), open=pb.OpenSession(
                voucher=a.voucher)) for i, a in enumerate(auths)])
            sids = [r.session_id for r in opened.results]
            requests = []
            for seq in range(1, 7):
                reports = [report(s, seq, 10 * seq) for s in sids]
                requests.append(pb.MeterWorkerRequest(
                    worker_id=worker_id if seq != 5 else "wrk_other", batch_id=100 + seq,
                    reports=reports, signature=sign_batch(key, reports)))
            for request in requests:  # all at once, before any answer is read
                await raw.call.write(request)
            answers = []
            async with stream_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"):
                while True:
                    response = await raw.call.read()
                    assert response is not grpc.aio.EOF
                    if not response.early:
                        answers.append(response)
            assert [a.batch_id for a in answers] == [101, 102, 103, 104]
            for seq, answer in enumerate(answers, 1):
                assert [(r.session_id, r.ack.seq, r.ack.charged) for r in answer.results] == \
                    [(s, seq, 10 * seq) for s in sids]
            session = await MeteringSession.resume(ch, h.creds["worker_api_key"], sids[0],
                                                   worker_id, usage_key=key)
            assert session.grant.last_seq == 4 and session.grant.charged == 40
            await session.abandon()

    run(go())
