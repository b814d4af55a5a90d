"""Bad input: the precise status code and ErrorInfo reason, never INTERNAL/UNKNOWN,
and nothing changed (ledger totals, journal length, wallet and treasury balances)."""

import asyncio
import base64
import json
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from nacl.signing import SigningKey

from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import metering_service_pb2 as meter_pb
from broker.v1 import metering_service_pb2_grpc as meter_grpc
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from common.status import error_detail
from worker.broker_link import MeteringSession

from .conftest import (
    WALLET_CAP,
    WALLET_START,
    aio_channel,
    open_session,
    rid,
    run,
    stream_rpc_error,
    unchanged,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DENIED = grpc.StatusCode.PERMISSION_DENIED

OVERFLOW = 2**62 + 1  # fits int64, above the broker's MAX_AMOUNT
INT64_MAX = 2**63 - 1



# -- amounts ----------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [-1, 0, -(2**63), OVERFLOW, INT64_MAX])
def test_bad_amounts_are_refused(h, amount):
    with unchanged(h, INVALID, "INVALID_AMOUNT"):
        h.agent.authorize(amount)
    with unchanged(h, INVALID, "INVALID_AMOUNT"):
        h.owner.fund(h.wallet_id, amount)
    with unchanged(h, INVALID, "INVALID_AMOUNT"):
        h.admin.admin.CreditTreasury(admin_pb.CreditTreasuryRequest(
            request_id=rid(), owner_id=h.owner_id, amount=amount))
    with unchanged(h, INVALID, "INVALID_AMOUNT"):
        h.owner.wallets.CreateWallet(wallet_pb.CreateWalletRequest(
            request_id=rid(), display_name="w", cap=amount))


def test_amounts_beyond_funds_or_cap(h):
    with unchanged(h, PRECONDITION, "INSUFFICIENT_FUNDS") as refused:
        h.agent.authorize(WALLET_START + 1)
    # AIP-193: a budget limit also says which quota was hit, and by how much.
    quota = error_detail(refused.value, error_details_pb2.QuotaFailure)
    assert quota is not None and len(quota.violations) == 1
    assert f"{WALLET_START + 1} requested, {WALLET_START} available" \
        == quota.violations[0].description
    with unchanged(h, PRECONDITION, "WALLET_CAP_EXCEEDED"):
        h.owner.fund(h.wallet_id, WALLET_CAP - WALLET_START + 1)
    # A fresh wallet with a large cap, funded beyond what the treasury has.
    wallet = h.owner.wallets.CreateWallet(wallet_pb.CreateWalletRequest(
        request_id=rid(), display_name="big", cap=10**12)).wallet
    with unchanged(h, PRECONDITION, "INSUFFICIENT_FUNDS"):
        h.owner.fund(wallet.wallet_id, 10**11)
    assert h.owner.balance(wallet.wallet_id).posted == 0


@pytest.mark.parametrize("ttl", [-1, 86_401, 2**31 - 1])
def test_bad_ttl(h, ttl):
    with unchanged(h, INVALID, "INVALID_ARGUMENT"):
        h.agent.authorize(1_000, ttl_seconds=ttl)


def test_bad_scope_and_request_id(h):
    with unchanged(h, INVALID, "INVALID_PRICE"):
        h.agent.authorize(1_000, scope=res_pb.Scope(
            max_prices=res_pb.PriceSheet(gpu_second_price=-5)))
    with unchanged(h, INVALID, "INVALID_ARGUMENT"):
        h.agent.authorize(1_000, scope=res_pb.Scope(model="m" * 65))
    with unchanged(h, NOT_FOUND, "WORKER_NOT_FOUND"):
        h.agent.authorize(1_000, scope=res_pb.Scope(worker_id="wrk_0000000000000000"))
    with unchanged(h, INVALID, "INVALID_ARGUMENT"):
        h.agent.authorize(1_000, request_id="r" * 65)
    with unchanged(h, INVALID, "INVALID_ARGUMENT"):
        h.agent.authorize(1_000, request_id="tab\there")


# -- unknown or foreign ids ---------------------------------------------------------------


def test_unknown_wallet_and_authorization(h):
    with unchanged(h, NOT_FOUND, "WALLET_NOT_FOUND"):
        h.owner.fund("wal_0000000000000000", 1_000)
    with unchanged(h, NOT_FOUND, "WALLET_NOT_FOUND"):
        h.owner.balance("wal_0000000000000000")
    with unchanged(h, NOT_FOUND, "WALLET_NOT_FOUND"):
        h.owner.wallets.FreezeWallet(wallet_pb.FreezeWalletRequest(
            request_id=rid(), wallet_id="wal_0000000000000000"))
    with unchanged(h, NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
        h.agent.get_authorization("auth_000000000000000000000000")
    with unchanged(h, NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
        h.agent.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
            request_id=rid(), authorization_id="auth_000000000000000000000000"))
    with unchanged(h, NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
        h.agent.receipt("auth_000000000000000000000000")
    with unchanged(h, NOT_FOUND, "OWNER_NOT_FOUND"):
        h.admin.admin.CreditTreasury(admin_pb.CreditTreasuryRequest(
            request_id=rid(), owner_id="own_0000000000000000", amount=1_000))
    with unchanged(h, INVALID, "INVALID_ARGUMENT"):
        h.owner.fund("", 1_000)  # an owner must name the wallet
    with unchanged(h, INVALID, "INVALID_ARGUMENT"):
        h.agent.get_authorization("")


def test_another_tenants_wallet(h):
    other = h.new_tenant()
    auth = h.agent.authorize(10_000, ttl_seconds=120)
    theirs = other.owner.balance(other.wallet_id)
    for call in (
        lambda: other.owner.fund(h.wallet_id, 1_000),
        lambda: other.owner.balance(h.wallet_id),
        lambda: other.owner.wallets.GetWallet(wallet_pb.GetWalletRequest(wallet_id=h.wallet_id)),
        lambda: other.owner.wallets.FreezeWallet(wallet_pb.FreezeWalletRequest(
            request_id=rid(), wallet_id=h.wallet_id)),
        lambda: other.agent.balance(h.wallet_id),
        lambda: other.agent.transfers(h.wallet_id),
        # ...and our side cannot touch theirs either.
        lambda: h.owner.fund(other.wallet_id, 1_000),
        lambda: h.agent.balance(other.wallet_id),
    ):
        with unchanged(h, NOT_FOUND, "WALLET_NOT_FOUND"):
            call()
    for call in (
        lambda: other.owner.get_authorization(auth.authorization_id),
        lambda: other.agent.get_authorization(auth.authorization_id),
        lambda: other.owner.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
            request_id=rid(), authorization_id=auth.authorization_id)),
    ):
        with unchanged(h, NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
            call()
    assert other.owner.balance(other.wallet_id) == theirs
    assert h.owner.get_authorization(auth.authorization_id).state == \
        auth_pb.AUTHORIZATION_STATE_HELD


def test_wrong_role(h):
    with unchanged(h, DENIED, "ROLE_NOT_ALLOWED"):
        h.worker.authorize(1_000)
    with unchanged(h, DENIED, "ROLE_NOT_ALLOWED"):
        h.agent.fund(h.wallet_id, 1_000)
    with unchanged(h, DENIED, "ROLE_NOT_ALLOWED"):
        h.owner.admin.CreditTreasury(admin_pb.CreditTreasuryRequest(
            request_id=rid(), owner_id=h.owner_id, amount=1_000))


# -- vouchers ---------------------------------------------------------------------------


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def redeem(h, voucher: str, worker_id: str, **kwargs):
    async def go():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], voucher, worker_id,
                                         **kwargs)
            await session.abandon()
            return session

    return run(go())


@pytest.fixture
def voucher_case(h):
    worker_id = h.register_worker()
    auth = h.agent.authorize(40_000, ttl_seconds=120)
    return worker_id, auth


def test_forged_voucher(h, voucher_case):
    worker_id, auth = voucher_case
    version, key_id, claims, _ = auth.voucher.split(".")
    head = f"{version}.{key_id}.{claims}"
    forged = f"{head}.{b64e(SigningKey.generate().sign(head.encode()).signature)}"
    with unchanged(h, DENIED, "VOUCHER_INVALID_SIGNATURE"):
        redeem(h, forged, worker_id)
    # A new voucher signed by a stranger's key, for a bigger amount.
    raw = json.loads(b64d(claims))
    raw["amt"] = 4_000_000
    head = f"{version}.{key_id}.{b64e(json.dumps(raw).encode())}"
    forged = f"{head}.{b64e(SigningKey.generate().sign(head.encode()).signature)}"
    with unchanged(h, DENIED, "VOUCHER_INVALID_SIGNATURE"):
        redeem(h, forged, worker_id)
    # Signed with a key id the broker does not know.
    head = f"{version}.kdeadbeefdeadbee.{claims}"
    forged = f"{head}.{b64e(SigningKey.generate().sign(head.encode()).signature)}"
    with unchanged(h, DENIED, "VOUCHER_UNKNOWN_KEY"):
        redeem(h, forged, worker_id)
    # The real voucher still works afterwards.
    assert redeem(h, auth.voucher, worker_id).grant.budget == 40_000


def test_altered_voucher(h, voucher_case):
    worker_id, auth = voucher_case
    version, key_id, claims, signature = auth.voucher.split(".")
    flipped = claims[:10] + ("A" if claims[10] != "A" else "B") + claims[11:]
    with unchanged(h, DENIED, "VOUCHER_INVALID_SIGNATURE"):
        redeem(h, f"{version}.{key_id}.{flipped}.{signature}", worker_id)
    raw = json.loads(b64d(claims))
    raw["amt"] = 4_000_000
    bigger = b64e(json.dumps(raw, separators=(",", ":"), sort_keys=True).encode())
    with unchanged(h, DENIED, "VOUCHER_INVALID_SIGNATURE"):
        redeem(h, f"{version}.{key_id}.{bigger}.{signature}", worker_id)
    # Stray characters in the signature's base64 (which a lenient decoder skips).
    stray = f"{version}.{key_id}.{claims}.{signature[:8]}%%%%{signature[8:]}"
    with unchanged(h, DENIED, "VOUCHER_INVALID_SIGNATURE"):
        redeem(h, stray, worker_id)
    for bad in ("", "garbage", "v1.a.b", "v1.x.y.z.w", "é" * 10, "v1." + "a" * 5000):
        with unchanged(h, INVALID, "VOUCHER_MALFORMED"):
            redeem(h, bad, worker_id)
    with unchanged(h, INVALID, "VOUCHER_VERSION_UNSUPPORTED"):
        redeem(h, "v9" + auth.voucher[2:], worker_id)


def test_replayed_voucher(h, voucher_case):
    worker_id, auth = voucher_case
    first = redeem(h, auth.voucher, worker_id, request_id="first")
    with unchanged(h, PRECONDITION, "VOUCHER_ALREADY_REDEEMED"):
        redeem(h, auth.voucher, worker_id, request_id="second")
    with unchanged(h, PRECONDITION, "VOUCHER_ALREADY_REDEEMED"):
        redeem(h, auth.voucher, worker_id)  # no request_id at all
    # Retrying the *first* open (same request_id) is not a replay: same session.
    assert redeem(h, auth.voucher, worker_id, request_id="first").session_id == \
        first.session_id


def test_expired_voucher(h):
    worker_id = h.register_worker()
    auth = h.agent.authorize(40_000, ttl_seconds=1)
    time.sleep(max(0.0, auth.expire_time.ToMilliseconds() / 1000 - time.time()) + 0.05)
    # Let the sweep release the hold first: that change is expected, the redeem is not.
    h.wait_for_state(auth.authorization_id, auth_pb.AUTHORIZATION_STATE_EXPIRED, timeout=3)
    with unchanged(h, PRECONDITION, "VOUCHER_EXPIRED"):
        redeem(h, auth.voucher, worker_id)


def test_voucher_scope_mismatch(h):
    cheap = h.register_worker(gpu_second_price=500, models=("tiny-lm",))
    dear = h.register_worker(gpu_second_price=5_000, models=("tiny-lm",))
    auth = h.agent.authorize(40_000, ttl_seconds=120, scope=res_pb.Scope(
        model="tiny-lm", resource_class="gpu.h100",
        max_prices=res_pb.PriceSheet(gpu_second_price=1_000)))
    with unchanged(h, DENIED, "PRICE_ABOVE_SCOPE"):
        redeem(h, auth.voucher, dear)
    with unchanged(h, DENIED, "VOUCHER_SCOPE_MISMATCH"):
        redeem(h, auth.voucher, cheap, model="big-lm")
    with unchanged(h, DENIED, "VOUCHER_SCOPE_MISMATCH"):
        redeem(h, auth.voucher, cheap, resource_class="cpu")
    with unchanged(h, NOT_FOUND, "WORKER_NOT_FOUND"):
        redeem(h, auth.voucher, "wrk_0000000000000000")
    assert redeem(h, auth.voucher, cheap, model="tiny-lm").grant.budget == 40_000


# -- metering ----------------------------------------------------------------------------


def session_state(h, session_id: str, worker_id: str):
    async def go():
        async with aio_channel(h.target) as ch:
            session = await MeteringSession.resume(ch, h.creds["worker_api_key"], session_id,
                                                   worker_id)
            await session.abandon()
            return session.grant

    return run(go())


def test_usage_going_backwards(h):
    worker_id = h.register_worker()
    # A hold large enough that the first report, however soon after the open it arrives,
    # does not project the budget's end (which would answer STOP, not the error under test).
    auth = h.agent.authorize(1_000_000, ttl_seconds=120)

    async def go():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], auth.voucher,
                                         worker_id)
            await session.report({"gpu_ms": 100, "calls": 3})
            before = h.snapshot()
            async with stream_rpc_error(INVALID, "USAGE_NOT_MONOTONIC"):
                await session.report({"gpu_ms": 50, "calls": 3})
            return session.session_id, before

    session_id, before = run(go())
    assert h.snapshot() == before
    grant = session_state(h, session_id, worker_id)
    assert (grant.last_seq, grant.charged, grant.usage.gpu_ms) == (1, 100, 100)

    async def finish_lower():
        async with aio_channel(h.target) as ch:
            session = await MeteringSession.resume(ch, h.creds["worker_api_key"], session_id,
                                                   worker_id)
            async with stream_rpc_error(INVALID, "USAGE_NOT_MONOTONIC"):
                await session.finish({"gpu_ms": 100, "calls": 2})

    before = h.snapshot()
    run(finish_lower())
    assert h.snapshot() == before
    assert session_state(h, session_id, worker_id).usage.calls == 3


def test_bad_usage_reports(h):
    worker_id = h.register_worker()
    auth = h.agent.authorize(100_000, ttl_seconds=120)
    key = h.creds["worker_api_key"]

    async def go():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, key, auth.voucher, worker_id)
            await session.report({"gpu_ms": 10})
            session_id = session.session_id
        before = h.snapshot()
        cases = [
            ({"gpu_ms": -1}, 2, "INVALID_USAGE"),
            ({"gpu_ms": 10**17 + 1}, 2, "INVALID_USAGE"),
            ({"gpu_ms": 20}, 5, "USAGE_OUT_OF_ORDER"),
            ({"gpu_ms": 20}, 1, "USAGE_OUT_OF_ORDER"),  # seq 1 again, other usage
        ]
        for counters, seq, reason in cases:
            async with aio_channel(h.target) as ch:
                session = await MeteringSession.resume(ch, key, session_id, worker_id)
                session.seq = seq - 1
                async with stream_rpc_error(INVALID, reason):
                    await session.report(counters)
        return session_id, before

    session_id, before = run(go())
    assert h.snapshot() == before
    grant = session_state(h, session_id, worker_id)
    assert (grant.last_seq, grant.charged) == (1, 10)


def test_usage_after_stop(h):
    worker_id = h.register_worker(gpu_second_price=1000)
    held = 20_000
    auth = h.agent.authorize(held, ttl_seconds=120)
    key = h.creds["worker_api_key"]

    async def go():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, key, auth.voucher, worker_id)
            ack = await session.report({"gpu_ms": 19_500})  # + 1 s at 1000/s > 20_000
            await asyncio.wait_for(session.stopped.wait(), 5)
            before = h.snapshot()
            async with stream_rpc_error(PRECONDITION, "USAGE_AFTER_STOP"):
                await session.report({"gpu_ms": 19_900})
            return session.session_id, ack, before

    session_id, ack, before = run(go())
    assert ack.charged == 19_500
    assert h.snapshot() == before
    grant = session_state(h, session_id, worker_id)
    assert grant.stopped and grant.charged == 19_500 and grant.last_seq == 1

    async def finish():
        async with aio_channel(h.target) as ch:
            session = await MeteringSession.resume(ch, key, session_id, worker_id)
            # After STOP the worker may still finish; the charge is capped at the hold.
            return await session.finish({"gpu_ms": 25_000})

    receipt = run(finish())
    assert receipt.outcome == "STOPPED"
    assert (receipt.charged, receipt.released) == (held, 0)


def test_first_message_must_open_or_resume(h):
    async def go():
        async with aio_channel(h.target) as ch:
            call = meter_grpc.MeteringServiceStub(ch).Meter(
                metadata=(("authorization", f"Bearer {h.creds['worker_api_key']}"),))
            await call.write(meter_pb.MeterRequest(usage=meter_pb.UsageReport(seq=1)))
            async with stream_rpc_error(INVALID, "SESSION_NOT_OPEN"):
                await call.read()
                await call

    before = h.snapshot()
    run(go())
    assert h.snapshot() == before


def test_resume_unknown_session(h):
    worker_id = h.register_worker()
    with unchanged(h, NOT_FOUND, "SESSION_NOT_FOUND"):
        session_state(h, "ses_000000000000000000000000", worker_id)


# -- transport limits and pagination ---------------------------------------------------------


def test_oversized_message(h):
    # Refused by gRPC itself before any handler runs, so there is no ErrorInfo to check;
    # the code must still be RESOURCE_EXHAUSTED, never INTERNAL/UNKNOWN.
    with unchanged(h, grpc.StatusCode.RESOURCE_EXHAUSTED, None):
        h.agent.authorize(1_000, scope=res_pb.Scope(model="m" * (65 * 1024)))
    worker_id = h.register_worker()
    with unchanged(h, grpc.StatusCode.RESOURCE_EXHAUSTED, None):
        redeem(h, "v1." + "a" * (70 * 1024), worker_id)
    # Just under the limit is an ordinary validation error.
    with unchanged(h, INVALID, "INVALID_ARGUMENT"):
        h.agent.authorize(1_000, scope=res_pb.Scope(model="m" * (60 * 1024)))


@pytest.mark.parametrize("token", ["%%%", "not-a-token", "bm90LWEtbnVtYmVy", "A", "😀"])
def test_bad_page_token(h, token):
    with unchanged(h, INVALID, "INVALID_PAGE_TOKEN"):
        h.agent.wallets.ListTransfers(wallet_pb.ListTransfersRequest(page_token=token))
    with unchanged(h, INVALID, "INVALID_PAGE_TOKEN"):
        h.agent.auths.ListAuthorizations(auth_pb.ListAuthorizationsRequest(page_token=token))
    with unchanged(h, INVALID, "INVALID_PAGE_TOKEN"):
        h.owner.wallets.ListWallets(wallet_pb.ListWalletsRequest(page_token=token))


def test_bad_page_size(h):
    for size in (-1, 1001):
        with unchanged(h, INVALID, "INVALID_ARGUMENT"):
            h.agent.wallets.ListTransfers(wallet_pb.ListTransfersRequest(page_size=size))
