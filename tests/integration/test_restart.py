"""Acknowledged changes survive SIGKILL; holds that time out while the broker is down
are resolved when it starts; abandoned sessions settle on the last acknowledged usage."""

import asyncio
import time

import grpc
import pytest

from broker.v1 import authorization_service_pb2 as auth_pb
from worker.broker_link import AlreadySettled, MeteringSession

from .conftest import (
    REFILL_TARGET,
    TREASURY_START,
    WALLET_START,
    aio_channel,
    balance_tuple,
    check_error,
    open_session,
    run,
)


def wait_past(expire_time, margin_s: float = 0.1) -> None:
    """Sleep until the wall clock is past a proto Timestamp."""
    delay = expire_time.ToMilliseconds() / 1000 - time.time() + margin_s
    if delay > 0:
        time.sleep(delay)


def test_authorizations_and_fundings_survive_sigkill(h):
    auth = h.agent.authorize(400_000, ttl_seconds=600)
    funded = h.owner.fund(h.wallet_id, 1_500_000)
    summary = h.summary()
    h.broker.kill()
    h.broker.start()

    again = h.owner.get_authorization(auth.authorization_id)
    assert again.state == auth_pb.AUTHORIZATION_STATE_HELD
    assert again.amount == 400_000
    posted = WALLET_START + 1_500_000
    assert balance_tuple(h.wallet()) == (posted, 400_000, posted - 400_000)
    treasury = TREASURY_START - 1_500_000
    assert balance_tuple(h.treasury()) == (treasury, 0, treasury)
    assert balance_tuple(funded.wallet_balance) == (posted, 400_000, posted - 400_000)
    after = h.summary()
    assert after == summary
    assert list(after.violations) == []
    # The voucher issued before the crash is still good after it.
    worker_id = h.register_worker()

    async def redeem():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], auth.voucher,
                                         worker_id)
            return await session.finish({"gpu_ms": 5})

    receipt = run(redeem())
    assert (receipt.charged, receipt.released) == (5, 400_000 - 5)


def test_hold_that_expires_while_down_is_released_at_start(h):
    auth = h.agent.authorize(700_000, ttl_seconds=1)
    assert balance_tuple(h.wallet()) == (WALLET_START, 700_000, WALLET_START - 700_000)
    h.broker.kill()
    wait_past(auth.expire_time)
    h.broker.start()
    # Checked at once: the start-up sweep ran before the broker began serving.
    assert balance_tuple(h.wallet()) == (WALLET_START, 0, WALLET_START)
    assert h.owner.get_authorization(auth.authorization_id).state == \
        auth_pb.AUTHORIZATION_STATE_EXPIRED
    assert "resolved 1 holds that timed out" in h.broker.log()
    assert list(h.summary().violations) == []


def test_hold_expires_on_a_running_broker(h):
    auth = h.agent.authorize(700_000, ttl_seconds=1)
    wait_past(auth.expire_time)
    expired = h.wait_for_state(auth.authorization_id, auth_pb.AUTHORIZATION_STATE_EXPIRED,
                               timeout=3)
    assert expired.state == auth_pb.AUTHORIZATION_STATE_EXPIRED
    assert balance_tuple(h.wallet()) == (WALLET_START, 0, WALLET_START)


def test_usage_acks_survive_sigkill_and_the_session_resumes(h):
    worker_id = h.register_worker(gpu_second_price=1000)
    held = 100_000
    auth = h.agent.authorize(held, ttl_seconds=600)
    key = h.creds["worker_api_key"]

    async def before_crash():
        ch = grpc.aio.insecure_channel(h.target)
        session = await open_session(ch, key, auth.voucher, worker_id)
        acks = [await session.report({"gpu_ms": ms, "calls": 1}) for ms in (10, 25, 40)]
        return ch, session, acks

    async def scenario():
        ch, session, acks = await before_crash()
        # The broker dies with the stream open: no finish, no goodbye.
        await asyncio.to_thread(h.broker.kill)
        await session.abandon()
        await ch.close()
        await asyncio.to_thread(h.broker.start)
        async with aio_channel(h.target) as ch2:
            resumed = await MeteringSession.resume(ch2, key, session.session_id, worker_id)
            grant = resumed.grant
            ack = await resumed.report({"gpu_ms": 60, "calls": 1})
            receipt = await resumed.finish({"gpu_ms": 70, "calls": 1})
        return session.session_id, acks, grant, ack, receipt

    session_id, acks, grant, ack, receipt = run(scenario())
    assert [a.charged for a in acks] == [10, 25, 40]
    assert grant.session_id == session_id
    assert (grant.last_seq, grant.charged, grant.budget) == (3, 40, held)
    assert (grant.usage.gpu_ms, grant.usage.calls) == (40, 1)
    assert not grant.stopped
    assert (ack.seq, ack.charged) == (4, 60)
    assert receipt.outcome == "FINISHED"
    assert (receipt.charged, receipt.released) == (70, held - 70)
    # Settled once: charged 70, then refilled to the target.
    assert balance_tuple(h.wallet()) == (REFILL_TARGET, 0, REFILL_TARGET)
    assert balance_tuple(h.treasury()) == (TREASURY_START - 70, 0, TREASURY_START - 70)
    assert list(h.summary().violations) == []


def test_resume_after_a_dropped_stream(h):
    worker_id = h.register_worker()
    auth = h.agent.authorize(100_000, ttl_seconds=600)
    key = h.creds["worker_api_key"]

    async def scenario():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, key, auth.voucher, worker_id)
            await session.report({"gpu_ms": 7})
            await session.abandon()
        async with aio_channel(h.target) as ch:
            # Another worker id of the same provider may not take the session over.
            other = h.register_worker()
            try:
                await MeteringSession.resume(ch, key, session.session_id, other)
            except grpc.RpcError as error:
                check_error(error, grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
            else:
                raise AssertionError("resume by another worker succeeded")
            resumed = await MeteringSession.resume(ch, key, session.session_id, worker_id)
            # A retransmission of the last report gets the same answer.
            resumed.seq = 0
            repeat = await resumed.report({"gpu_ms": 7})
            receipt = await resumed.finish({"gpu_ms": 9})
        return resumed.grant, repeat, receipt

    grant, repeat, receipt = run(scenario())
    assert (grant.last_seq, grant.charged, grant.usage.gpu_ms) == (1, 7, 7)
    assert (repeat.seq, repeat.charged) == (1, 7)
    assert receipt.charged == 9


def _abandon_after_usage(h, worker_id: str, voucher: str):
    async def scenario():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], voucher, worker_id)
            acks = [await session.report({"gpu_ms": ms}) for ms in (30, 80)]
            await session.abandon()  # the worker vanishes without finishing
        return acks

    return run(scenario())


def test_abandoned_session_settles_on_last_ack_when_hold_times_out(h):
    worker_id = h.register_worker(gpu_second_price=1000)
    held = 60_000
    auth = h.agent.authorize(held, ttl_seconds=2)
    acks = _abandon_after_usage(h, worker_id, auth.voucher)
    last = acks[-1]
    assert last.charged == 80
    wait_past(auth.expire_time)
    settled = h.wait_for_state(auth.authorization_id, auth_pb.AUTHORIZATION_STATE_SETTLED,
                               timeout=3)
    assert settled.state == auth_pb.AUTHORIZATION_STATE_SETTLED
    receipt = h.agent.receipt(auth.authorization_id)
    assert receipt.outcome == "HOLD_EXPIRED"
    assert receipt.charged == last.charged
    assert receipt.released == held - last.charged
    assert receipt.usage.gpu_ms == 80
    assert balance_tuple(h.wallet()) == (REFILL_TARGET, 0, REFILL_TARGET)
    assert balance_tuple(h.treasury()) == (TREASURY_START - 80, 0, TREASURY_START - 80)
    assert list(h.summary().violations) == []


def test_abandoned_session_whose_hold_times_out_while_down_settles_at_start(h):
    worker_id = h.register_worker(gpu_second_price=1000)
    held = 60_000
    auth = h.agent.authorize(held, ttl_seconds=2)
    acks = _abandon_after_usage(h, worker_id, auth.voucher)
    h.broker.kill()
    wait_past(auth.expire_time)
    h.broker.start()
    auth_now = h.owner.get_authorization(auth.authorization_id)
    assert auth_now.state == auth_pb.AUTHORIZATION_STATE_SETTLED
    receipt = h.owner.receipt(auth.authorization_id)
    assert receipt.outcome == "HOLD_EXPIRED"
    assert receipt.charged == acks[-1].charged == 80
    assert balance_tuple(h.wallet()) == (REFILL_TARGET, 0, REFILL_TARGET)
    assert list(h.summary().violations) == []

    # A worker that comes back late cannot finish (or charge more): its resume is
    # answered with the settlement the broker made, which is all it gets.
    async def late_resume():
        async with aio_channel(h.target) as ch:
            await MeteringSession.resume(ch, h.creds["worker_api_key"], receipt.session_id,
                                         worker_id)

    with pytest.raises(AlreadySettled) as caught:
        run(late_resume())
    copy = caught.value.settled.receipt
    assert (copy.receipt_id, copy.outcome, copy.charged, copy.usage.gpu_ms) == (
        receipt.receipt_id, "HOLD_EXPIRED", 80, 80)
    assert copy.authorization_id == ""  # the worker's copy, as a finish would have got
    assert balance_tuple(h.wallet()) == (REFILL_TARGET, 0, REFILL_TARGET)
