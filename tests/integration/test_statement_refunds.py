"""Against a real broker: statements reconcile with the money that moved after a refund.
Jobs of a wallet and of a sub-budget below it settle; the broker's clock steps two hours
ahead (--clock-offset-file) and an admin refunds part of each. The owner's statement
shows charged and refunded (rolled up to the parent), counted in the hour the refund was
made in and not in the hour of the charge; the provider's payout statement shows the
payout taken back and the fee's share, summing to the refunds; the console's CSV has
them too; the refund transfers into the wallet add up to the statement's refunded."""

from __future__ import annotations

import csv
import io
import json

import pytest
from nacl.signing import VerifyKey

from broker.console import views
from broker.console.broker_calls import ConsoleClient
from broker.v1 import delegation_service_pb2 as dlg_pb
from broker.v1 import delegation_service_pb2_grpc as dlg_grpc
from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import statement_service_pb2 as st_pb
from common import convert

from .conftest import Client, _Bound, bearer, rid
from .spend_helpers import broker_harness, charge, policy, register_signing_worker

HOUR_MS = 3_600_000
STEP_MS = 2 * HOUR_MS
HOUR = st_pb.STATEMENT_GRANULARITY_HOUR


@pytest.fixture(scope="module")
def hs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("statement-refunds")
    step = directory / "clock-step-ms"
    step.write_text("0")
    with broker_harness(directory, "--clock-offset-file", str(step)) as h:
        yield h, step


def statement(client: Client, start: int, end: int) -> st_pb.Statement:
    return client.statements.GetStatement(st_pb.GetStatementRequest(
        period_start=convert.timestamp(start), period_end=convert.timestamp(end),
        granularity=HOUR)).statement


def payouts(client: Client, start: int, end: int) -> st_pb.PayoutStatement:
    return client.statements.GetPayoutStatement(st_pb.GetPayoutStatementRequest(
        period_start=convert.timestamp(start), period_end=convert.timestamp(end),
        granularity=HOUR)).statement


def test_statements_show_refunds_in_the_period_they_were_made_in(hs):
    h, step = hs
    t = h.new_tenant()
    worker_id, usage_key = register_signing_worker(h)  # the charge is the GPU-ms
    made = _Bound(dlg_grpc.DelegationServiceStub(h.channel), bearer(t.agent.key)) \
        .CreateSubBudget(dlg_pb.CreateSubBudgetRequest(request_id=rid(), display_name="child",
                                                       cap=200_000))
    child, child_wallet = Client(h.channel, made.api_key), made.wallet.wallet_id
    scope = res_pb.Scope(model="tiny-lm")
    root_receipt = charge(h, worker_id, t.agent.authorize(100_000, scope=scope).voucher,
                          80_000, usage_key)
    child_receipt = charge(h, worker_id, child.authorize(50_000, scope=scope).voucher,
                           20_000, usage_key)
    charged_hours = {r.period_start.ToMilliseconds() for r in (root_receipt, child_receipt)}
    first = min(charged_hours)

    step.write_text(str(STEP_MS))  # two hours later, the refunds
    admin = policy(h, h.admin)
    refunds = [admin.RefundReceipt(pol_pb.RefundReceiptRequest(
        request_id=rid(), receipt_id=r.receipt_id, amount=amount, reason="worker fault"))
        .refund for r, amount in ((root_receipt, 30_000), (child_receipt, 5_000))]
    refund_hours = {r.refund_time.ToMilliseconds() // HOUR_MS * HOUR_MS for r in refunds}
    assert min(refund_hours) >= max(charged_hours) + HOUR_MS  # no hour holds both
    last = max(refund_hours) + HOUR_MS

    # The whole range: charged, refunded and what it cost, per wallet with the roll-up.
    whole = statement(t.owner, first, last)
    assert (whole.total_charged, whole.total_refunded, whole.job_count) == \
        (100_000, 35_000, 2)
    lines = {w.wallet_id: w for w in whole.wallets}
    assert set(lines) == {t.wallet_id, child_wallet}
    root, sub = lines[t.wallet_id], lines[child_wallet]
    assert (root.charged, root.refunded, root.rollup_charged, root.rollup_refunded) == \
        (80_000, 30_000, 100_000, 35_000)
    assert (sub.charged, sub.refunded, sub.rollup_refunded, sub.parent_wallet_id) == \
        (20_000, 5_000, 5_000, t.wallet_id)
    assert sum(m.refunded for m in whole.payment_models) == 35_000
    assert whole.total_charged - whole.total_refunded == 65_000
    VerifyKey(h.receipt_keys()[whole.key_id]).verify(whole.signed_payload, whole.signature)
    signed = json.loads(whole.signed_payload)
    assert signed["total_refunded"] == 35_000
    assert {w["wallet_id"]: w["rollup_refunded"] for w in signed["wallets"]} == {
        t.wallet_id: 35_000, child_wallet: 5_000}
    raw = whole.SerializeToString()
    for r in refunds:  # totals only: no refund or receipt named
        assert r.refund_id.encode() not in raw and r.receipt_id.encode() not in raw

    # The hours of the charges show no refund; the hours of the refunds no charge.
    charged_only = statement(t.owner, first, max(charged_hours) + HOUR_MS)
    assert (charged_only.total_charged, charged_only.total_refunded) == (100_000, 0)
    assert all(w.refunded == 0 and w.rollup_refunded == 0 for w in charged_only.wallets)
    refunded_only = statement(t.owner, min(refund_hours), last)
    assert (refunded_only.total_charged, refunded_only.job_count,
            refunded_only.total_refunded) == (0, 0, 35_000)
    assert {w.wallet_id: (w.charged, w.job_count, w.refunded, w.rollup_refunded)
            for w in refunded_only.wallets} == {t.wallet_id: (0, 0, 30_000, 35_000),
                                                 child_wallet: (0, 0, 5_000, 5_000)}

    # The money that moved: the refund transfers into the wallet (not at its cap) add up
    # to what the statement says was refunded.
    moved = [tr for tr in t.owner.transfers(t.wallet_id)
             if tr.code in ("refund", "fee_refund") and tr.credit_account_id == t.wallet_id]
    assert sum(tr.amount for tr in moved) == whole.total_refunded

    # The provider's payout statement: the payout taken back and the fee's share.
    worker = Client(h.channel, h.creds["worker_api_key"])
    paid = payouts(worker, first, last)
    assert (paid.total_refunded_payout, paid.total_refunded_fee) == (
        sum(r.provider_refund for r in refunds), sum(r.fee_refund for r in refunds))
    assert paid.total_refunded_payout + paid.total_refunded_fee == 35_000
    assert paid.total_refunded_fee == sum(  # the fee's share of each (one refund each)
        r.amount * receipt.platform_fee // receipt.charged
        for r, receipt in zip(refunds, (root_receipt, child_receipt), strict=True))
    assert paid.total_payout == root_receipt.worker_payout + child_receipt.worker_payout
    by_hour = {p.period_start.ToMilliseconds(): p for p in paid.periods}
    assert set(by_hour) == charged_hours | refund_hours
    for hour in charged_hours - refund_hours:
        assert (by_hour[hour].refunded_payout, by_hour[hour].refunded_fee) == (0, 0)
    for hour in refund_hours:
        assert (by_hour[hour].job_count, by_hour[hour].payout) == (0, 0)
    assert payouts(worker, first, max(charged_hours) + HOUR_MS).total_refunded_payout == 0
    assert json.loads(paid.signed_payload)["total_refunded_payout"] == \
        paid.total_refunded_payout
    assert t.owner_id.encode() not in paid.SerializeToString()

    # The console's statement CSV, as its page asks for it.
    rows = views.statement_rows(ConsoleClient(h.channel, t.owner.key), first, last, "hour")
    table = list(csv.DictReader(io.StringIO(views.to_csv(rows))))
    (total,) = [r for r in table if r["kind"] == "range_total"]
    assert (int(total["charged"]), int(total["refunded"])) == (100_000, 35_000)
    periods = [r for r in table if r["kind"] == "period_total"]
    assert sum(int(r["refunded"]) for r in periods) == 35_000
    wallet_rows = [r for r in table if r["kind"] == "wallet" and r["id"] == t.wallet_id]
    assert sum(int(r["rollup_refunded"]) for r in wallet_rows) == 35_000
    assert list(h.summary().violations) == []
