"""The whole money path against a real broker process: authorize -> redeem -> usage ->
STOP -> finish -> receipt, with every balance checked to the micro-credit."""

import asyncio
import json
import subprocess
import sys

import grpc
import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from broker.core import ledger
from broker.datadir import DataDir
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import metering_service_pb2 as meter_pb
from broker.v1 import wallet_service_pb2 as wallet_pb

from .broker_process import ROOT
from .conftest import (
    REFILL_TARGET,
    TREASURY_START,
    WALLET_START,
    agents_copy,
    aio_channel,
    balance_tuple,
    check_error,
    open_session,
    rpc_error,
    run,
)


def payout_and_fee_accounts(broker, provider_id: str) -> tuple[dict, dict]:
    """Read the provider's payout account and the platform fee account straight from the
    LMDB files of the stopped broker (the API has no call that reads them)."""
    broker.stop()
    store = DataDir(broker.data_dir).open_store()
    try:
        return store.read(lambda tx: (
            ledger.get_account(tx, "pay_" + provider_id.removeprefix("prv_")),
            ledger.get_account(tx, ledger.FEE_ACCOUNT)))  # its row plus entries not rolled up
    finally:
        store.close()


def audit(broker) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker.cli", "audit", "--data-dir",
                           str(broker.data_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def verify_receipt(h, receipt) -> dict:
    """The signature verifies with the published receipt key, and the signed (outward)
    payload says exactly what the receipt's fields say, and nothing itemised."""
    keys = h.receipt_keys()
    assert receipt.key_id in keys
    VerifyKey(keys[receipt.key_id]).verify(receipt.signed_payload, receipt.signature)
    signed = json.loads(receipt.signed_payload)
    assert signed["receipt_id"] == receipt.receipt_id
    for name in ("held", "charged", "worker_payout", "platform_fee", "released"):
        assert signed[name] == getattr(receipt, name), name
    assert signed["period_start_ms"] == receipt.period_start.ToMilliseconds()
    assert signed["period_end_ms"] == receipt.period_end.ToMilliseconds()
    assert signed["period_start_ms"] <= receipt.settle_time.ToMilliseconds() \
        < signed["period_end_ms"]
    assert set(signed) == {"type", "receipt_id", "held", "charged", "released",
                           "worker_payout", "platform_fee", "period_start_ms", "period_end_ms"}
    # A flipped byte must not verify.
    tampered = receipt.signed_payload.replace(b'"charged":', b'"charged":1')
    with pytest.raises(BadSignatureError):
        VerifyKey(keys[receipt.key_id]).verify(tampered, receipt.signature)
    return signed


def test_stop_before_hold_is_exceeded_then_settle(h):
    worker_id = h.register_worker(gpu_second_price=1000, call_price=0)
    before = h.summary()
    assert list(before.violations) == []
    assert balance_tuple(h.wallet()) == (WALLET_START, 0, WALLET_START)
    assert balance_tuple(h.treasury()) == (TREASURY_START, 0, TREASURY_START)

    held = 50_000
    auth = h.agent.authorize(held, ttl_seconds=120)
    assert auth.state == auth_pb.AUTHORIZATION_STATE_HELD
    assert auth.voucher.startswith("v1.")
    assert balance_tuple(h.agent.balance()) == (WALLET_START, held, WALLET_START - held)
    assert balance_tuple(h.treasury()) == (TREASURY_START, 0, TREASURY_START)

    async def worker():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], auth.voucher,
                                         worker_id, resource_class="gpu.h100",
                                         model="tiny-lm", request_id="open-1")
            assert session.grant.budget == held
            assert session.grant.prices.gpu_second_price == 1000
            assert session.grant.charged == 0 and not session.grant.stopped
            acks = []
            # Small steps: even at the fastest rate the broker could measure, one more
            # interval fits in the hold, so no STOP yet.
            for gpu_ms in (10, 20, 30):
                acks.append(await session.report({"gpu_ms": gpu_ms}))
                assert not session.stopped.is_set()
            # During the run the hold is still pending, nothing is posted.
            mid = h.agent.balance()
            # 49_500 charged + one more second at 1000/s would exceed 50_000: STOP.
            acks.append(await session.report({"gpu_ms": 49_500}))
            await asyncio.wait_for(session.stopped.wait(), 5)
            stop = session.stop
            # The worker obeys and finishes with a little more than it last reported.
            receipt = await session.finish({"gpu_ms": 49_800})
            return acks, stop, mid, receipt

    acks, stop, mid, receipt = run(worker())
    assert [(a.seq, a.charged, a.remaining) for a in acks] == [
        (1, 10, held - 10), (2, 20, held - 20), (3, 30, held - 30), (4, 49_500, 500)]
    assert stop.reason == meter_pb.STOP_REASON_BUDGET_EXHAUSTED
    assert (stop.charged, stop.remaining) == (49_500, 500)
    assert stop.charged < held
    assert balance_tuple(mid) == (WALLET_START, held, WALLET_START - held)

    charged, fee = 49_800, 49_800 * 250 // 10_000  # 1245, rounded down
    payout = charged - fee
    assert (fee, payout) == (1245, 48_555)
    assert receipt.authorization_id == ""  # the worker's copy never names it
    assert receipt.outcome == "STOPPED"
    assert (receipt.held, receipt.charged, receipt.released) == (held, charged, held - charged)
    assert (receipt.worker_payout, receipt.platform_fee) == (payout, fee)
    assert receipt.charged <= receipt.held
    assert receipt.worker_payout + receipt.platform_fee == receipt.charged
    assert receipt.usage.gpu_ms == 49_800
    verify_receipt(h, receipt)

    # The agent (and the owner) can fetch the same receipt.
    assert h.agent.receipt(auth.authorization_id) == agents_copy(receipt, auth)
    assert h.owner.receipt(auth.authorization_id) == agents_copy(receipt, auth)
    settled = h.agent.get_authorization(auth.authorization_id)
    assert settled.state == auth_pb.AUTHORIZATION_STATE_SETTLED
    assert (settled.charged, settled.receipt_id) == (charged, receipt.receipt_id)
    assert settled.voucher == ""  # only Authorize returns the voucher

    # Wallet: charged, then refilled from the treasury up to the refill target.
    assert balance_tuple(h.wallet()) == (REFILL_TARGET, 0, REFILL_TARGET)
    assert balance_tuple(h.treasury()) == (TREASURY_START - charged, 0,
                                           TREASURY_START - charged)

    # Ledger totals: hold + post(charged) + payout + fee + refill(charged).
    after = h.summary()
    assert list(after.violations) == []
    assert after.transfer_count == before.transfer_count + 5
    assert after.debits_pending == after.credits_pending == before.debits_pending
    assert after.debits_posted == after.credits_posted
    assert after.credits_posted - before.credits_posted == charged + payout + fee + charged

    transfers = h.agent.transfers()
    newest = [(t.kind, t.code, t.amount) for t in transfers[:3]]
    assert newest == [(wallet_pb.TRANSFER_KIND_POSTED, "refill", charged),
                      (wallet_pb.TRANSFER_KIND_POST_PENDING, "settlement", charged),
                      (wallet_pb.TRANSFER_KIND_PENDING, "hold", held)]
    assert transfers[1].pending_id == transfers[2].transfer_id

    # The payout and fee accounts hold exactly the split, read from the files on disk.
    payout_account, fee_account = payout_and_fee_accounts(h.broker, h.provider_id)
    assert payout_account["credits_posted"] == payout and payout_account["debits_posted"] == 0
    assert fee_account["credits_posted"] == fee and fee_account["debits_posted"] == 0
    result = audit(h.broker)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ledger OK" in result.stdout


def test_finish_without_stop_charges_part_of_the_hold(h):
    # Prices that make the rounding rule matter:
    # ceil((1234 ms * 1000 + 333 tokens * 3) / 1000) + 2 calls * 7 = 1235 + 14 = 1249.
    worker_id = h.register_worker(gpu_second_price=1000, input_tokens_1k_price=3, call_price=7)
    # Top the wallet up above its refill target, so settlement must not refill it.
    extra = 3_000_000
    h.owner.fund(h.wallet_id, extra)
    start = WALLET_START + extra
    treasury_start = TREASURY_START - extra
    assert balance_tuple(h.wallet()) == (start, 0, start)
    before = h.summary()

    held = 1_000_000
    auth = h.agent.authorize(held, ttl_seconds=120)

    async def worker():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], auth.voucher,
                                         worker_id)
            first = await session.report({"gpu_ms": 10, "calls": 1})
            second = await session.report({"gpu_ms": 20, "input_tokens": 100, "calls": 1})
            receipt = await session.finish({"gpu_ms": 1234, "input_tokens": 333, "calls": 2})
            return first, second, session.stopped.is_set(), receipt

    first, second, stopped, receipt = run(worker())
    assert (first.charged, second.charged) == (10 + 7, 20 + 1 + 7)  # ceil(20_300/1000) = 21
    assert not stopped
    charged = 1249
    fee = charged * 250 // 10_000
    assert fee == 31
    assert receipt.outcome == "FINISHED"
    assert (receipt.held, receipt.charged, receipt.released) == (held, charged, held - charged)
    assert (receipt.worker_payout, receipt.platform_fee) == (charged - fee, fee)
    verify_receipt(h, receipt)

    # No refill: the available balance is still above the refill target.
    assert balance_tuple(h.wallet()) == (start - charged, 0, start - charged)
    assert balance_tuple(h.treasury()) == (treasury_start, 0, treasury_start)
    after = h.summary()
    assert list(after.violations) == []
    assert after.transfer_count == before.transfer_count + 4  # hold, post, payout, fee
    assert after.credits_posted - before.credits_posted == 2 * charged


def test_zero_usage_voids_the_hold(h):
    worker_id = h.register_worker()
    before = h.summary()
    held = 200_000
    auth = h.agent.authorize(held, ttl_seconds=120)

    async def worker():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], auth.voucher,
                                         worker_id)
            return await session.finish({})

    receipt = run(worker())
    assert receipt.outcome == "FINISHED"
    assert (receipt.held, receipt.charged, receipt.released) == (held, 0, held)
    assert (receipt.worker_payout, receipt.platform_fee) == (0, 0)
    verify_receipt(h, receipt)
    assert balance_tuple(h.wallet()) == (WALLET_START, 0, WALLET_START)
    assert balance_tuple(h.treasury()) == (TREASURY_START, 0, TREASURY_START)
    newest = h.agent.transfers()[:2]
    assert [(t.kind, t.amount) for t in newest] == [
        (wallet_pb.TRANSFER_KIND_VOID_PENDING, 0), (wallet_pb.TRANSFER_KIND_PENDING, held)]
    after = h.summary()
    assert list(after.violations) == []
    assert after.transfer_count == before.transfer_count + 2  # hold + void, nothing else
    assert after.credits_posted == before.credits_posted
    assert after.debits_pending == before.debits_pending


def test_cancelled_authorization_cannot_be_redeemed(h):
    worker_id = h.register_worker()
    auth = h.agent.authorize(300_000, ttl_seconds=120)
    cancelled = h.agent.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
        request_id="cancel-1", authorization_id=auth.authorization_id)).authorization
    assert cancelled.state == auth_pb.AUTHORIZATION_STATE_CANCELLED
    assert balance_tuple(h.wallet()) == (WALLET_START, 0, WALLET_START)
    before = h.snapshot()

    async def worker():
        async with aio_channel(h.target) as ch:
            await open_session(ch, h.creds["worker_api_key"], auth.voucher, worker_id)

    with pytest.raises(grpc.RpcError) as caught:
        run(worker())
    check_error(caught.value, grpc.StatusCode.FAILED_PRECONDITION, "AUTHORIZATION_CANCELLED")
    assert h.snapshot() == before


def test_list_transfers_pagination_walks_every_page_once(h):
    # Make an odd number of transfers on the wallet: funding (demo) + 3 x (hold, void).
    for _ in range(3):
        auth = h.agent.authorize(1_000, ttl_seconds=120)
        h.agent.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
            request_id=f"c-{auth.authorization_id}", authorization_id=auth.authorization_id))
    everything = h.agent.transfers(page_size=1000)
    assert len(everything) == 7

    pages, token = [], ""
    while True:
        page = h.agent.wallets.ListTransfers(wallet_pb.ListTransfersRequest(
            page_size=2, page_token=token))
        pages.append(list(page.transfers))
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    walked = [t for p in pages for t in p]
    ids = [t.transfer_id for t in walked]
    assert len(ids) == len(set(ids))
    assert walked == everything
    # Newest first.
    assert walked[-1].code == "wallet_funding"
    # The owner sees the same listing for this wallet.
    assert h.owner.transfers(h.wallet_id, page_size=3) == everything
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"):
        h.agent.wallets.ListTransfers(wallet_pb.ListTransfersRequest(
            page_size=2, page_token="bm90LWEtbnVtYmVy"))  # "not-a-number"


def test_transfer_rows_show_settlement_and_release_with_the_amounts(h):
    """A posted hold shows as "settlement" with what it charged and what it released; a
    voided or expired one as "release" with the whole hold released."""
    worker_id = h.register_worker(gpu_second_price=1000)
    settled = h.agent.authorize(500_000, ttl_seconds=120)

    async def worker():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], settled.voucher,
                                         worker_id)
            return await session.finish({"gpu_ms": 2_000})

    assert run(worker()).charged == 2_000
    voided = h.agent.authorize(300_000, ttl_seconds=120)
    h.agent.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
        request_id=f"c-{voided.authorization_id}", authorization_id=voided.authorization_id))
    expired = h.agent.authorize(100_000, ttl_seconds=1)
    assert h.wait_for_state(expired.authorization_id, auth_pb.AUTHORIZATION_STATE_EXPIRED
                            ).state == auth_pb.AUTHORIZATION_STATE_EXPIRED

    holds = {t.transfer_id: t.amount for t in h.agent.transfers()
             if t.kind == wallet_pb.TRANSFER_KIND_PENDING}
    resolutions = [(t.kind, t.code, t.amount, t.released, holds[t.pending_id])
                   for t in h.agent.transfers() if t.pending_id]
    assert resolutions == [
        (wallet_pb.TRANSFER_KIND_EXPIRE_PENDING, "release", 0, 100_000, 100_000),
        (wallet_pb.TRANSFER_KIND_VOID_PENDING, "release", 0, 300_000, 300_000),
        (wallet_pb.TRANSFER_KIND_POST_PENDING, "settlement", 2_000, 498_000, 500_000)]
    assert list(h.summary().violations) == []
