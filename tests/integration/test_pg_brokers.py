"""Several brokers on one PostgreSQL database, as real processes: what is done through
one broker reaches callers waiting on another within a second (broker B's watch streams
poll only once a minute, `--watch-poll-ms 60000`, so what wakes them in time is the
LISTEN/NOTIFY signal of broker/store/pg_signals.py, not the poll); a request-rate limit
holds across brokers; a metering session resumed on another broker fences off the
stream it left (a stale broker's late write is refused and charges nothing)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import metering_service_pb2 as meter_pb
from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from worker.broker_link import MeteringSession, SessionClosed
from worker.worker_stream import WorkerStream

from .broker_process import BrokerProcess
from .conftest import Client, Harness, aio_channel, check_error, rid, rpc_error, stream_error
from .spend_helpers import policy, register_signing_worker, set_policy, wait_until

Code = grpc.StatusCode
PENDING = auth_pb.AUTHORIZATION_STATE_PENDING_APPROVAL
SOON_S = 1.0  # "within one second"


@dataclass
class Pair:
    a: Harness
    b: Harness

    def on_b(self, client: Client) -> Client:
        """The same key, calling broker B."""
        return Client(self.b.channel, client.key)


@pytest.fixture
def pair(tmp_path: Path, pg_url: str) -> Iterator[Pair]:
    keys = tmp_path / "keys"  # the key directory both brokers mount
    a = BrokerProcess(keys, extra_args=("--store", pg_url))
    a.log_path = tmp_path / "a.log"
    b = BrokerProcess(keys, extra_args=("--store", pg_url, "--watch-poll-ms", "60000"))
    b.log_path = tmp_path / "b.log"
    a.start()
    try:
        b.start()
        with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
            yield Pair(Harness(a, ca), Harness(b, cb))
    finally:
        a.stop()
        b.stop()


def test_an_approval_on_one_broker_reaches_the_agent_watching_on_another(pair: Pair):
    t = pair.a.new_tenant()
    set_policy(pair.a, t.owner, approvals=pol_pb.ApprovalRules(
        threshold=100_000, timeout_seconds=600, reserve_funds=True))
    agent_b = pair.on_b(t.agent)
    auth = agent_b.authorize(250_000, ttl_seconds=120)
    assert (auth.state, auth.voucher) == (PENDING, "")
    seen: list[tuple[float, pol_pb.WatchAuthorizationResponse]] = []

    def watch():
        for message in policy(pair.b, agent_b).WatchAuthorization(
                pol_pb.WatchAuthorizationRequest(authorization_id=auth.authorization_id),
                timeout=30):
            seen.append((time.monotonic(), message))

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_until(lambda: seen, what="the first watch message")
    assert seen[0][1].approval.state == pol_pb.APPROVAL_STATE_PENDING
    time.sleep(0.3)  # the watcher is waiting now, not reading
    policy(pair.a, t.owner).ApproveAuthorization(pol_pb.ApproveAuthorizationRequest(
        request_id=rid(), authorization_id=auth.authorization_id, reason="ok"))
    approved_at = time.monotonic()
    watcher.join(30)
    assert not watcher.is_alive()
    got_at, final = seen[-1]
    assert final.approval.state == pol_pb.APPROVAL_STATE_APPROVED
    assert final.authorization.voucher.startswith("v1.")  # the agent has its voucher
    assert got_at - approved_at < SOON_S, got_at - approved_at


def test_an_alert_raised_through_one_broker_reaches_the_owner_watching_another(pair: Pair):
    t = pair.a.new_tenant()
    set_policy(pair.a, t.owner, alerts=pol_pb.AlertRules(denial_run=2))
    streamed: list[tuple[float, pol_pb.Alert]] = []
    call = policy(pair.b, pair.on_b(t.owner)).WatchAlerts(pol_pb.WatchAlertsRequest(),
                                                          timeout=60)

    def watch():
        try:
            for message in call:
                streamed.extend((time.monotonic(), alert) for alert in message.alerts)
        except grpc.RpcError as error:
            assert error.code() == Code.CANCELLED, error

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.5)  # the stream is open and waiting
    for _ in range(2):  # two denials in a row on broker A: a run
        with rpc_error(Code.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"):
            t.agent.authorize(10**12)
    raised_at = time.monotonic()
    wait_until(lambda: streamed, timeout=10, what="the alert on broker B")
    call.cancel()
    watcher.join(10)
    got_at, alert = streamed[0]
    assert alert.kind == pol_pb.ALERT_KIND_DENIAL_RUN and alert.wallet_id == t.wallet_id
    assert got_at - raised_at < SOON_S, got_at - raised_at


def test_a_request_rate_limit_holds_across_brokers(pair: Pair):
    t = pair.a.new_tenant()
    set_policy(pair.a, t.owner, t.wallet_id,
               rate_limits=pol_pb.RateLimits(requests_per_minute=6, burst=3))
    agent_b = pair.on_b(t.agent)
    t.agent.balance()  # A
    agent_b.balance()  # B
    t.agent.balance()  # A: the burst of 3 is used up, across both
    for client in (agent_b, t.agent):
        with rpc_error(Code.RESOURCE_EXHAUSTED, "RATE_LIMITED"):
            client.balance()
    # Per key: the owner is not limited, and another tenant's agent is not either.
    pair.on_b(t.owner).balance(t.wallet_id)
    other = pair.a.new_tenant()
    pair.on_b(other.agent).balance()


def test_freezing_on_one_broker_stops_a_session_metering_on_another(pair: Pair):
    """The kill switch needs no signal: each usage report's transaction reads it. A
    session reporting on B every 200 ms gets STOP (REVOKED) within a second of the
    freeze through A; new authorizations on B are refused at once, and allowed again
    at once after the unfreeze through A."""
    t = pair.a.new_tenant()
    worker_id, usage_key = register_signing_worker(pair.a)
    auth = pair.on_b(t.agent).authorize(500_000, ttl_seconds=120)
    worker_key = pair.a.creds["worker_api_key"]

    def freeze(frozen: bool) -> float:
        call = t.owner.wallets.FreezeWallet if frozen else t.owner.wallets.UnfreezeWallet
        request = (wallet_pb.FreezeWalletRequest if frozen else
                   wallet_pb.UnfreezeWalletRequest)(request_id=rid(), wallet_id=t.wallet_id)
        call(request)
        return time.monotonic()

    async def meter() -> tuple[float, float, meter_pb.StopCommand]:
        async with aio_channel(pair.b.target) as channel:
            session = await MeteringSession.open(channel, worker_key, auth.voucher,
                                                 worker_id, usage_key=usage_key)
            gpu_ms, frozen_at = 0, None
            while not session.stopped.is_set():
                gpu_ms += 10
                await session.report({"gpu_ms": gpu_ms})
                if gpu_ms == 50:  # the session runs: freeze through A, meanwhile
                    frozen_at = await asyncio.to_thread(freeze, True)
                await asyncio.sleep(0.2)
            stopped_at = time.monotonic()
            assert frozen_at is not None and session.stop is not None
            receipt = await session.finish({"gpu_ms": gpu_ms})
            assert receipt.outcome == "STOPPED" and receipt.charged == gpu_ms
            return frozen_at, stopped_at, session.stop

    frozen_at, stopped_at, stop = asyncio.run(meter())
    assert stop.reason == meter_pb.STOP_REASON_REVOKED
    assert stopped_at - frozen_at < SOON_S, stopped_at - frozen_at
    with rpc_error(Code.FAILED_PRECONDITION, "WALLET_FROZEN"):
        pair.on_b(t.agent).authorize(1000)
    freeze(False)
    assert pair.on_b(t.agent).authorize(1000).voucher.startswith("v1.")
    assert list(pair.b.summary().violations) == []


def test_a_session_resumed_on_another_broker_fences_off_the_stream_it_left(pair: Pair):
    """Open and report on A, resume on B: A's stale stream is fenced off (a new epoch
    on the session), so its late report is refused with SESSION_RESUMED_ELSEWHERE and
    charges nothing; B carries on. The same for a worker's MeterWorker stream on A
    (its batch's report refused, the other sessions' unaffected), and for a late
    finish: the session settles once, on the usage of the stream that holds it."""
    worker_id, usage_key = register_signing_worker(pair.a)
    key = pair.a.creds["worker_api_key"]
    auths = [pair.a.agent.authorize(200_000, ttl_seconds=120) for _ in range(3)]

    async def scenario():
        async with aio_channel(pair.a.target) as ch_a, aio_channel(pair.b.target) as ch_b:
            # A per-session stream (Meter) on A, taken over by B.
            on_a = await MeteringSession.open(ch_a, key, auths[0].voucher, worker_id,
                                              usage_key=usage_key)
            assert (await on_a.report({"gpu_ms": 50})).charged == 50
            on_b = await MeteringSession.resume(ch_b, key, on_a.session_id, worker_id,
                                                usage_key=usage_key)
            assert (on_b.grant.last_seq, on_b.grant.charged) == (1, 50)
            with pytest.raises(SessionClosed) as late:
                await on_a.report({"gpu_ms": 5_000})  # the stale broker's late write
            check_error(stream_error(late.value), Code.ABORTED, "SESSION_RESUMED_ELSEWHERE")
            assert (await on_b.report({"gpu_ms": 60})).charged == 60  # not 5000
            # A worker's MeterWorker stream on A with two sessions; one moves to B.
            stream_a = WorkerStream(ch_a, key, worker_id, usage_key)
            moved = await stream_a.open(auths[1].voucher)
            stays = await stream_a.open(auths[2].voucher)
            await asyncio.gather(moved.report({"gpu_ms": 10}), stays.report({"gpu_ms": 10}))
            taken = await MeteringSession.resume(ch_b, key, moved.session_id, worker_id,
                                                 usage_key=usage_key)
            reports = await asyncio.gather(moved.report({"gpu_ms": 7_000}),
                                           stays.report({"gpu_ms": 20}),
                                           return_exceptions=True)
            check_error(stream_error(reports[0]), Code.ABORTED, "SESSION_RESUMED_ELSEWHERE")
            assert reports[1].charged == 20
            assert (await taken.report({"gpu_ms": 30})).charged == 30
            # A late finish: on_a's connection resumes again (fencing on_b), then on_b's
            # finish is refused and on_a's settles.
            again = await MeteringSession.resume(ch_a, key, on_a.session_id, worker_id,
                                                 usage_key=usage_key)
            with pytest.raises(SessionClosed) as late_finish:
                await on_b.finish({"gpu_ms": 9_000})
            check_error(stream_error(late_finish.value), Code.ABORTED,
                        "SESSION_RESUMED_ELSEWHERE")
            receipts = [await again.finish({"gpu_ms": 80}),
                        await taken.finish({"gpu_ms": 40}),
                        await stays.finish({"gpu_ms": 25})]
            await stream_a.close()
            return receipts

    receipts = asyncio.run(scenario())
    assert [r.charged for r in receipts] == [80, 40, 25]
    for auth, receipt in zip(auths, receipts, strict=True):
        assert pair.b.agent.get_authorization(auth.authorization_id).charged == receipt.charged
    assert pair.a.wallet().pending == 0
    assert list(pair.b.summary().violations) == []
