"""Races against a real broker process: one voucher redeemed from 100 connections at
once, cancel against redeem+finish on one hold, finish (and usage) against the hold's
expiry, and two streams finishing one session. Every race ends in exactly one outcome,
the loser gets a precise status, and the ledger audit stays clean after each."""

import asyncio
import contextlib
import os
import time

import grpc

from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import authorization_service_pb2_grpc as auth_grpc
from broker.v1 import wallet_service_pb2 as wallet_pb
from common.status import error_info
from worker.broker_link import MeteringSession, SessionClosed

from .conftest import (
    REFILL_TARGET,
    TREASURY_START,
    agents_copy,
    bearer,
    check_error,
    open_session,
    rpc_error,
    run,
    stream_error,
)

PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT
ABORTED = grpc.StatusCode.ABORTED
SETTLED = auth_pb.AUTHORIZATION_STATE_SETTLED
CANCELLED = auth_pb.AUTHORIZATION_STATE_CANCELLED
RESOLUTIONS = (wallet_pb.TRANSFER_KIND_POST_PENDING, wallet_pb.TRANSFER_KIND_VOID_PENDING,
               wallet_pb.TRANSFER_KIND_EXPIRE_PENDING)


def own_connection(target: str) -> grpc.aio.Channel:
    """A channel with its own subchannel pool, hence its own TCP connection."""
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def socket_count(pid: int) -> int:
    fds = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"{fds}/{fd}").startswith("socket:")
    return count


def reason_of(error: BaseException) -> str:
    info = error_info(stream_error(error))
    return info.reason if info else ""


def holds_resolved_once(h, expected_holds: int) -> None:
    """Exactly `expected_holds` holds on the demo wallet, each resolved exactly once."""
    transfers = h.owner.transfers(h.wallet_id)
    holds = {t.transfer_id for t in transfers if t.kind == wallet_pb.TRANSFER_KIND_PENDING}
    resolved = [t.pending_id for t in transfers if t.kind in RESOLUTIONS]
    assert len(holds) == expected_holds
    assert sorted(resolved) == sorted(holds), "a hold resolved twice, or not at all"


def no_violations(h) -> None:
    assert list(h.summary().violations) == []


# -- 1. one voucher, 100 connections -----------------------------------------------------

RACERS = 100


def test_hundred_connections_race_to_redeem_one_voucher(h):
    worker_ids = [h.register_worker() for _ in range(4)]
    held = 300_000
    auth = h.agent.authorize(held, ttl_seconds=120)
    key = h.creds["worker_api_key"]
    sockets_before = socket_count(h.broker.proc.pid)

    async def race():
        channels = [own_connection(h.target) for _ in range(RACERS)]
        try:
            await asyncio.gather(*(ch.channel_ready() for ch in channels))
            # Each racer really has its own TCP connection to the broker.
            connected = socket_count(h.broker.proc.pid) - sockets_before
            start = asyncio.Event()

            async def attempt(i: int, ch):
                await start.wait()
                return await open_session(ch, key, auth.voucher, worker_ids[i % 4],
                                          request_id=f"racer-{i}")

            tasks = [asyncio.create_task(attempt(i, ch)) for i, ch in enumerate(channels)]
            await asyncio.sleep(0.05)
            start.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            winners = [r for r in results if isinstance(r, MeteringSession)]
            receipts = [await w.finish({"gpu_ms": 77}) for w in winners]
            return connected, results, winners, receipts
        finally:
            await asyncio.gather(*(ch.close() for ch in channels))

    connected, results, winners, receipts = run(race())
    assert connected >= RACERS, f"only {connected} new connections for {RACERS} racers"
    assert len(winners) == 1, f"{len(winners)} sessions opened for one voucher"
    losers = [r for r in results if not isinstance(r, MeteringSession)]
    assert len(losers) == RACERS - 1
    for error in losers:
        assert isinstance(error, grpc.RpcError), repr(error)
        check_error(error, PRECONDITION, "VOUCHER_ALREADY_REDEEMED")
    receipt = receipts[0]
    assert (receipt.held, receipt.charged, receipt.outcome) == (held, 77, "FINISHED")
    settled = h.owner.get_authorization(auth.authorization_id)
    assert (settled.state, settled.receipt_id) == (SETTLED, receipt.receipt_id)
    assert h.owner.receipt(auth.authorization_id) == agents_copy(receipt, auth)
    holds_resolved_once(h, 1)
    no_violations(h)


# -- 2a. cancel against redeem + finish ------------------------------------------------------

ROUNDS = 30


def test_cancel_races_redeem_and_finish(h):
    """Each round: one cancel and one redeem+finish on the same authorization, fired
    together. A third of the rounds give one side a head start, so that both outcomes
    are seen; the rest are a true race."""
    worker_id = h.register_worker(gpu_second_price=1000)
    worker_key = h.creds["worker_api_key"]
    held = 40_000

    async def scenario():
        cancel_ch, meter_ch, setup_ch = (own_connection(h.target) for _ in range(3))
        agent_stub = auth_grpc.AuthorizationServiceStub(setup_ch)
        cancel_stub = auth_grpc.AuthorizationServiceStub(cancel_ch)
        outcomes = []
        try:
            for i in range(ROUNDS):
                auth = (await agent_stub.Authorize(auth_pb.AuthorizeRequest(
                    request_id=f"auth-{i}", amount=held, ttl_seconds=120),
                    metadata=bearer(h.creds["agent_api_key"]), timeout=10)).authorization
                canceller = h.creds["agent_api_key" if i % 2 else "owner_api_key"]
                cancel_delay, redeem_delay = [(0, 0), (0.15, 0), (0, 0.15)][i % 3]

                async def cancel(auth=auth, canceller=canceller, delay=cancel_delay, i=i):
                    await asyncio.sleep(delay)
                    return await cancel_stub.CancelAuthorization(
                        auth_pb.CancelAuthorizationRequest(
                            request_id=f"cancel-{i}", authorization_id=auth.authorization_id),
                        metadata=bearer(canceller), timeout=10)

                async def redeem_and_finish(auth=auth, delay=redeem_delay, i=i):
                    await asyncio.sleep(delay)
                    session = await open_session(meter_ch, worker_key, auth.voucher, worker_id,
                                                 request_id=f"open-{i}")
                    return await session.finish({"gpu_ms": 100 + i})

                cancelled, settled = await asyncio.gather(cancel(), redeem_and_finish(),
                                                          return_exceptions=True)
                outcomes.append((i, auth, cancelled, settled))
                # The audit after every round, not just at the end.
                no_violations(h)
        finally:
            await asyncio.gather(*(ch.close() for ch in (cancel_ch, meter_ch, setup_ch)))
        return outcomes

    charged_total = 0
    seen = {"cancelled": 0, "settled": 0}
    for i, auth, cancelled, settled in run(scenario()):
        now = h.owner.get_authorization(auth.authorization_id)
        cancel_won = not isinstance(cancelled, BaseException)
        settle_won = not isinstance(settled, BaseException)
        assert cancel_won != settle_won, f"round {i}: {cancelled!r} / {settled!r}"
        if cancel_won:
            seen["cancelled"] += 1
            assert cancelled.authorization.state == CANCELLED
            # The redemption lost: refused at open, so nothing was ever metered.
            check_error(stream_error(settled), PRECONDITION, "AUTHORIZATION_CANCELLED")
            assert (now.state, now.charged, now.receipt_id) == (CANCELLED, 0, "")
            with rpc_error(PRECONDITION, "RECEIPT_NOT_READY"):
                h.owner.receipt(auth.authorization_id)
        else:
            seen["settled"] += 1
            check_error(cancelled, PRECONDITION, "AUTHORIZATION_NOT_CANCELLABLE")
            assert (settled.charged, settled.outcome) == (100 + i, "FINISHED")
            assert (now.state, now.charged, now.receipt_id) == \
                (SETTLED, settled.charged, settled.receipt_id)
            assert h.owner.receipt(auth.authorization_id) == agents_copy(
                settled, auth)
            charged_total += settled.charged
    assert seen["cancelled"] and seen["settled"], seen
    # The money: only the settled rounds were charged, every hold resolved exactly once.
    wallet = h.wallet()
    assert (wallet.posted, wallet.pending) == (REFILL_TARGET, 0)
    assert h.treasury().posted == TREASURY_START - charged_total
    holds_resolved_once(h, ROUNDS)
    no_violations(h)


# -- 2b. finish (and usage) against the hold's expiry ---------------------------------------


def sleep_until(ms: float):
    return asyncio.sleep(max(0.0, ms / 1000 - time.time()))


def test_finish_races_the_hold_expiry(h):
    """Sessions whose finish arrives around the moment the hold times out (ttl 3 s),
    racing the broker's expiry sweep. Each settles exactly once: by the finish in time
    (STOPPED: the first report already brought STOP), by the finish too late (only the
    acknowledged usage counts), or by the sweep (the finish is then refused). The first
    and last offsets are far enough from the boundary (1.5 s before it; 3 s, six sweep
    intervals, after it) for their outcome to be certain on a loaded machine too."""
    worker_id = h.register_worker(gpu_second_price=1000)
    key = h.creds["worker_api_key"]
    held, acked_ms = 250, 100
    offsets_ms = (-1500, -40, -20, -10, -5, 0, 5, 10, 20, 40, 80, 3000)

    async def one(ch, offset_ms: int):
        auth = h.agent.authorize(held, ttl_seconds=3)
        session = await open_session(ch, key, auth.voucher, worker_id)
        ack = await session.report({"gpu_ms": acked_ms})
        assert ack.charged == acked_ms
        await sleep_until(auth.expire_time.ToMilliseconds() + offset_ms)
        try:
            # Far more than the hold: the charge is capped at it.
            return auth, await session.finish({"gpu_ms": 10_000})
        except SessionClosed as closed:
            return auth, closed

    async def scenario():
        async with own_connection(h.target) as ch:
            return await asyncio.gather(*(one(ch, off) for off in offsets_ms))

    outcomes = run(scenario())
    branches = []
    for offset, (auth, result) in zip(offsets_ms, outcomes, strict=True):
        now = h.wait_for_state(auth.authorization_id, SETTLED, timeout=5)
        assert now.state == SETTLED, (offset, now)
        receipt = h.owner.receipt(auth.authorization_id)
        expire_ms = auth.expire_time.ToMilliseconds()
        settle_ms = receipt.settle_time.ToMilliseconds()
        assert receipt.charged <= receipt.held == held
        assert receipt.charged + receipt.released == held
        if isinstance(result, BaseException):
            branches.append("sweep")
            check_error(stream_error(result), PRECONDITION, "SESSION_ALREADY_SETTLED")
        else:
            branches.append("finish")
            assert agents_copy(result, auth) == receipt, offset
        if receipt.outcome == "STOPPED":
            assert not isinstance(result, BaseException)
            assert settle_ms < expire_ms and receipt.charged == held
        else:
            assert receipt.outcome == "HOLD_EXPIRED", (offset, receipt.outcome)
            assert settle_ms >= expire_ms and receipt.charged == acked_ms
    # Far enough from the boundary, the outcome is certain.
    assert branches[0] == "finish" and branches[-1] == "sweep", branches
    holds_resolved_once(h, len(offsets_ms))
    assert h.wallet().pending == 0
    no_violations(h)


def test_usage_reported_after_the_hold_timed_out_is_not_charged(h):
    """A usage report that arrives after the hold's timeout (but before the sweep has
    settled it) must not add to the charge: the session settles on what was
    acknowledged while the hold was alive, as a finish that comes too late does."""
    worker_id = h.register_worker(gpu_second_price=1000)
    key = h.creds["worker_api_key"]
    held = 50_000
    auth = h.agent.authorize(held, ttl_seconds=2)

    async def scenario():
        async with own_connection(h.target) as ch:
            session = await open_session(ch, key, auth.voucher, worker_id)
            # Not at once: the rate seen in the first few milliseconds would mean STOP.
            await asyncio.sleep(0.3)
            first = await session.report({"gpu_ms": 100})
            assert not session.stopped.is_set()
            await sleep_until(auth.expire_time.ToMilliseconds() + 10)
            try:
                late = await session.report({"gpu_ms": 1_500})
            except SessionClosed as closed:
                return first, closed
            return first, late

    first, late = run(scenario())
    assert first.charged == 100
    assert isinstance(late, BaseException), f"a report after the hold timed out was acked: {late}"
    # Refused as expired, or the sweep settled the session first.
    assert reason_of(late) in ("VOUCHER_EXPIRED", "SESSION_ALREADY_SETTLED"), late
    check_error(stream_error(late), PRECONDITION, None)
    assert h.wait_for_state(auth.authorization_id, SETTLED, timeout=5).state == SETTLED
    receipt = h.owner.receipt(auth.authorization_id)
    assert (receipt.outcome, receipt.charged, receipt.usage.gpu_ms) == ("HOLD_EXPIRED", 100, 100)
    no_violations(h)


# -- 2c. two streams on one session -------------------------------------------------------------

PAIRS = 15


def test_two_streams_race_on_one_session(h):
    """The same session resumed on a second stream (another connection, as after a
    broken one, or another broker): that stream takes it over (a new epoch, the fencing
    token), so the first stream's report racing the second's is refused with
    SESSION_RESUMED_ELSEWHERE and charges nothing, whichever reaches the ledger first.
    Resumed once more on the first connection, the second stream is fenced in turn:
    of two racing finishes, the newest stream's settles, once."""
    worker_id = h.register_worker(gpu_second_price=1000)
    key = h.creds["worker_api_key"]
    held = 80_000

    async def one(ch1, ch2, i: int):
        auth = h.agent.authorize(held, ttl_seconds=120)
        first = await open_session(ch1, key, auth.voucher, worker_id)
        await first.report({"gpu_ms": 50})
        second = await MeteringSession.resume(ch2, key, first.session_id, worker_id)
        assert (second.grant.last_seq, second.grant.charged) == (1, 50)
        reports = await asyncio.gather(first.report({"gpu_ms": 60}),
                                       second.report({"gpu_ms": 61}), return_exceptions=True)
        check_error(stream_error(reports[0]), ABORTED, "SESSION_RESUMED_ELSEWHERE")
        assert reports[1].charged == 61, reports
        # The fenced stream was closed by the broker: resume on its connection again,
        # which fences the second stream.
        again = await MeteringSession.resume(ch1, key, first.session_id, worker_id)
        assert (again.grant.last_seq, again.grant.charged) == (2, 61)
        usages = [70 + i, 90 + i]
        finishes = await asyncio.gather(
            second.finish({"gpu_ms": usages[0]}), again.finish({"gpu_ms": usages[1]}),
            return_exceptions=True)
        return auth, usages, finishes

    async def scenario():
        async with own_connection(h.target) as ch1, own_connection(h.target) as ch2:
            results = []
            for i in range(PAIRS):
                results.append(await one(ch1, ch2, i))
                no_violations(h)
            return results

    charged_total = 0
    for auth, usages, finishes in run(scenario()):
        receipts = [(u, f) for u, f in zip(usages, finishes, strict=True)
                    if not isinstance(f, BaseException)]
        errors = [f for f in finishes if isinstance(f, BaseException)]
        assert len(receipts) == 1 and len(errors) == 1, finishes
        check_error(stream_error(errors[0]), ABORTED, "SESSION_RESUMED_ELSEWHERE")
        usage, receipt = receipts[0]
        assert usage == usages[1]  # the newest stream's
        # Settled on the winning finish's usage, once.
        assert (receipt.charged, receipt.usage.gpu_ms, receipt.outcome) == \
            (usage, usage, "FINISHED")
        assert h.owner.receipt(auth.authorization_id) == agents_copy(receipt, auth)
        now = h.owner.get_authorization(auth.authorization_id)
        assert (now.state, now.charged) == (SETTLED, usage)
        charged_total += usage
    assert h.treasury().posted == TREASURY_START - charged_total
    assert h.wallet().pending == 0
    holds_resolved_once(h, PAIRS)
    no_violations(h)


def test_cancel_of_a_redeemed_or_settled_authorization_changes_nothing(h):
    """The losing cancel of the races above, checked on its own: HELD is the only
    state a cancel may leave, and a refused cancel changes nothing."""
    worker_id = h.register_worker()
    auth = h.agent.authorize(10_000, ttl_seconds=120)

    async def scenario():
        async with own_connection(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], auth.voucher,
                                         worker_id)
            before = h.snapshot()
            with rpc_error(PRECONDITION, "AUTHORIZATION_NOT_CANCELLABLE"):
                h.agent.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
                    authorization_id=auth.authorization_id))
            assert h.snapshot() == before
            return await session.finish({"gpu_ms": 5})

    receipt = run(scenario())
    before = h.snapshot()
    with rpc_error(PRECONDITION, "AUTHORIZATION_NOT_CANCELLABLE"):
        h.owner.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
            authorization_id=auth.authorization_id))
    assert h.snapshot() == before
    assert h.owner.receipt(auth.authorization_id) == agents_copy(receipt, auth)
    assert h.owner.get_authorization(auth.authorization_id).state == SETTLED
