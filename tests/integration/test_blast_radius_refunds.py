"""Against a real broker: a stolen agent key (with a colluding worker) cannot make its
wallet pay more than the blast radius README.md states; a partial refund lands once,
and a second identical one is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import grpc
import pytest
from nacl.signing import VerifyKey

from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from common.status import error_info

from .conftest import Client, Tenant, balance_tuple, rid, rpc_error
from .spend_helpers import (
    broker_harness,
    charge,
    policy,
    register_signing_worker,
    set_policy,
    spend_status,
)

Code = grpc.StatusCode
CAP = 1_000_000
REFILL_CAP = 250_000


@pytest.fixture(scope="module")
def hm(tmp_path_factory):
    with broker_harness(tmp_path_factory.mktemp("blast-radius")) as h:
        yield h


def utc_day() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def full_wallet_tenant(hm) -> Tenant:
    """A tenant with a rich treasury and a wallet at its cap, refilled up to the cap."""
    t = hm.new_tenant(treasury=50_000_000, wallet_funding=1)
    wallet = t.owner.wallets.CreateWallet(wallet_pb.CreateWalletRequest(
        request_id=rid(), display_name="agent", cap=CAP, refill_target=CAP)).wallet
    t.owner.fund(wallet.wallet_id, CAP)
    key = hm.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AGENT, owner_id=t.owner_id,
        wallet_id=wallet.wallet_id)).api_key
    return Tenant(t.owner_id, wallet.wallet_id, t.owner, Client(hm.channel, key))


@pytest.mark.parametrize("daily_limit", [0, 600_000])
def test_a_stolen_agent_key_cannot_spend_beyond_the_blast_radius(hm, daily_limit):
    t = full_wallet_tenant(hm)
    set_policy(hm, t.owner, t.wallet_id, refills=pol_pb.RefillRules(daily_cap=REFILL_CAP),
               limits=pol_pb.SpendLimits(daily=daily_limit))
    # README.md: B = P + min(A + min(R - r, T), D - s_day, ...) for today.
    stated = spend_status(hm, t.agent).blast_radius_today
    expected = min(CAP + REFILL_CAP, daily_limit or CAP + REFILL_CAP)
    assert stated == expected
    day = utc_day()
    worker_id, usage_key = register_signing_worker(hm)  # the thief's accomplice
    stolen, spent, refusal = t.agent, 0, None
    while refusal is None:
        amount = max(1, stolen.balance().available)
        try:
            auth = stolen.authorize(amount, ttl_seconds=60)
        except grpc.RpcError as error:
            info = error_info(error)
            room = int(info.metadata["limit_amount"]) - int(info.metadata["spent"]) \
                if info.reason == "SPEND_LIMIT_EXCEEDED" else 0
            if not 0 < room < amount:
                refusal = error
                break
            amount = room  # the thief asks for what the limit leaves
            auth = stolen.authorize(amount, ttl_seconds=60)
        spent += charge(hm, worker_id, auth.voucher, amount, usage_key).charged
        # Try harder: more holds than the wallet has, or than the limit leaves.
        for greedy in (amount + 1, CAP * 10):
            with pytest.raises(grpc.RpcError):
                stolen.authorize(greedy, ttl_seconds=60)
    assert spent <= stated
    if utc_day() == day:  # (at midnight UTC a new day's refills would be allowed)
        assert spent == stated
    reason = "SPEND_LIMIT_EXCEEDED" if daily_limit else "INSUFFICIENT_FUNDS"
    with rpc_error(refusal.code(), reason):
        raise refusal
    # The treasury still had plenty: the settings bounded the loss, not the money.
    assert t.owner.balance("").available > 40_000_000
    status = spend_status(hm, t.owner, t.wallet_id)
    assert status.refilled_today <= REFILL_CAP
    assert list(hm.summary().violations) == []


def test_a_partial_refund_lands_once(hm):
    t = hm.new_tenant()
    worker_id, usage_key = register_signing_worker(hm)
    auth = t.agent.authorize(100_000, ttl_seconds=60)
    receipt = charge(hm, worker_id, auth.voucher, 80_000, usage_key)
    assert receipt.charged == 80_000
    dispute = policy(hm, t.owner).DisputeReceipt(pol_pb.DisputeReceiptRequest(
        request_id=rid(), receipt_id=receipt.receipt_id, reason="the job failed")).dispute
    assert dispute.state == pol_pb.DISPUTE_STATE_OPEN
    with rpc_error(Code.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"):  # owners dispute, admins refund
        policy(hm, t.owner).RefundReceipt(pol_pb.RefundReceiptRequest(
            request_id=rid(), receipt_id=receipt.receipt_id, amount=30_000, reason="x"))

    def refund(amount: int, request_id: str):
        return policy(hm, hm.admin).RefundReceipt(pol_pb.RefundReceiptRequest(
            request_id=request_id, receipt_id=receipt.receipt_id, amount=amount,
            reason="worker fault")).refund

    before = balance_tuple(t.owner.balance(t.wallet_id))
    request_id = rid()
    first = refund(30_000, request_id)
    after = balance_tuple(t.owner.balance(t.wallet_id))
    assert after == (before[0] + 30_000, before[1], before[2] + 30_000)
    assert (first.amount, first.provider_refund + first.fee_refund) == (30_000, 30_000)
    assert first.fee_refund == 30_000 * receipt.platform_fee // receipt.charged
    assert (first.receipt_id, first.authorization_id, first.dispute_id) == \
        (receipt.receipt_id, auth.authorization_id, dispute.dispute_id)
    # Linked to the worker's signed usage, and signed by the broker.
    assert (first.worker_usage_payload, first.worker_usage_signature,
            first.worker_usage_batch) == (receipt.worker_usage_payload,
                                          receipt.worker_usage_signature, b"")
    usage_key.verify_key.verify(first.worker_usage_payload, first.worker_usage_signature)
    VerifyKey(hm.receipt_keys()[first.key_id]).verify(first.signed_payload, first.signature)
    assert json.loads(first.signed_payload)["amount"] == 30_000
    # A retry (same request_id) answers with the same refund; nothing moves again.
    assert refund(30_000, request_id) == first
    assert balance_tuple(t.owner.balance(t.wallet_id)) == after
    # A second identical refund (a new request) is refused, and changes nothing.
    summary = hm.summary()
    with rpc_error(Code.FAILED_PRECONDITION, "REFUND_DUPLICATE"):
        refund(30_000, rid())
    with rpc_error(Code.FAILED_PRECONDITION, "REFUND_EXCEEDS_CHARGE"):
        refund(50_001, rid())
    assert (hm.summary(), balance_tuple(t.owner.balance(t.wallet_id))) == (summary, after)
    refund(50_000, rid())  # the rest: never more than charged in all
    disputes = policy(hm, t.owner).ListDisputes(pol_pb.ListDisputesRequest()).disputes
    assert [(d.dispute_id, d.state, d.refunded) for d in disputes] == \
        [(dispute.dispute_id, pol_pb.DISPUTE_STATE_REFUNDED, 80_000)]
    with rpc_error(Code.FAILED_PRECONDITION, "DISPUTE_ALREADY_OPEN"):
        policy(hm, t.owner).DisputeReceipt(pol_pb.DisputeReceiptRequest(
            request_id=rid(), receipt_id=receipt.receipt_id, reason="again"))
    other = hm.new_tenant()
    with rpc_error(Code.NOT_FOUND, "RECEIPT_NOT_FOUND"):
        policy(hm, other.owner).DisputeReceipt(pol_pb.DisputeReceiptRequest(
            request_id=rid(), receipt_id=receipt.receipt_id, reason="not mine"))
    assert t.agent.get_authorization(auth.authorization_id).state == \
        auth_pb.AUTHORIZATION_STATE_SETTLED
    assert list(hm.summary().violations) == []
