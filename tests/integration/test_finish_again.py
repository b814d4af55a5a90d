"""A metering finish answered once is answered the same way again (docs/wire.md, "A
finish answered again"), against a real broker process over real gRPC streams: when
the answer to a worker's finish is lost, its resume, or the same finish sent again, on
`Meter` or `MeterWorker`, gets the settlement the first answer carried, field for
field, and nothing is charged twice; a finish with other usage, and other workers'
keys, are refused as before."""

from __future__ import annotations

import asyncio

import grpc
from nacl.signing import SigningKey

from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import metering_service_pb2 as pb
from broker.v1 import metering_service_pb2_grpc as pb_grpc
from broker.v1 import resources_pb2 as res_pb
from common import usage_signing

from .conftest import aio_channel, bearer, check_error, run
from .spend_helpers import register_signing_worker
from .test_adversarial import other_provider
from .test_meter_worker import RawStream, finish, item_error, report, sign_batch

FAILED_PRECONDITION, NOT_FOUND = (grpc.StatusCode.FAILED_PRECONDITION,
                                  grpc.StatusCode.NOT_FOUND)
SETTLED = auth_pb.AUTHORIZATION_STATE_SETTLED


class Meter:
    """One `Meter` call driven message by message."""

    def __init__(self, ch, api_key: str, usage_key: SigningKey):
        self.call = pb_grpc.MeteringServiceStub(ch).Meter(metadata=bearer(api_key))
        self.key = usage_key
        self.session_id = ""

    async def ask(self, message: pb.MeterRequest) -> pb.MeterResponse:
        await self.call.write(message)
        return await self.call.read()

    async def open(self, voucher: str, worker_id: str) -> pb.SessionGrant:
        answer = await self.ask(pb.MeterRequest(open=pb.OpenSession(voucher=voucher,
                                                                    worker_id=worker_id)))
        self.session_id = answer.grant.session_id
        return answer.grant

    async def resume(self, session_id: str, worker_id: str) -> pb.MeterResponse:
        self.session_id = session_id
        return await self.ask(pb.MeterRequest(resume=pb.ResumeSession(
            session_id=session_id, worker_id=worker_id)))

    async def report(self, seq: int, gpu_ms: int) -> pb.MeterResponse:
        usage = {"gpu_ms": gpu_ms}
        signature = usage_signing.sign(self.key, usage_signing.payload(
            self.session_id, usage, seq=seq))
        return await self.ask(pb.MeterRequest(usage=pb.UsageReport(
            seq=seq, usage=res_pb.Usage(gpu_ms=gpu_ms), signature=signature)))

    def finish_message(self, gpu_ms: int) -> pb.MeterRequest:
        signature = usage_signing.sign(self.key, usage_signing.payload(
            self.session_id, {"gpu_ms": gpu_ms}, final=True))
        return pb.MeterRequest(finish=pb.FinishSession(usage=res_pb.Usage(gpu_ms=gpu_ms),
                                                       signature=signature))


async def refused(call_coro, code: grpc.StatusCode, reason: str) -> None:
    try:
        await call_coro
    except grpc.RpcError as error:
        check_error(error, code, reason)
    else:
        raise AssertionError(f"not refused: expected {reason}")


def test_a_lost_finish_answer_is_given_again_on_meter_and_meter_worker(h):
    """The worker read the settlement (so it is known), then asks again as a worker
    whose answer was lost would: a resume on `Meter`, a resume and the same finish on
    `MeterWorker` (on a new stream, and again on that one). Every time: the first
    SessionSettled, byte for byte; no transfer, no balance moved; the audit clean."""
    worker_id, key = register_signing_worker(h)  # 1 micro-credit per GPU-ms
    auth = h.agent.authorize(500_000)
    api_key = h.creds["worker_api_key"]

    async def first() -> tuple[str, pb.SessionSettled]:
        async with aio_channel(h.target) as ch:
            meter = Meter(ch, api_key, key)
            await meter.open(auth.voucher, worker_id)
            assert (await meter.report(1, 100)).ack.charged == 100
            answer = await meter.ask(meter.finish_message(150))
            assert answer.WhichOneof("kind") == "settled"
            return meter.session_id, answer.settled

    session_id, settled = run(first())
    assert settled.receipt.charged == 150 and settled.receipt.outcome == "FINISHED"
    before = h.snapshot()

    async def again() -> None:
        async with aio_channel(h.target) as ch:
            meter = Meter(ch, api_key, key)
            answer = await meter.resume(session_id, worker_id)
            assert answer.WhichOneof("kind") == "settled" and answer.settled == settled
            assert await meter.call.read() is grpc.aio.EOF  # then the stream ends, OK
            assert await meter.call.code() == grpc.StatusCode.OK
            raw = RawStream(ch, api_key, worker_id, key)
            for _ in range(2):  # a new stream, then the same one again
                answer = await raw.send(finishes=[finish(session_id, 150)])
                assert answer.results[0].settled == settled
            answer = await raw.send(resumes=[session_id])
            assert answer.results[0].settled == settled
            raw.call.cancel()

    run(again())
    assert h.snapshot() == before
    assert h.owner.receipt(auth.authorization_id).receipt_id == settled.receipt.receipt_id
    assert list(h.summary().violations) == []


def test_other_finishes_and_other_workers_are_refused_as_before(h):
    """After the settlement: a finish with other usage (on either stream), one not
    signed by the worker's usage key, and the session's other workers or another
    provider's key get what they got before this change; nothing moves."""
    worker_id, key = register_signing_worker(h)
    sibling, sibling_key = register_signing_worker(h)  # the same provider's other worker
    mallory = other_provider(h)
    auth = h.agent.authorize(500_000)
    api_key = h.creds["worker_api_key"]

    async def go() -> None:
        async with aio_channel(h.target) as ch:
            raw = RawStream(ch, api_key, worker_id, key)
            opened = await raw.send(opens=[pb.WorkerOpen(ref="a", open=pb.OpenSession(
                voucher=auth.voucher))])
            session_id = opened.results[0].session_id
            await raw.send(reports=[report(session_id, 1, 100)])
            settled = (await raw.send(finishes=[finish(session_id, 120)])).results[0].settled
            assert settled.receipt.charged == 120
            before = h.snapshot()

            answer = await raw.send(finishes=[finish(session_id, 121)])
            item_error(answer.results[0], FAILED_PRECONDITION, "SESSION_ALREADY_SETTLED")
            forged = RawStream(ch, api_key, worker_id, SigningKey.generate())
            answer = await forged.send(finishes=[finish(session_id, 120)])
            item_error(answer.results[0], FAILED_PRECONDITION, "SESSION_ALREADY_SETTLED")
            other = RawStream(ch, api_key, sibling, sibling_key)
            for items in ({"finishes": [finish(session_id, 120)]}, {"resumes": [session_id]}):
                answer = await other.send(**items)
                item_error(answer.results[0], NOT_FOUND, "SESSION_NOT_FOUND")
            for call in (raw, forged, other):
                call.call.cancel()
            # `Meter`: another worker's resume; another provider's key.
            for who, as_worker in ((api_key, sibling), (mallory.key, mallory.worker_id)):
                meter = Meter(ch, who, key)
                await refused(meter.resume(session_id, as_worker), NOT_FOUND,
                              "SESSION_NOT_FOUND")
            assert h.snapshot() == before

    run(go())
    assert list(h.summary().violations) == []


def test_a_finish_whose_answer_was_never_read_settles_once(h):
    """The finish is written and the stream dropped at once, its answer unread (it may
    commit before or after the worker is back). The worker resumes: it gets the
    settlement, or (the finish fenced out by the resume) a grant and finishes again.
    Either way one settlement of the finish's usage, the one the agent sees."""
    worker_id, key = register_signing_worker(h)
    auths = [h.agent.authorize(500_000) for _ in range(2)]
    api_key = h.creds["worker_api_key"]

    async def meter_case(auth) -> pb.SessionSettled:
        async with aio_channel(h.target) as ch:
            meter = Meter(ch, api_key, key)
            await meter.open(auth.voucher, worker_id)
            await meter.report(1, 100)
            await meter.call.write(meter.finish_message(170))
            meter.call.cancel()
            again = Meter(ch, api_key, key)
            answer = await again.resume(meter.session_id, worker_id)
            if answer.WhichOneof("kind") == "grant":
                answer = await again.ask(again.finish_message(170))
            return answer.settled

    async def batched_case(auth) -> pb.SessionSettled:
        async with aio_channel(h.target) as ch:
            raw = RawStream(ch, api_key, worker_id, key)
            opened = await raw.send(opens=[pb.WorkerOpen(ref="b", open=pb.OpenSession(
                voucher=auth.voucher))])
            session_id = opened.results[0].session_id
            request = pb.MeterWorkerRequest(worker_id=worker_id, batch_id=9,
                                            finishes=[finish(session_id, 170)])
            request.signature = sign_batch(key, [], request.finishes)
            await raw.call.write(request)
            raw.call.cancel()
            await asyncio.sleep(0)
            other = RawStream(ch, api_key, worker_id, key)
            answer = await other.send(finishes=[finish(session_id, 170)])
            other.call.cancel()
            return answer.results[0].settled

    for auth, case in zip(auths, (meter_case, batched_case), strict=True):
        settled = run(case(auth))
        assert (settled.receipt.charged, settled.receipt.usage.gpu_ms) == (170, 170)
        assert h.wait_for_state(auth.authorization_id, SETTLED).state == SETTLED
        stored = h.owner.receipt(auth.authorization_id)
        assert (stored.receipt_id, stored.charged) == (settled.receipt.receipt_id, 170)
    assert h.wallet().pending == 0
    assert list(h.summary().violations) == []
