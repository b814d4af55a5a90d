"""Refunds on statements, on the pure core: an owner's statement and a provider's
payout statement count a refund in the period it was made in (never finer than the
broker's receipt period), so that each reconciles with the money that moved."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

from broker.core import refunds, statements
from broker.core.access import Principal
from broker.core.receipts import DAY_MS, HOUR_MS
from common import sealing

from .test_receipts import Shop

ADMIN = Principal("key_admin", "admin")


def refund(shop: Shop, receipt_id: str, amount: int) -> dict:
    w = shop.w
    return w.run(lambda tx: refunds.refund(tx, ADMIN, receipt_id, amount, "late result",
                                           w.now, w.config, w.signer))


def test_a_refund_counts_in_the_period_it_was_made_in():
    shop = Shop()
    w = shop.w
    midnight = w.now - w.now % DAY_MS
    w.now = midnight + 10 * 60_000
    _, job = shop.job({"gpu_ms": 4000})  # hour 0: charged 4,000 (fee 100)
    w.now = midnight + 2 * HOUR_MS + 123
    made = refund(shop, job["receipt_id"], 1_500)  # hour 2
    assert (made["provider_refund"], made["fee_refund"]) == (1_500 - 37, 37)
    key = shop.register_key()

    def owner(start, end, granularity=HOUR_MS, annex=False):
        return w.read(lambda tx: statements.owner_statement(
            tx, shop.owner_p, "", start, end, granularity, annex, w.config, w.signer))

    def payouts(start, end, granularity=HOUR_MS):
        return w.read(lambda tx: statements.payout_statement(
            tx, shop.worker_p, "", start, end, granularity, w.config, w.signer))

    wallet_id = shop.wallet["wallet_id"]
    whole = owner(midnight, midnight + 3 * HOUR_MS)
    [line] = whole["wallets"]
    assert (line["wallet_id"], line["charged"], line["refunded"], line["job_count"],
            line["rollup_refunded"]) == (wallet_id, 4000, 1_500, 1, 1_500)
    assert (whole["total_charged"], whole["total_refunded"]) == (4000, 1_500)
    assert whole["payment_models"] == [{"payment_model": "metered_time", "charged": 4000,
                                        "job_count": 1, "refunded": 1_500}]
    signed = json.loads(base64.b64decode(whole["signed_payload"]))
    assert (signed["total_refunded"], signed["wallets"][0]["refunded"]) == (1_500, 1_500)
    # No line item and no finer time: neither the refund nor the receipt id, nor when.
    text = json.dumps(whole)
    for value in (made["refund_id"], job["receipt_id"], str(made["refund_ms"]), "late result"):
        assert value not in text

    # The hour of the charge shows no refund; the hour of the refund shows the wallet
    # with nothing charged and the refund.
    first = owner(midnight, midnight + HOUR_MS)
    assert (first["total_charged"], first["total_refunded"]) == (4000, 0)
    assert [ln["refunded"] for ln in first["wallets"]] == [0]
    third = owner(midnight + 2 * HOUR_MS, midnight + 3 * HOUR_MS)
    assert [(ln["wallet_id"], ln["charged"], ln["job_count"], ln["refunded"])
            for ln in third["wallets"]] == [(wallet_id, 0, 0, 1_500)]
    assert third["payment_models"] == [{"payment_model": "metered_time", "charged": 0,
                                        "job_count": 0, "refunded": 1_500}]
    assert (third["total_charged"], third["job_count"], third["total_refunded"]) == \
        (0, 0, 1_500)
    assert owner(midnight, midnight + 3 * HOUR_MS, DAY_MS)["total_refunded"] == 1_500

    # The payout statement: hour 0 paid, hour 2 took back payout and fee shares.
    p = payouts(midnight, midnight + 3 * HOUR_MS)
    assert [(r["period_start_ms"] - midnight, r["charged"], r["payout"], r["platform_fee"],
             r["job_count"], r["refunded_payout"], r["refunded_fee"]) for r in p["periods"]] \
        == [(0, 4000, 3900, 100, 1, 0, 0), (2 * HOUR_MS, 0, 0, 0, 0, 1_463, 37)]
    assert (p["total_payout"], p["total_refunded_payout"], p["total_refunded_fee"]) == \
        (3900, 1_463, 37)
    assert p["total_refunded_payout"] + p["total_refunded_fee"] == made["amount"]
    assert json.loads(base64.b64decode(p["signed_payload"]))["total_refunded_fee"] == 37
    assert payouts(midnight, midnight + HOUR_MS)["total_refunded_payout"] == 0
    [day] = payouts(midnight, midnight + HOUR_MS, DAY_MS)["periods"]
    assert (day["payout"], day["refunded_payout"], day["refunded_fee"]) == (3900, 1_463, 37)

    # The sealed annex lists the refund, with its receipt, for the owner only.
    annexed = owner(midnight, midnight + 3 * HOUR_MS, annex=True)
    document = sealing.open_document(key, base64.b64decode(annexed["annex"]),
                                     w.verify_keys())
    assert [(r["refund_id"], r["receipt_id"], r["amount"]) for r in document["refunds"]] == \
        [(made["refund_id"], job["receipt_id"], 1_500)]
    assert w.violations() == []


def test_a_refund_is_indexed_no_finer_than_the_broker_setting():
    shop = Shop()
    w = shop.w
    w.config = replace(w.config, receipt_period_ms=DAY_MS)
    _, job = shop.job({"gpu_ms": 2000})
    w.now += 5 * HOUR_MS + 7
    made = refund(shop, job["receipt_id"], 500)
    keys = w.read(lambda tx: [k for t in ("owner_refunds", "provider_refunds")
                              for k, _ in tx.scan(t)])
    day = made["refund_ms"] - made["refund_ms"] % DAY_MS
    assert [int(k.split("/")[1]) for k in keys] == [day, day]
    assert w.violations() == []
